"""The numpy kernels of :mod:`deferinit.layers_up`, registered as in ``leaves.py`` (imported at its end)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import ops_up
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
from ...shapes import Node
from .leaves import _from_cf, _to_cf, activate
from .modules import NumpyNet


@register_builder("numpy", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    bias = net.params[node.param_name("bias")] if layer.use_bias else None
    y = ops_up.conv_transpose(_to_cf(net, x), net.params[node.param_name("weight")], bias, layer.stride,
                              layer.padding, layer.output_padding, layer.dilation, layer.groups)
    return activate(net, layer.activation, _from_cf(net, y))


@register_builder("numpy", Upsample2D)
def _upsample(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    return _from_cf(net, ops_up.upsample2d(_to_cf(net, x), layer.scale_factor, layer.mode))
