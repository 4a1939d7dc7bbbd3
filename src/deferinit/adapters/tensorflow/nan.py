"""NaN in, NaN out on TensorFlow, as in the reference, PyTorch and JAX: the three places TensorFlow loses a NaN.

Measured with tensorflow 2.21 (oneDNN on), a NaN in the input:

* ReLU: ``tf.nn.relu`` alone keeps it, but grappler fuses MatMul+BiasAdd+Relu (a Dense with ``activation="relu"``,
  or a Dense followed by ``ReLU()``) into one oneDNN kernel that returns 0. ``maximum(0, x)`` is not fused, keeps
  the NaN and, the constant coming first, gives ``x`` no gradient at exactly 0 (relu'(0) = 0, as everywhere).
* Softmax: ``tf.nn.softmax`` of a row holding a NaN gives NaN there and 0 elsewhere; the reference gives NaN across
  the row. Adding ``0 * max(row)`` (NaN exactly when the row holds one, or +-inf, where the reference is NaN too)
  restores it: one small reduction beside the native kernel.
* Max pooling skips NaN. ``0 * clip(average pool, -1, 1)`` (zero padding) is NaN exactly in the windows holding
  one (0 elsewhere, infinities included; the one difference left: a window holding both +inf and -inf gives NaN,
  not +inf) and adding it changes nothing else, gradients included.
"""

from __future__ import annotations

from typing import Any

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops
# isort: on

from . import modules as kl

__all__ = ["relu", "softmax", "activation", "MaxPool2D"]


@keras.saving.register_keras_serializable(package="deferinit", name="relu")  # type: ignore[untyped-decorator]
def relu(x: Any) -> Any:
    return ops.maximum(0.0, x)


@keras.saving.register_keras_serializable(package="deferinit", name="softmax")  # type: ignore[untyped-decorator]
def softmax(x: Any, axis: int = -1) -> Any:
    return ops.softmax(x, axis=axis) + 0.0 * ops.max(x, axis=axis, keepdims=True)


def activation(name: str | None) -> Any:
    """What to give a Keras layer's ``activation=``: the name, or the NaN-keeping function for relu and softmax."""
    from .activations import EXTRA

    return {"relu": relu, "softmax": softmax, **EXTRA}.get(name, name)  # type: ignore[arg-type]


class MaxPool2D(kl.MaxPool2D):
    """The spec's max pooling (explicit -inf padding) that returns NaN for a window holding one."""

    def _forward(self, inputs: Any, fmt: str) -> Any:
        mean = ops.average_pool(kl._pad(inputs, self.pads, fmt), self.pool_size, strides=self.strides,
                                padding="valid", data_format=fmt)
        return super()._forward(inputs, fmt) + 0.0 * ops.clip(mean, -1.0, 1.0)
