"""Test sessions: one virtualenv per set of pins that can live together: torch, tensorflow, jax and nnx share
.nox/env-shared (numpy 2), MXNet has .nox/env-mxnet (numpy<1.24); core and lint have their own.

    nox                      # the default run: core, every backend, parity, lint (what .ci/run runs)
    nox -s core              # framework-free tests, no deep-learning framework installed
    nox -s "tests(torch)"    # the contract suite and the native-module tests on one backend
    nox -s parity            # cross-framework parity, across processes and virtualenvs
    nox -s bench             # benchmarks against hand-written native code (not in the default run)
    nox -s distributed       # sharded initialization on torch (gloo ranks) and jax (8 CPU devices) + benchmark
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.sessions = ["parity", "core", "tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
# Two sessions at a time (nox's --parallel, 2026.10.20 and later; an older nox runs them one after the other). On
# the 2-core CI machine a session is never CPU-bound from start to end: pip installs from its cache on one core,
# pytest starts its workers and collects on one, the parity session compares on one. Sessions write disjoint
# files (each its own virtualenv; parity artifacts/parity), and the longest, parity, starts first.
# NOX_PARALLEL=1 (or -j 1) runs them one at a time; each session's output is printed whole when it ends. Measured
# on clean clones (2026-12-05): one at a time 15 min 42 s, two 12 min 56 s, three 14 min 13 s (3be3c27); two 11 min 8 s
# on a8062a7, with XLA on one thread, the shared virtualenvs and the hostile-resources checks in one child per backend.
if hasattr(nox.options, "parallel"):
    nox.options.parallel = 2
    nox.options.allow_parallel = True

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "src"))
from deferinit.registry import REFERENCE, framework_backends  # noqa: E402  (the one list of backend names)

BACKENDS = framework_backends()
PARITY_JOBS = max(1, min(2, os.cpu_count() or 1))  # parity producers at a time (two cores on the CI machine)
# filelock: JAX's compilation cache takes a size cap (JAX_COMPILATION_CACHE_MAX_SIZE, below) only with it installed;
# without it JAX turned the cache off with a warning (tests(jax) wrote nothing; torch's requirements had brought it
# into the parity virtualenv, which is why only the parity producers hit the cache)
TEST_DEPS = ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "pyyaml>=6", "tomli-w>=1.0", "filelock>=3.12"]
# pytest workers per test session (pytest-xdist): one per core, at most 4 (each TensorFlow worker holds ~1.5 GB).
# On the 2-core CI machine two workers took tests(tensorflow) from 5.8 to 3.3 min, nnx from 9 to 6.5, torch from
# 4 to 2; DEFERINIT_TEST_JOBS=1 runs the tests in one process.
TEST_JOBS = os.environ.get("DEFERINIT_TEST_JOBS") or str(max(1, min(4, os.cpu_count() or 1)))
TEST_JOBS = "0" if TEST_JOBS == "1" else TEST_JOBS  # 0: no workers, the tests in nox's own pytest process
PYTEST = ["python", "-m", "pytest", "-n", TEST_JOBS]
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONHASHSEED": "0",
       "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
# The benchmarks time what a user's first run costs, JAX's compilations included: they never use the cache below.
BENCH_ENV = dict(ENV)
# Threads per framework in the test and parity sessions (not the benchmarks, which time a user's defaults): two
# sessions at a time, each running two processes (pytest workers, parity producers), keep every core busy already;
# each framework's own thread pool on top put four processes' threads on two cores. Measured on the 2-core CI
# machine, the full `nox` run with its virtualenvs already made: 12 min 5 s (23 min 41 s of CPU) with the frameworks'
# defaults; 10 min 52 s (21 min 12 s) with one thread each, in a run whose core session (35 s) failed at its start;
# the torch parity producer took 164 s against 60, the reference's 51 s against 27. A variable already set is kept.
THREADS = str(max(1, (os.cpu_count() or 1) // (2 * PARITY_JOBS)))
ENV.update({name: os.environ.get(name, THREADS) for name in
            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")})
# XLA's CPU thread pool likewise (JAX and NNX), where one thread per process is the share: tests(jax) took 117 s of
# user CPU with it against 130 s without (2026-12-05, the 2-core CI machine, pytest -n 2, a full compilation cache
# each). The flags are part of JAX's compilation-cache key, so the first run after a change fills the cache again.
# The sharded tests set their own XLA_FLAGS (eight host devices) in their children.
if THREADS == "1":
    ENV["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
# JAX's persistent compilation cache for the test and parity sessions: XLA executables on disk, keyed by the
# program, the compile options and the jax/jaxlib versions (not by file paths), so a rerun (a new clone too) loads
# what an earlier run compiled instead of compiling it again. Compiling is most of the JAX suites' time: on the
# 2-core CI machine tests(jax) took 207 s with no cache, 190 s with an empty one and 80 s with a full one; tests(nnx)
# 179 s and 74 s (full); the parity producers of jax 308 s and 94 s, of nnx 324 s and 114 s (2026-12-04, measured
# by hand with no size cap; with the cap below, the run that fills it is slower: tests(jax) 251 s, see README).
# Like pip's cache it lives outside the clone (least recently used entries go past 2 GB);
# DEFERINIT_JAX_CACHE=<dir> moves it, DEFERINIT_JAX_CACHE= (empty) turns it off.
JAX_CACHE = os.environ.get("DEFERINIT_JAX_CACHE", str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                      / "deferinit" / "jax-compilation"))
if JAX_CACHE:
    ENV.update({"JAX_COMPILATION_CACHE_DIR": JAX_CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_COMPILATION_CACHE_MAX_SIZE": str(2 * 2**30)})


def _header(backend: str, key: str) -> list[str]:
    """A ``# key: value ...`` line at the top of backends/<backend>.txt: ``env`` (``shared``: may share the parity
    virtualenv with the other shared backends; ``own``: needs one of its own), ``python`` (the versions it
    installs on; none: any Python that runs nox) and ``tests`` (requirements only its test session installs)."""
    for line in (ROOT / "backends" / f"{backend}.txt").read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].split()
    return []


def _pythons(backend: str) -> list[str]:
    return _header(backend, "python")


def _interpreter(backend: str) -> str | None:
    """nox's own interpreter when it fits the backend, else the first listed ``pythonX.Y`` on PATH; None when it
    fits or none is found (then the session refuses to run with :func:`_need_python`'s message)."""
    versions = _pythons(backend)
    if not versions or f"{sys.version_info.major}.{sys.version_info.minor}" in versions:
        return None
    return next((v for v in versions if shutil.which(f"python{v}")), None)


def _need_python(session: nox.Session, backend: str) -> None:
    """Refuse, saying why and what to do, when no interpreter this backend installs on was found."""
    versions = _pythons(backend)
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    if versions and current not in versions and _interpreter(backend) is None:
        session.error(f"the {backend} backend installs only on Python {' or '.join(versions)} (see backends/{backend}.txt); "
                      f"nox runs on {current} and no python{versions[-1]} is on PATH: install one (e.g. `pyenv install "
                      f"{versions[-1]}`) and run nox again")


# numpy 2 backends share one virtualenv (their pins agree); "# env: own" in backends/<name>.txt: one of its own
SHARED = [b for b in BACKENDS if _header(b, "env") != ["own"]]
OWN = [b for b in BACKENDS if b not in SHARED]


def install(session: nox.Session, *requirements: str, python: str | None = None, byte_compile: bool = True) -> None:
    """The requirements (``.txt`` files or specifiers), the test requirements, then the package itself, into the
    session's virtualenv or (``python``) the one whose interpreter that is. ``byte_compile=False``: pip does not
    byte-compile every module it installs (the shared virtualenvs, whose :func:`_warm` compiles what is imported)."""
    flags = () if byte_compile else ("--no-compile",)

    def pip(*args: str) -> None:
        if python is None:
            session.install(*flags, *args)
        else:
            session.run(python, "-m", "pip", "install", "-q", *flags, *args, external=True)

    pip(*(a for req in requirements for a in (("-r", req) if req.endswith(".txt") else (req,))), *TEST_DEPS)
    # the package itself without deps: its only dependency, numpy, is pinned by the backend file
    with _building():
        pip("--no-deps", "--force-reinstall", ".")


def _building() -> contextlib.AbstractContextManager[None]:
    """One build of the package at a time: pip builds it in the clone's own ``build/`` folder, and two sessions
    building at once (nox's --parallel) failed with ``File exists: 'build/bdist.linux-x86_64/wheel/...dist-info'``
    (seen 2026-12-05, core beside parity, both virtualenvs already made)."""
    return _locked("build")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock on ``.nox/<name>.lock``, held by the nox process of the session (nox runs each parallel
    session in a process of its own)."""
    import fcntl

    (ROOT / ".nox").mkdir(exist_ok=True)
    with open(ROOT / ".nox" / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@nox.session
def core(session: nox.Session) -> None:
    """The framework-free core (tests/core: spec, rules, report, reference forward, CLI, fuzzing) and the contract
    suite (tests/contract) on the numpy reference."""
    install(session, "numpy>=1.26")
    session.run(*PYTEST, "--backend", REFERENCE, *session.posargs, env=ENV)


@nox.session(venv_backend="none")
@nox.parametrize("backend", [*OWN, *SHARED], ids=[*OWN, *SHARED])
def tests(session: nox.Session, backend: str) -> None:
    """The contract suite (tests/contract), the hand-built native comparisons (tests/backends/<backend>) and the
    core (tests/core) on one framework, in the virtualenv of its pins (:func:`_env`: torch, tensorflow, jax and nnx
    share one; MXNet's is its own, with the Python that backends/mxnet.txt names when nox's own is not one of them).
    The own-virtualenv backends come first, so that their sessions run while the shared virtualenv is made."""
    python, env = _env(session, backend)
    # the tests of tests/core that take no backend and do not depend on what is installed run in the core session;
    # a backend that shares its numpy with it (numpy 2) runs only the others (430 of torch's 1,636); MXNet's own
    # virtualenv (numpy 1.23) runs them all, the core's coverage of the oldest numpy it supports
    free = [] if backend in OWN else ["--framework-free=skip"]
    session.run(python, *PYTEST[1:], "--backend", backend, *free, *session.posargs, env={**ENV, **env}, external=True)


@nox.session(venv_backend="none")
def parity(session: nox.Session) -> None:
    """Cross-framework parity across processes and virtualenvs; fails if any pair disagrees.

    The backends whose requirements say ``# env: shared`` (numpy 2: torch, tensorflow, jax, nnx) run in the shared
    virtualenv, each ``# env: own`` backend (MXNet: numpy<1.24) in its own: the test sessions' virtualenvs
    (:func:`_env`). Every environment runs the same specs, inputs and weights; the artifacts are compared with the
    reference and with each other."""
    pythons = {}
    for backend in OWN:
        pythons[backend] = _env(session, backend)[0]
    python, env = _env(session, SHARED[0])
    env = {**ENV, **env}
    out = ROOT / "artifacts" / "parity"
    if out.exists():
        shutil.rmtree(out)
    matrix = str(ROOT / "tests" / "parity_matrix.py")
    # the reference first, then every framework in a process of its own, two at a time (each in its virtualenv's
    # interpreter): the producers are independent, and two cores halve the session's longest part
    session.run(python, matrix, "produce", "--backends", ",".join([REFERENCE, *SHARED, *OWN]), "--out", str(out),
                "--jobs", str(PARITY_JOBS), *(f"--python={b}={p}" for b, p in pythons.items()), env=env, external=True)
    session.run(python, matrix, "compare", str(out), "--expect", ",".join(BACKENDS), env=env, external=True)
    # README's code blocks, verbatim: the Python one uses torch and jax together (only the shared virtualenv has
    # both), the parity commands every backend's interpreter; DEFERINIT_README_ALL makes a block that cannot run an
    # error
    session.run(python, "-m", "pytest", "--backend", ",".join([REFERENCE, *SHARED]), "tests/core/test_readme.py",
                env={**env, "DEFERINIT_README_ALL": "1",
                     **{f"DEFERINIT_PYTHON_{b.upper()}": p for b, p in pythons.items()}}, external=True)


def _env(session: nox.Session, backend: str) -> tuple[str, dict[str, str]]:
    """The virtualenv ``backend`` runs in, made (or brought up to date) once: its python and the variables that
    activate it. The shared backends' pins (with every one's ``# tests:`` requirements) go into ``.nox/env-shared``,
    an own backend's into ``.nox/env-<backend>``; the test session of each backend and the parity session use them.
    One virtualenv per set of pins instead of one per session: a clean clone installed torch, tensorflow and jax
    twice each (their test sessions and parity's), and the test sessions of jax and nnx the same packages twice.

    Sessions run two at a time, so the first to need a virtualenv makes it while the others wait (a lock per
    virtualenv, under .nox/); a stamp in the virtualenv (the requirements' text, the test requirements and a hash
    of the package's sources) says it is up to date, so a later session neither runs pip again nor reinstalls the
    package under a test run that is using it."""
    group = backend if backend in OWN else "shared"
    members = [backend] if backend in OWN else SHARED
    for member in members:
        _need_python(session, member)
    requirements = [f"backends/{b}.txt" for b in members]
    extra = [req for b in members for req in _header(b, "tests")]
    venv = ROOT / ".nox" / f"env-{group}"
    python = venv / "bin" / "python"
    stamp = "\n".join([*(Path(ROOT / r).read_text() for r in requirements), *extra, *TEST_DEPS, _sources_hash()])
    with _locked(f"env-{group}"):
        if not (venv / "deferinit-env.stamp").is_file() or (venv / "deferinit-env.stamp").read_text() != stamp:
            if not python.exists():
                version = _interpreter(members[0])  # virtualenv, as nox's own sessions are made (its pip, seeded)
                interpreter = shutil.which(f"python{version}") if version else sys.executable
                session.run(sys.executable, "-m", "virtualenv", "-q", "-p", str(interpreter), str(venv), external=True)
            install(session, *requirements, *extra, python=str(python), byte_compile=False)
            _warm(session, str(python), members)
            (venv / "deferinit-env.stamp").write_text(stamp)
        else:
            session.log(f"{venv.relative_to(ROOT)} is up to date (its stamp matches the pins and the sources)")
    return str(python), {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def _warm(session: nox.Session, python: str, backends: list[str]) -> None:
    """Byte-compile what the sessions import, by importing each backend (its framework) and the test tools once, one
    process per backend, side by side, with bytecode writing on even where PYTHONDONTWRITEBYTECODE is set (it is in
    this machine's shell). pip's own compile step byte-compiles every module of every package (15,067 files in the shared
    virtualenv), most of which no test imports. Measured by hand on the 2-core CI machine (2026-12-05): installing
    the shared virtualenv's requirements took 57 s with pip compiling, 24 s without; importing torch, tensorflow,
    jax, flax, transformers, pytest and hypothesis then wrote 4,259 .pyc files in 13 s (one process; 6 s once
    written). A module first imported later (transformers' models, say) is compiled then, as Python does."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(ENV)
    code = "import pytest, xdist, hypothesis, deferinit.registry as r; r.load_backend({!r})"
    procs = [subprocess.Popen([python, "-c", code.format(b)], env=env, stdout=subprocess.DEVNULL) for b in backends]
    failed = [b for b, p in zip(backends, procs) if p.wait() != 0]
    if failed:
        session.error(f"importing the {', '.join(failed)} backend failed in {python} (its output is above)")


def _sources_hash() -> str:
    """A hash of what ``pip install .`` installs: pyproject.toml and every file under src/ (paths and bytes)."""
    import hashlib

    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    for path in sorted((ROOT / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@nox.session
def distributed(session: nox.Session) -> None:
    """Sharded initialization (issue 14) in one virtualenv with torch and jax (their pins in backends/*.txt):
    torch on gloo with 2 and 4 spawned ranks and the memory-cap test, JAX on 8 forced CPU devices, the plan and
    counter-based init tests, then ``bench/sharded.py`` against each framework's own hand-written sharded init.
    Not in the default run: its tests already run there, inside ``tests(torch)`` and ``tests(jax)`` (about 2 min
    together); this session adds the benchmark (about 1 min), which is not a pass/fail check."""
    for backend in ("torch", "jax"):
        _need_python(session, backend)
    install(session, "backends/torch.txt", "backends/jax.txt")
    session.run("python", "-m", "pytest", "--backend", "numpy,torch,jax", "tests/core/test_sharding.py",
                "tests/core/test_counter_init.py", "tests/contract/test_sharded_contract.py",
                "tests/backends/torch/test_sharded_torch.py", "tests/backends/jax/test_sharded_jax.py",
                *session.posargs, env=ENV)
    session.run("python", "bench/sharded.py", "torch", "--out", "bench/results/sharded_torch.json", env=BENCH_ENV)
    session.run("python", "bench/sharded.py", "jax", "--out", "bench/results/sharded_jax.json", env=BENCH_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests, the examples and this file; mypy over src/ (the framework-free core
    strictly, the adapters relaxed: see pyproject.toml). No framework is installed here, so their types are Any."""
    session.install("ruff>=0.5", "mypy>=1.10", "numpy")
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py")
    session.run("mypy")


@nox.session
@nox.parametrize(("python", "backend"), [(None, REFERENCE), *((_interpreter(b), b) for b in BACKENDS)],
                 ids=[REFERENCE, *BACKENDS])
def bench(session: nox.Session, backend: str) -> None:
    """Benchmarks against hand-written native code, one process per backend; not in the default run.
    Each run writes bench/results/<backend>.json and refreshes results.md and ratios.png."""
    if backend != REFERENCE:
        _need_python(session, backend)
    # the tests' extra requirements too: the zoo bench's native GPT-2 and BERT are transformers' (torch)
    install(session, *([f"backends/{backend}.txt", *_header(backend, "tests")] if backend != REFERENCE
                       else ["numpy>=1.26"]), "matplotlib>=3.7")
    session.run("python", "bench/run.py", "--backend", backend, "--out", f"bench/results/{backend}.json",
                *session.posargs, env=BENCH_ENV)
    session.run("python", "bench/report.py", env=BENCH_ENV)
