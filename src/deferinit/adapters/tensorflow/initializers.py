"""Initializers on Keras variables: the user's own (checked), seeded copies, and the abstract state.

Keras keeps an abstract variable as one with no value and its initializer kept for later (``_value``,
``_initializer``, ``_deferred_initialize``: private, but the only way to hold a shaped variable without values
and fill it afterwards), and a process-wide list of variables waiting for their values (``global_state``).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import tensorflow as tf
from keras.src.backend.common import global_state
# isort: on

__all__ = ["seeded", "Checked", "forget_pending", "materialize", "snapshot"]


def seeded(initializer: Any, key: int | None, name: str) -> Any:
    """A fresh copy of a Keras initializer for one parameter, seeded from ``(key, canonical name)`` when a key
    is given, so values do not depend on the order in which Keras creates variables. Always a copy: one
    unseeded Keras initializer instance returns the same values at every call, so sharing the user's object
    across layers would make equal-shaped kernels identical. Plain callables are returned as they are."""
    if not hasattr(initializer, "get_config") or not hasattr(type(initializer), "from_config"):
        return initializer
    config = dict(initializer.get_config())
    if "seed" in config and key is not None:
        config["seed"] = zlib.crc32(f"{key}:{name}".encode()) & 0x7FFFFFFF
    return type(initializer).from_config(config)


class Checked:
    """A user's initializer for one parameter, whose values are checked: Keras would keep a variable of whatever
    shape it returns (and fail later, in a layer's call). Real values of another dtype are cast to the
    variable's; the first problem is kept in ``errors`` too, because Keras rewrites the messages of errors raised
    inside a layer's call."""

    def __init__(self, init: Any, name: str, check: Callable[..., Any], errors: list) -> None:
        self.init, self.name, self.check, self.errors = init, name, check, errors

    def __call__(self, shape: Any, dtype: Any = None, **kwargs: Any) -> Any:
        value = tf.convert_to_tensor(self.init(shape, dtype=dtype, **kwargs))
        real = value.dtype.is_floating or value.dtype.is_integer
        error = self.check(self.name, tuple(shape), tuple(value.shape), value.dtype.name, real)
        if error is not None:
            self.errors.append(error)
            raise error
        want = tf.as_dtype(dtype) if dtype is not None else tf.float32
        return value if value.dtype == want else tf.cast(value, want)


def forget_pending(native: Any) -> None:
    # Variables made in a StatelessScope wait in a process-wide list that the next top-level symbolic
    # Keras call (any model's) would initialize; taking ours out keeps the model abstract until
    # materialize() (which initializes them itself).
    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        ours = {id(v) for v in native.variables}
        global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])


def materialize(native: Any, chosen: dict[int, Any]) -> None:
    """Give each abstract variable its values: ``chosen`` maps ``id(variable)`` to a new initializer (others keep
    theirs; a kernel with no value yet keeps its initializer until now)."""
    for var in native.variables:
        if id(var) in chosen:
            var._initializer = chosen[id(var)]
    for var in native.variables:
        if var._value is None:
            var._deferred_initialize()


def initializer_of(var: Any) -> Any:
    return var._initializer


def snapshot(native: Any) -> Callable[[], None]:
    # an abstract Keras variable is one with no value yet and its initializer kept for later: put both back
    saved = [(var, var._initializer, var._value) for var in native.variables]

    def undo() -> None:
        for var, initializer, value in saved:
            var._initializer, var._value = initializer, value
    return undo
