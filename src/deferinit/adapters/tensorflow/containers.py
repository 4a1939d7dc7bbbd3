"""The three containers of a spec as Keras layers, and the recorder that observes a dry run through them.

``Seq`` (spec ``Sequential``/``LazyModel``), ``Residual`` and ``Concat`` know, for each child, the canonical path of
that position and whether it is a tie (the same Keras layer object again). While a :class:`Recorder` is active
(only inside ``apply_init``), every container notes the shape each child gives: in the eager dry run (``call``) or
in Keras's own symbolic shape inference (``compute_output_spec``/``compute_output_shape``, the abstract path).
A tied child's insides are not noted again (they belong to the first occurrence, as in the reference report).
Inside a ``tf.function`` this Python runs only while tracing: a steady-state call pays nothing for it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops

from ...merges import combine
# isort: on

from contextlib import contextmanager

from . import layout
from .modules import build_child, call_layer

__all__ = ["Seq", "Residual", "Concat", "Merge", "Positions", "Recorder", "recording"]


class Positions:
    """``(canonical path, tied)`` of each child of one container (a plain object: Keras does not track it)."""

    def __init__(self, items: list[tuple[str, bool]]) -> None:
        self.items = tuple(items)


class Recorder:
    """``{layer path: output shape}`` seen while observing; ``paused`` > 0 inside a tied position."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}
        self.paused = 0


# One recorder per thread: models are initialized side by side in threads, and Keras runs a model's eager call
# and its tracing in the calling thread.
_LOCAL = threading.local()


def _active() -> Recorder | None:
    return getattr(_LOCAL, "recorder", None)


@contextmanager
def recording() -> Iterator[Recorder]:
    previous = _active()
    _LOCAL.recorder = recorder = Recorder()
    try:
        yield recorder
    finally:
        _LOCAL.recorder = previous


def note(path: str, shape: tuple) -> None:
    """Where the observed shape of one position is kept (tests replace it to prove a wrong shape is caught)."""
    rec = _active()
    if rec is not None:
        rec.shapes[path] = tuple(None if d is None else int(d) for d in shape)


def _shape(y: Any) -> tuple:
    return tuple(y) if isinstance(y, tuple) else tuple(y.shape)


def _observe(positions: Positions, i: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` (child ``i``'s output or shape), its shape noted under the child's path while recording."""
    rec = _active()
    if rec is None or i >= len(positions.items):
        return fn()
    path, tied = positions.items[i]
    rec.paused += tied
    try:
        y = fn()
    finally:
        rec.paused -= tied
    if not rec.paused:
        note(path, _shape(y))
    return y


class Seq(keras.Sequential):  # type: ignore[misc]
    """keras.Sequential whose call is the plain layer loop.

    Keras builds its functional graph on the first call (the deferred initialization we want, and what
    ``summary()`` shows), but running through that graph would cast every input to the first call's dtype
    (integer indices for an Embedding become float32) and refuse inputs of another rank (a Dense acts on the
    last axis of any rank). The loop is what keras.Sequential itself falls back to; under ``tf.function`` it
    traces to the same graph, so it costs nothing in the compiled path.
    """

    def __init__(self, layers: Any = None, positions: Positions | None = None, **kwargs: Any) -> None:
        super().__init__(layers, **kwargs)
        self.positions = positions or Positions([])

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if layout.applies(inputs):  # channels-first convolutions without NCHW kernels: see layout.py
            return layout.run(self.layers, inputs, training)
        x = inputs
        for i, layer in enumerate(self.layers):
            x = _observe(self.positions, i, lambda: call_layer(layer, x, training))  # noqa: B023
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = tuple(input_shape)
        for i, layer in enumerate(self.layers):
            shape = _observe(self.positions, i, lambda: tuple(layer.compute_output_shape(shape)))  # noqa: B023
        return shape

    def compute_output_spec(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        x = inputs
        for i, layer in enumerate(self.layers):
            if getattr(layer, "_call_has_training_arg", False):
                x = _observe(self.positions, i, lambda: layer.compute_output_spec(x, training=training))  # noqa: B023
            else:
                x = _observe(self.positions, i, lambda: layer.compute_output_spec(x))  # noqa: B023
        return x


class Residual(keras.layers.Layer):  # type: ignore[misc]
    """``activation(body(x) + shortcut(x))``; Keras builds it (and its children) by tracing ``call``."""

    def __init__(self, body: Any, shortcut: Any = None, activation: str | None = None,
                 positions: Positions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body = body
        self.shortcut = shortcut
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.positions = positions or Positions([])

    def build(self, input_shape: Any) -> None:
        build_child(self.body, tuple(input_shape))
        if self.shortcut is not None:
            build_child(self.shortcut, tuple(input_shape))

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = _observe(self.positions, 0, lambda: tuple(self.body.compute_output_shape(tuple(input_shape))))
        if self.shortcut is not None and _active() is not None:  # only its noted shape is wanted
            _observe(self.positions, 1, lambda: tuple(self.shortcut.compute_output_shape(tuple(input_shape))))
        return shape

    def combine(self, y: Any, short: Any) -> Any:
        return self.activation(ops.add(y, short))

    def call(self, x: Any, training: Any = None) -> Any:
        y = _observe(self.positions, 0, lambda: call_layer(self.body, x, training))
        short = _observe(self.positions, 1, lambda: call_layer(self.shortcut, x, training)) \
            if self.shortcut is not None else x
        return self.combine(y, short)


class Concat(keras.layers.Layer):  # type: ignore[misc]
    """Applies every branch to the same input and concatenates along the channel axis."""

    def __init__(self, branches: list, axis: int, positions: Positions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.branches = list(branches)
        self.axis = axis
        self.positions = positions or Positions([])

    def build(self, input_shape: Any) -> None:
        for branch in self.branches:
            build_child(branch, tuple(input_shape))

    def compute_output_shape(self, input_shape: Any) -> Any:
        shapes = [_observe(self.positions, i, lambda: tuple(b.compute_output_shape(tuple(input_shape))))  # noqa: B023
                  for i, b in enumerate(self.branches)]
        out = list(shapes[0])
        sizes = [s[self.axis] for s in shapes]
        out[self.axis] = None if None in sizes else sum(sizes)
        return tuple(out)

    def combine(self, outs: list) -> Any:
        return ops.concatenate(outs, axis=self.axis)

    def call(self, x: Any, training: Any = None) -> Any:
        return self.combine([_observe(self.positions, i, lambda: call_layer(b, x, training))  # noqa: B023
                             for i, b in enumerate(self.branches)])


class Merge(Concat):
    """``Add`` / ``Multiply``: every branch on the same input, summed or multiplied element-wise (Keras ops
    broadcast size-1 dims, as the spec's rule does)."""

    def __init__(self, branches: list, op: str, positions: Positions | None = None, **kwargs: Any) -> None:
        super().__init__(branches, 0, positions, **kwargs)
        self.op = op

    def compute_output_shape(self, input_shape: Any) -> Any:
        shapes = [_observe(self.positions, i, lambda: tuple(b.compute_output_shape(tuple(input_shape))))  # noqa: B023
                  for i, b in enumerate(self.branches)]
        return tuple(next((d for d in dims if d != 1), 1) if None not in dims else None for dims in zip(*shapes))

    def combine(self, outs: list) -> Any:
        return combine(self.op, outs, ops.add, ops.multiply)
