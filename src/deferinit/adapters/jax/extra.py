# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Flax's own
modules and functions wherever Flax has one."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from ...extend import register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...shapes import Node
from . import params as T
from .leaves import _activation

register_builder("jax", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


class LeakyReLUModule(nn.Module):
    negative_slope: float = 0.01

    def __call__(self, x: Any, train: bool = False) -> Any:
        return nn.leaky_relu(x, negative_slope=self.negative_slope)


@register_builder("jax", LeakyReLU)
def _leaky_relu(node: Node, cf: bool, name: str) -> T.Made:
    return LeakyReLUModule(node.layer.negative_slope, name=name), {}  # type: ignore[attr-defined]
