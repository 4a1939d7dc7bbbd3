# mypy: allow-subclassing-any
"""NaN in, NaN out on MXNet, as in the reference, PyTorch and JAX: the three places MXNet 1.9.1 loses a NaN.

Measured (CPU, oneDNN), a NaN in the input:

* ReLU: the ``Activation(act_type="relu")`` operator (what ``nn.Activation("relu")`` and Gluon's
  ``Dense/Conv(activation="relu")`` run) and ``LeakyReLU(act_type="leaky", slope=0)`` return 0. The ``relu``
  operator keeps it, with relu's values and gradient, but runs outside oneDNN: ResNet-18 (1x1x96x96) took 10.4 ms
  with it against 8.6 ms with ``Activation``. ``LeakyReLU(act_type="elu", slope=0)`` kept NaN at 8.5 ms but its
  gradient is 0 for a positive denormal input (measured: 1e-30 gives 0 where ``relu`` and torch give 1), which
  moved GoogLeNet's bias gradients 7.5e-4 away from torch's, TensorFlow's and JAX's (they agree within 3e-7):
  the right gradient is worth the 2 ms.
* Softmax: ``softmax`` of a row holding a NaN gives NaN there and 0 elsewhere; the reference gives NaN across the
  row. Adding ``0 * max(row)`` (NaN exactly when the row holds one, or +-inf, where the reference is NaN too)
  restores it: one small reduction beside the native kernel.
* Max pooling skips NaN. ``0 * clip(average pool, -1, 1)`` is NaN exactly in the windows holding one (0 elsewhere,
  infinities included; the one difference left: a window holding both +inf and -inf gives NaN, not +inf) and
  adding it changes nothing else, gradients included. Clipping the pooled values rather than the input keeps the
  extra work to one average pool; it was the cheapest of the forms measured.

(MXNet's fused ``RNN`` operator in ``rnn_relu`` mode also turns a NaN step into 0; that one is inside the kernel.)
"""

from __future__ import annotations

from typing import Any

from mxnet.gluon import nn

__all__ = ["relu", "softmax", "ReLU", "MaxPool2D"]


def relu(F: Any, x: Any) -> Any:
    return F.relu(x)


def softmax(F: Any, x: Any) -> Any:
    return F.broadcast_add(F.softmax(x, axis=-1), 0 * F.max(x, axis=-1, keepdims=True))


class ReLU(nn.HybridBlock):
    """``nn.Activation("relu")`` that keeps NaN."""

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return relu(F, x)


class MaxPool2D(nn.MaxPool2D):
    """Gluon's max pooling that returns NaN for a window holding one."""

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        mean = F.Pooling(x, **dict(self._kwargs, pool_type="avg", count_include_pad=True))
        return super().hybrid_forward(F, x) + 0 * F.clip(mean, -1.0, 1.0)
