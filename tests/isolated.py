"""Run a snippet in a child Python with a time limit and a memory cap, so a test of something that could hang,
crash the interpreter (a framework's segfault or abort) or allocate without bound cannot take the test run or
the machine down with it: the child dies, the test fails with what it printed.

    proc = run_isolated("import deferinit as di; ...", timeout=60, memory_mib=4096)
    assert proc.returncode == 0, proc.stderr

The memory cap is ``RLIMIT_DATA`` (heap and anonymous mappings), not ``RLIMIT_AS``: JAX and TensorFlow reserve
large virtual address ranges they never touch, which ``RLIMIT_AS`` would refuse at import.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["run_isolated", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]


def run_isolated(code: str, *, timeout: float = 120, memory_mib: int | None = 4096, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -c code`` (or ``python *args`` when ``args`` is given) in a child with a wall-clock ``timeout``
    (seconds; the child is killed and ``TimeoutExpired`` propagates) and ``memory_mib`` of heap at most.
    The child imports the deferinit that this test run imports (the source tree first on ``PYTHONPATH``)."""
    full = dict(os.environ)
    import deferinit

    src = str(Path(deferinit.__file__).resolve().parents[1])
    full["PYTHONPATH"] = os.pathsep.join([src, str(ROOT / "tests"), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full.setdefault("KERAS_BACKEND", "tensorflow")
    full.update(env or {})

    def limit() -> None:  # runs in the child before exec
        if memory_mib is not None:
            cap = memory_mib * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    cmd = [sys.executable, *(args if args is not None else ["-c", code])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd,
                          preexec_fn=limit, stdin=subprocess.DEVNULL)
