"""The activations beyond the basic set on MXNet: relu6 as ``clip(x, 0, 6)``, hard_sigmoid as MXNet's
``hard_sigmoid(x, alpha=1/6, beta=0.5)`` (= ``relu6(x + 3) / 6``), hard_swish as ``x`` times it, leaky_relu as
``LeakyReLU(act_type="leaky", slope=0.01)`` and gelu_tanh written out (MXNet 1.9's LeakyReLU has only the erf
gelu). All keep NaN (measured: clip, hard_sigmoid and LeakyReLU return NaN for NaN).

relu6's gradient at its kinks is PyTorch's (and TensorFlow's and JAX's): 0 at exactly 0 and 6. MXNet's ``clip``
passes the gradient at its bounds (``a_min <= x <= a_max``), which matters: a depthwise convolution over an
all-zero patch gives exactly 0, and so does the BatchNorm after it (inference mode, zero running mean and shift),
so ``relu6`` sees exact zeros. With ``clip`` the shift's gradient of MobileNetV2's depthwise BatchNorms differed from
the other frameworks' by up to 3.6 (measured in the parity session). The value is ``clip``'s; the gradient flows only
where ``0 < x < 6``. That form costs six MXNet ops where ``clip`` is one (no elementwise fusion on CPU: MobileNetV2's
inference forward took 1.76x the hand-written Gluon model's), so it is traced only into graphs that take gradients:
deferinit's own gradient passes always run in training mode (``graph.inference_layers``), and an inference graph
recorded by the user's ``autograd.record(train_mode=False)`` is a graph of its own (``graph.Graph._graph_key``).
An inference graph is plain ``clip``: the same values, bit for bit."""

from __future__ import annotations

import math
from typing import Any

from mxnet import autograd, gluon
from mxnet.gluon import nn

__all__ = ["activate_extra", "extra_block"]

_C = math.sqrt(2.0 / math.pi)


def activate_extra(F: Any, name: str, x: Any) -> Any:
    if name == "relu6":
        if not (autograd.is_training() or autograd.is_recording()):
            return F.clip(x, 0.0, 6.0)  # an inference graph: the same values, and no gradient taken through it
        inside = (x > 0.0) * (x < 6.0)
        return F.where(inside, x, F.BlockGrad(F.clip(x, 0.0, 6.0)))
    if name == "hard_sigmoid":
        return F.hard_sigmoid(x, alpha=1.0 / 6.0, beta=0.5)
    if name == "hard_swish":
        return x * F.hard_sigmoid(x, alpha=1.0 / 6.0, beta=0.5)
    if name == "leaky_relu":
        return F.LeakyReLU(x, act_type="leaky", slope=0.01)
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + F.tanh(_C * (x + 0.044715 * x * x * x)))
    raise ValueError(name)  # pragma: no cover - names are validated by the spec


def extra_block(name: str) -> gluon.HybridBlock:
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    return nn.HybridLambda(lambda F, x: activate_extra(F, name, x))
