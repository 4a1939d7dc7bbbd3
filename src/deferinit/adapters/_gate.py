"""The thread gate of a compiled model: inference calls run side by side, everything that changes the model
runs alone.

Readers are inference-mode calls. They enter without a lock: a reader appends to ``readers`` (``list.append``
and ``list.pop`` are atomic in CPython, with or without the GIL), then re-reads ``open``; a writer closes the
gate, then waits until ``readers`` is empty. Whichever order the two threads run in, either the writer sees
the reader counted or the reader sees the gate closed (and backs out), so a reader never overlaps a writer.
The fast path costs about 0.1 us (two list operations and three attribute reads), measured against a 20 us
MLP forward.

Writers are training-mode calls (they update BatchNorm statistics and the dropout key; on PyTorch the mode is
the module's own shared flag), ``apply_init``, ``materialize``, ``load_weights`` and the other methods that
read or write the whole model. A writer leaves the gate open unless it left the model in training mode: then
the next inference call takes the slow path once, switches the model back under the lock, and reopens it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["Gate"]


class Gate:
    __slots__ = ("readers", "open", "trained", "_lock", "_drained", "_owner")

    def __init__(self) -> None:
        self.readers: list[None] = []  # one entry per inference call in flight
        self.open = True               # fast-path readers may enter: no writer, model in inference mode
        self.trained = False           # the last writer left the model in training mode
        self._lock = threading.RLock()  # held by a writer for its whole run (re-entrant: load_weights -> apply_init)
        self._drained = threading.Condition(threading.Lock())
        self._owner: int | None = None

    def wake(self) -> None:
        """Called by a reader that leaves while the gate is closed: a writer may be waiting for it."""
        with self._drained:
            self._drained.notify_all()

    @contextmanager
    def writing(self, training: bool = False) -> Iterator[None]:
        """Run the block with no other call running; ``training``: it leaves the model in training mode."""
        me = threading.get_ident()
        with self._lock:
            if self._owner == me:  # already inside this thread's own writer (gradients -> __call__)
                yield
                return
            self.open = False
            with self._drained:
                while self.readers:
                    self._drained.wait()
            self._owner = me
            if training:
                self.trained = True
            try:
                yield
            finally:
                self._owner = None
                self.open = not self.trained

    def shared(self, fn: Callable[..., Any], *args: Any, to_inference: Callable[[], None]) -> Any:
        """The reader's slow path: after any writer, and after putting the model back in inference mode."""
        me = threading.get_ident()
        with self._lock:
            if self._owner == me:
                return fn(*args)
            if self.trained:  # no reader runs here: the gate has been closed since that writer drained them
                to_inference()
                self.trained = False
            self.open = True
            self.readers.append(None)
        try:
            return fn(*args)
        finally:
            self.readers.pop()
            if not self.open:
                self.wake()
