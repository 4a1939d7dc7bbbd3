"""The Gluon builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Gluon's own
blocks wherever Gluon has one."""

from __future__ import annotations

from mxnet.gluon import nn

from ...extend import register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from .leaves import Built, _activation

register_builder("mxnet", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register_builder("mxnet", LeakyReLU)
def _leaky_relu(layer: LeakyReLU, fmt: str) -> Built:
    return nn.LeakyReLU(layer.negative_slope), {}
