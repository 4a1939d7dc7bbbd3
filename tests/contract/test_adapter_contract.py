"""The adapter contract (``deferinit.adapters.contract``) holds for every selected backend: the required hooks
are implemented, every hook it overrides keeps the contract's parameters, the capabilities it declares are
coherent, the shared modules import no framework, and a backend imports no framework but its own."""

from __future__ import annotations

import inspect

import pytest

from deferinit import registry
from deferinit.adapters.compiled import CompiledModel
from deferinit.adapters.contract import REQUIRED_HOOKS, Contract
from deferinit.registry import framework_modules
from isolated import run_isolated

HOOKS = [name for name, fn in vars(Contract).items() if inspect.isfunction(fn)]


def test_the_contract_lists_its_hooks() -> None:
    assert set(REQUIRED_HOOKS) <= set(HOOKS)
    assert {"_native_layer_shapes", "_abstract_snapshot", "_init_value_error", "_shape_dtype"} <= set(HOOKS)
    for name in HOOKS:  # one docstring each
        assert (getattr(Contract, name).__doc__ or "").strip(), name


def test_a_backend_implements_every_required_hook(backend: str) -> None:
    cls = registry.load_backend(backend)
    assert issubclass(cls, CompiledModel)
    assert cls.backend == backend
    missing = [name for name in REQUIRED_HOOKS if getattr(cls, name) is getattr(Contract, name)]
    assert missing == []
    if hasattr(cls, "_materialize"):  # in place: a failure part-way must be undone
        assert cls._abstract_snapshot is not Contract._abstract_snapshot
    assert 0 < cls.memory_fraction <= 1
    assert cls.max_elements is None or cls.max_elements > 0


def _shape_of(fn: object) -> list[tuple[object, bool]]:
    """How a hook is called: the compiled model passes its arguments by position, so their number and kinds
    (and which have defaults) must match; a backend may name them as it likes (torch's ``net``)."""
    return [(p.kind, p.default is inspect.Parameter.empty) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def test_a_backend_keeps_every_hooks_parameters(backend: str) -> None:
    cls = registry.load_backend(backend)
    changed = {}
    for name in HOOKS:
        want, got = _shape_of(getattr(Contract, name)), _shape_of(getattr(cls, name))
        if got != want:
            changed[name] = (want, got)
    assert changed == {}


def test_the_shared_adapter_modules_import_no_framework() -> None:
    watched = framework_modules()
    out = run_isolated("import sys\nimport deferinit.adapters.compiled, deferinit.adapters.checks, "
                       "deferinit.adapters.contract, deferinit.layers, deferinit.zoo\n"
                       f"print([m for m in {watched!r} if m in sys.modules])", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["CompiledModel", "NativeParam", "ShapeDtype", "available_memory"])
def test_compiled_still_exports_the_names_backends_import(name: str) -> None:
    import deferinit.adapters.compiled as compiled

    assert name in compiled.__all__ and hasattr(compiled, name)


def test_a_backend_imports_no_other_framework(backend: str) -> None:
    """The test sessions of torch, tensorflow, jax and nnx share one virtualenv with every one of those frameworks
    installed (noxfile.py, ``_env``), where an adapter importing another backend's framework would no longer fail
    to import. A fresh process imports the backend's own framework (TensorFlow 2.21 imports jax itself where it is
    installed, in tensorflow/lite/python/util.py), then compiles, initializes, runs and differentiates a small spec
    on ``backend`` and lists the other frameworks loaded since."""
    own = list(registry.BUILTINS[backend][1]) if backend in registry.BUILTINS else []
    others = sorted(set(framework_modules()) - set(own))
    out = run_isolated(f"""
import sys
import numpy as np
for name in {own!r}:
    __import__(name)
before = {{p for p in {others!r} if p in sys.modules}}
import deferinit as di
m = di.compile(di.LazyModel([di.Conv2D(4, 3), di.ReLU(), di.Flatten(), di.Dense(3)]), {backend!r})
m.apply_init(np.zeros((2, 1, 8, 8), np.float32), init="xavier_uniform", key=0)
m.to_numpy(m(np.ones((2, 1, 8, 8), np.float32)))
if {backend!r} != {registry.REFERENCE!r}:  # the reference has no gradients (its own are finite differences, parity_fd)
    m.gradients(np.ones((2, 1, 8, 8), np.float32))
m.export_weights()
print(sorted(p for p in {others!r} if p in sys.modules and p not in before))
""", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
