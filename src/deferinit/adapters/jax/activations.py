"""The activations beyond the basic set, with Flax's own functions: ``nn.relu6``, ``nn.hard_sigmoid``
(``relu6(x + 3) / 6``), ``nn.hard_swish`` (``x * relu6(x + 3) / 6``), ``nn.leaky_relu`` (slope 0.01) and
``nn.gelu(approximate=True)`` for gelu_tanh."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

__all__ = ["activate_extra"]


def activate_extra(name: str, x: Any) -> Any:
    if name == "relu6":
        return nn.relu6(x)
    if name == "hard_sigmoid":
        return nn.hard_sigmoid(x)
    if name == "hard_swish":
        return nn.hard_swish(x)
    if name == "leaky_relu":
        return nn.leaky_relu(x, negative_slope=0.01)
    if name == "gelu_tanh":
        return nn.gelu(x, approximate=True)
    raise ValueError(name)  # pragma: no cover - names are validated by the spec
