"""One thread pool for the host-side work that NumPy does with the GIL released (drawing big initial values,
copying big transposes): made on first use, sized to the cores (at most 8), and made again in a forked child,
since a fork copies the executor but not its threads, and work submitted to it there would wait forever."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["pool", "workers"]

_POOL: list[Any] = []  # [executor, the pid that made it]


def workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def pool() -> Any:
    if not _POOL or _POOL[1] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _POOL[:] = [ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="deferinit-host"), os.getpid()]
    return _POOL[0]
