"""The torch builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), torch's own
modules wherever torch has one."""

from __future__ import annotations

from torch import nn

from ... import extend
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from .leaves import _activation
from .modules import ANY, Step

register = extend.register_builder
register("torch", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register("torch", LeakyReLU)
def _leaky_relu(layer: LeakyReLU, rank: int | None) -> list[Step]:
    return [Step("", nn.LeakyReLU(layer.negative_slope), ANY)]
