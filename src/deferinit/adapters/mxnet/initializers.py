# mypy: allow-subclassing-any
"""Seeds and initializers for the MXNet backend: Gluon's own initializers, seeded, and a user's initializer whose
failures to fill a parameter name it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import mxnet as mx
import numpy as np

from ...errors import DTypeError, ShapeMismatchError, SpecError

__all__ = ["seeded", "check_init", "Checked", "initialize"]


@contextmanager
def seeded(key: Any) -> Iterator[None]:
    """``mx.random.seed(key)`` for Gluon's initializers (a few, e.g. Orthogonal, draw from numpy's global generator:
    seeded too, and restored afterwards so the caller's numpy stream is untouched)."""
    if key is None:
        yield
        return
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise DTypeError(f"key: the mxnet backend expected an int seed or None, received {type(key).__name__}")
    state = np.random.get_state()
    mx.random.seed(int(key) & 0x7FFFFFFF)
    np.random.seed(int(key) & 0xFFFFFFFF)
    try:
        yield
    finally:
        np.random.set_state(state)


def check_init(init: Any) -> None:
    if init is not None and not isinstance(init, mx.init.Initializer):
        raise SpecError(f"init: the mxnet backend expected None, a portable initializer or an mx.init initializer "
                        f"(e.g. mx.init.Xavier()), received {init!r}")


class Checked(mx.init.Initializer):
    """A user's initializer whose failures to fill a parameter name it: Gluon broadcasts the values an initializer
    gives into the parameter's array, so values of another shape fail there, as numpy's broadcasting error."""

    def __init__(self, init: Any, names: dict[str, str], who: str) -> None:
        super().__init__()
        self._init, self._names, self._who = init, names, who

    def _init_weight(self, desc: Any, arr: Any) -> None:  # what Gluon calls for every Parameter it initializes
        try:
            self._init._init_weight(desc, arr)
        except ValueError as exc:
            name = self._names.get(str(desc))
            if name is None or not any(w in str(exc) for w in ("broadcast", "shape")):
                raise
            raise ShapeMismatchError(f"{self._who}: the initializer gave parameter '{name}' (native '{desc}') values "
                                     f"that do not fit its shape {tuple(arr.shape)} ({str(exc).splitlines()[0]}); "
                                     f"nothing was changed") from exc


def initialize(net: Any, init: Any) -> None:
    if init is None:
        net.initialize()  # Gluon's default: Uniform(0.07) weights, each layer's own bias/scale initializers
    else:
        net.initialize(init)
