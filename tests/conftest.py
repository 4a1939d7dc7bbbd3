"""Backend selection for the test suite.

The tree: ``tests/core/`` framework-free tests, ``tests/contract/`` run on every selected backend,
``tests/backends/<name>/`` one framework's own; the helpers (``cases.py``, ``strategies.py``, ``isolated.py``)
stay here, importable from every folder as ``from cases import ...`` (this directory is put on ``sys.path``).

``pytest --backend torch`` (what ``nox -s "tests(torch)"`` runs) selects backends explicitly: a selected
backend whose framework cannot be imported FAILS the run at start-up, it is never skipped. A plain local
``pytest`` with no ``--backend`` runs the contract suite on the backends installed here.
Backend-specific files (``tests/backends/<backend>/``, ``test_native_<backend>.py``) are collected only when their
backend is selected, and
``*_frameworks.py`` files (a framework against the reference) only when some framework is selected.
Hypothesis runs with a bounded, derandomized profile (``HYPOTHESIS_PROFILE=ci`` in nox).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

if str(Path(__file__).resolve().parent) not in sys.path:  # the helpers, for tests in core/, contract/, backends/
    sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The hand-built channels-first Keras models the tests compare with need TensorFlow's NCHW CPU kernels, which exist
# only with oneDNN on; TensorFlow turns oneDNN on by default only on CPUs with AVX-512 (not on this CI machine).
# The adapter's own path without them (two transposes) is tested explicitly with oneDNN off in a subprocess.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

_NATIVE = re.compile(r"test_(?:native|zoo)_(\w+?)\.py$")
_FRAMEWORKS_ONLY = re.compile(r"_frameworks\.py$")

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                 HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=10, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", action="append", default=[],
                     help="backend to test (repeatable); a selected backend that cannot be imported fails the run")
    parser.addoption("--framework-free", choices=("run", "skip"), default="run",
                     help="skip: leave out the tests of tests/core that take no backend and do not depend on what is "
                          "installed (marked 'installed'); nox's framework sessions whose numpy is the core "
                          "session's pass it, since the core session runs those tests in the same conditions")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--framework-free") != "skip":
        return
    core = Path(__file__).resolve().parent / "core"
    keep, drop = [], []
    for item in items:
        free = Path(str(item.path)).resolve().parent == core and item.get_closest_marker("installed") is None and \
            not {"backend", "framework"} & set(getattr(item, "fixturenames", ()))
        (drop if free else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _selected(config: pytest.Config) -> list[str]:
    cached = getattr(config, "_deferinit_backends", None)
    if cached is not None:
        return cached
    import deferinit as di
    from deferinit.registry import BUILTINS, resolve

    chosen = [resolve(b) for opt in config.getoption("--backend") for b in opt.split(",") if b]
    env = [resolve(b) for b in os.environ.get("DEFERINIT_BACKENDS", "").split(",") if b]
    chosen = chosen or env
    if not chosen:
        chosen = [b for b in di.available_backends() if b in BUILTINS]
    config._deferinit_backends = list(dict.fromkeys(chosen))  # type: ignore[attr-defined]
    return config._deferinit_backends  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    explicit = config.getoption("--backend") or os.environ.get("DEFERINIT_BACKENDS")
    if not explicit:
        return
    from deferinit.registry import load_backend

    for name in _selected(config):
        try:
            load_backend(name)
        except Exception as exc:  # selected but broken: the run fails here, loudly
            raise pytest.UsageError(f"backend {name!r} was selected but cannot be used: {exc}") from exc


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:  # type: ignore[no-untyped-def]
    parts = collection_path.parts
    if "backends" in parts[:-1] and parts.index("backends") + 1 < len(parts) and \
            parts[parts.index("backends") - 1] == "tests":  # tests/backends/<name>/: only when <name> is selected
        name = parts[parts.index("backends") + 1]
        if collection_path.is_dir() and name not in _selected(config):
            return True
    m = _NATIVE.search(str(collection_path.name))
    if m and m.group(1) not in _selected(config):
        return True
    if _FRAMEWORKS_ONLY.search(str(collection_path.name)) and not _frameworks(config):
        return True
    return None


def _frameworks(config: pytest.Config) -> list[str]:
    return [b for b in _selected(config) if b != "numpy"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _selected(metafunc.config))
    if "framework" in metafunc.fixturenames:
        metafunc.parametrize("framework", _frameworks(metafunc.config))


def pytest_report_header(config: pytest.Config) -> str:
    return "deferinit backends under test: " + ", ".join(_selected(config))
