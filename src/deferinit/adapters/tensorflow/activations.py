# mypy: disable-error-code="untyped-decorator"
"""The activations Keras names differently or defines otherwise, as functions of the spec's formulas (what a
Keras layer's ``activation=`` receives, see ``nan.activation``): relu6, hard_sigmoid ``relu6(x + 3) / 6`` (Keras
2's ``hard_sigmoid`` was ``0.2 x + 0.5``), hard_swish ``x * relu6(x + 3) / 6``, leaky_relu (slope 0.01, Keras's
own function) and gelu_tanh (Keras's ``gelu(approximate=True)``). ``maximum(0, x)`` first keeps NaN (see nan.py).
"""

from __future__ import annotations

from typing import Any

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops
# isort: on

__all__ = ["EXTRA", "relu6", "hard_sigmoid", "hard_swish", "leaky_relu", "gelu_tanh"]


def _serializable(name: str) -> Any:
    return keras.saving.register_keras_serializable(package="deferinit", name=name)


@_serializable("relu6")
def relu6(x: Any) -> Any:
    return ops.minimum(ops.maximum(0.0, x), 6.0)


@_serializable("hard_sigmoid")
def hard_sigmoid(x: Any) -> Any:
    return relu6(x + 3.0) / 6.0


@_serializable("hard_swish")
def hard_swish(x: Any) -> Any:
    return x * relu6(x + 3.0) / 6.0


@_serializable("leaky_relu")
def leaky_relu(x: Any) -> Any:
    return keras.activations.leaky_relu(x, negative_slope=0.01)


@_serializable("gelu_tanh")
def gelu_tanh(x: Any) -> Any:
    return keras.activations.gelu(x, approximate=True)


EXTRA = {"relu6": relu6, "hard_sigmoid": hard_sigmoid, "hard_swish": hard_swish, "leaky_relu": leaky_relu,
         "gelu_tanh": gelu_tanh}
