"""README.md cannot drift: every ```python block runs verbatim, every command of the ```bash blocks runs (the
pip and nox install lines aside), and every "`command` prints:" block is exactly what the command prints.

Where each README block runs: a block needs the backends it compiles for (``di.compile(spec, "torch")``, a
``--backend`` option) and runs in the sessions that select them all (``--backend``); numpy is always there.
A command whose ``--backend B`` is not selected here runs with the Python named by ``DEFERINIT_PYTHON_<B>``
when that is set (MXNet's own virtualenv in ``nox -s parity``). A block that cannot run here is not
collected; with ``DEFERINIT_README_ALL=1`` (set by ``nox -s parity``, whose virtualenv has torch, tensorflow
and jax) any such block is a collection error instead, so CI cannot turn a missing backend into a green run.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import deferinit as di
from deferinit.registry import BUILTINS, REFERENCE, framework_backends, resolve
from isolated import ROOT, run_isolated

pytestmark = pytest.mark.installed  # README's blocks run on the backends installed here

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
PRINTS = re.compile(r"`([^`\n]+)` prints:\s*\n```\w*[ \t]*\n(.*?)^```", re.M | re.S)
MODULES: dict[str, str] = {}
for _name, (_, _pkgs, *_) in BUILTINS.items():  # a package two backends share (jax: jax and nnx) is the first's
    for _pkg in _pkgs:
        MODULES.setdefault(_pkg, _name)


@dataclass(frozen=True)
class Check:
    kind: str                     # "python" (a block), "bash" (a block's commands), "prints" (a command's output)
    line: int                     # where in README.md
    text: str                     # the block, or for "prints" the command
    expected: str = ""            # for "prints": the block that follows it

    @property
    def id(self) -> str:
        return f"{self.kind}-line{self.line}"

    def commands(self) -> list[list[str]]:
        if self.kind == "prints":
            return [shlex.split(self.text)]
        out = []
        for line in self.text.splitlines():
            for part in re.sub(r"\s#.*$", "", line).split("&&"):
                argv = shlex.split(part)
                if argv and _program(argv) not in ("pip", "nox"):
                    out.append(argv)
        return out

    def needs(self) -> set[str]:
        """Every backend the block runs on (the reference always: it is in the core)."""
        names = {REFERENCE}
        if self.kind == "python":
            names |= set(re.findall(r"compile\(\s*[^,()]+,\s*[\"'](\w+)[\"']", self.text))
            for listed in re.findall(r"backends\s*=\s*\[([^\]]*)\]", self.text):
                names |= set(re.findall(r"[\"'](\w+)[\"']", listed))
            names |= {MODULES[m] for m in re.findall(r"^\s*(?:import|from)\s+(\w+)", self.text, re.M) if m in MODULES}
        else:
            for argv in self.commands():
                names |= set(_backend_options(argv))
        return {_known(n) for n in names}


def _known(name: str) -> str:
    """A backend name as the registry spells it; a name it does not know (a backend deleted, its README lines not
    yet) stays as written, which no session selects: the block is not run here, and DEFERINIT_README_ALL fails."""
    try:
        return resolve(name)
    except di.UnknownBackendError:
        return name


def _program(argv: list[str]) -> str:
    return argv[2] if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2 else argv[0]


def _backend_options(argv: list[str]) -> list[str]:
    return [b for flag, value in zip(argv, argv[1:]) if flag in ("--backend", "--backends") for b in value.split(",") if b]


def readme_checks() -> list[Check]:
    text = README.read_text(encoding="utf-8")

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    checks = [Check(m.group(1), line_of(m.start()), m.group(2)) for m in FENCE.finditer(text)
              if m.group(1) in ("python", "bash")]
    checks += [Check("prints", line_of(m.start()), m.group(1), m.group(2)) for m in PRINTS.finditer(text)]
    return checks


def _selected(config: pytest.Config) -> set[str]:
    """The backends this run selected, as conftest selects them (--backend, DEFERINIT_BACKENDS, else installed)."""
    chosen = [resolve(b) for opt in config.getoption("--backend") for b in opt.split(",") if b]
    chosen = chosen or [resolve(b) for b in os.environ.get("DEFERINIT_BACKENDS", "").split(",") if b]
    return set(chosen or di.available_backends()) | {REFERENCE}


def _interpreter(backends: set[str], selected: set[str]) -> str | None:
    """The Python that can run a command needing ``backends``: this one, or a single other backend's own."""
    missing = backends - selected
    if not missing:
        return sys.executable
    if len(missing) == 1:
        return os.environ.get(f"DEFERINIT_PYTHON_{missing.pop().upper()}") or None
    return None


def _runnable(check: Check, selected: set[str]) -> bool:
    if check.kind == "python":
        return check.needs() <= selected
    return all(_interpreter({REFERENCE, *map(_known, _backend_options(argv))}, selected) for argv in check.commands())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "check" not in metafunc.fixturenames:
        return
    selected = _selected(metafunc.config)
    checks = readme_checks()
    runnable = [c for c in checks if _runnable(c, selected)]
    left = [f"{c.id} needs {sorted(c.needs())}" for c in checks if c not in runnable]
    if left and os.environ.get("DEFERINIT_README_ALL"):
        pytest.fail(f"DEFERINIT_README_ALL is set but README blocks cannot run with backends {sorted(selected)}: "
                    + "; ".join(left) + " (select them with --backend, or set DEFERINIT_PYTHON_<BACKEND>)", pytrace=False)
    metafunc.parametrize("check", runnable, ids=[c.id for c in runnable])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the deferinit under test, in every interpreter: the source tree, never the directory holding an installed
    # copy (a virtualenv's site-packages would bring its numpy 2 into MXNet's interpreter, which needs numpy 1.23)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def _run(argv: list[str], cwd: Path, selected: set[str]) -> subprocess.CompletedProcess:
    python = _interpreter({REFERENCE, *map(_known, _backend_options(argv))}, selected)
    assert python is not None
    if argv[0] in ("python", "python3"):
        argv = [python, *argv[1:]]
    elif argv[0] == "deferinit":
        argv = [python, "-m", "deferinit", *argv[1:]]
    args = [a for arg in argv for a in (sorted(glob.glob(arg, root_dir=cwd)) or [arg] if "*" in arg else [arg])]
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def _with_claims(code: str) -> str:
    """The block with an ``assert`` after each bare expression whose comment starts with a Python value
    (``report.params["0.weight"].shape  # (256, 20): canonical ...``): what the README claims is checked."""
    lines = code.splitlines()
    for node in reversed(ast.parse(code).body):
        if isinstance(node, ast.Expr) and node.lineno == node.end_lineno:
            comment = lines[node.lineno - 1][node.end_col_offset:].strip()
            claim = comment[1:].split(":")[0].strip() if comment.startswith("#") else ""
            try:
                ast.literal_eval(claim)
            except (ValueError, SyntaxError):
                continue
            expr = ast.get_source_segment(code, node)
            lines.insert(node.lineno, f"assert ({expr}) == {claim}, ({expr!r}, {expr})")
    return "\n".join(lines) + "\n"


def test_readme_block(check: Check, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if check.kind == "python":
        proc = run_isolated(_with_claims(check.text), timeout=600, memory_mib=None, cwd=ROOT)
        assert proc.returncode == 0, f"README line {check.line}:\n{proc.stdout}{proc.stderr}"
        return
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # commands name paths relative to the repository
    selected = _selected(request.config)
    for argv in check.commands():
        proc = _run(argv, tmp_path, selected)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, \
            f"README line {check.line}: {shlex.join(argv)}\n{proc.stdout}{proc.stderr}"
    if check.kind == "prints":
        got = [line.rstrip() for line in proc.stdout.strip("\n").splitlines()]
        assert got == [line.rstrip() for line in check.expected.strip("\n").splitlines()], \
            f"README line {check.line}: `{check.text}` prints:\n{proc.stdout}"


def test_readme_has_what_this_test_reads() -> None:
    checks = readme_checks()
    kinds = {c.kind for c in checks}
    assert kinds == {"python", "bash", "prints"}, kinds
    assert any("deferinit shapes" in c.text for c in checks if c.kind == "prints")
    assert all(c.commands() for c in checks if c.kind == "bash")
    python = next(c for c in checks if c.kind == "python")
    assert {"torch", "jax"} <= python.needs() and "assert (report.params" in _with_claims(python.text)


# ------------------------------------------------------------------------------------------------ di.parity
def test_di_parity_is_the_function_even_after_importing_its_module() -> None:
    proc = run_isolated("""
import inspect
import deferinit as di
import deferinit.parity
from deferinit import parity
from deferinit.parity import compare_artifacts, make_artifact
assert inspect.isfunction(di.parity) and di.parity is parity and di.parity.__module__ == "deferinit.parity", di.parity
result = di.parity(di.LazyModel([di.Dense(3)]), (2, 4), backends=["numpy"])
print(result.passed, result.failures()[0])
""", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False nothing was compared"), proc.stdout


def test_di_parity_as_the_readme_says(backend: str) -> None:
    spec = di.LazyModel([di.Dense(16, activation="relu"), di.Dense(4)])
    x = np.random.default_rng(0).standard_normal((2, 20)).astype(np.float32)
    result = di.parity(spec, x, backends=[backend])
    if backend == REFERENCE:  # the reference against itself compares nothing: that is no pass
        assert not result.passed and result.results == {}, str(result)
        return
    r = result.results[backend]
    assert result.passed and r.max_abs < 1e-5 and r.init_identical is True and r.train_ok is True, str(result)


# ------------------------------------------------------------------------------------------------ errors_by_backend
def _errors_example(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    example = runpy.run_path(str(ROOT / "examples" / "errors_by_backend.py"), run_name="example")
    monkeypatch.setattr(sys, "argv", ["errors_by_backend.py", *args])
    assert example["main"]() == 0
    return capsys.readouterr().out


def test_errors_by_backend_names_every_framework(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """With no framework installed the example still shows deferinit's error (on the reference) and says which
    frameworks are missing; each installed one shows both errors."""
    out = _errors_example(monkeypatch, capsys)
    blocks = {b.split("\n")[0].split()[0]: b for b in re.split(r"\n(?=\S)", out.strip())}
    assert "deferinit: ShapeMismatchError: layer '0' (Dense) expected 20 input features" in blocks["numpy"], out
    installed = set(di.available_backends())
    for name in framework_backends():
        if name in installed:
            assert "  framework: " in blocks[name] and "deferinit: ShapeMismatchError" in blocks[name], out
        else:
            assert f"not installed here: pip install 'deferinit[{name}]'" in blocks[name], out


def test_errors_by_backend_on_a_selected_backend(backend: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = _errors_example(monkeypatch, capsys, backend)
    ours = re.findall(r"deferinit: (.*)", out)
    assert len(set(ours)) == 1 and ours[0].startswith("ShapeMismatchError: layer '0' (Dense) expected 20"), out
    if backend != REFERENCE:
        native = re.search(rf"^{backend}\n  framework: (.*)$", out, re.M)
        assert native and "ShapeMismatchError" not in native.group(1) and native.group(1) != "(no error)", out

