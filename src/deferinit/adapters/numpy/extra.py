"""The numpy kernels of :mod:`deferinit.layers_extra`, registered as in ``leaves.py`` (imported at its end)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ... import ops_extra
from ...extend import register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...shapes import Node
from .leaves import _activation
from .modules import NumpyNet

register_builder("numpy", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register_builder("numpy", LeakyReLU)
def _leaky_relu(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return ops_extra.leaky_relu(x, cast(Any, node.layer).negative_slope)
