"""The numpy kernels of :mod:`deferinit.layers_extra`, registered as in ``leaves.py`` (imported at its end)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ... import ops, ops_extra
from ...extend import builder_for, register_builder
from ...layers import AvgPool2D, LayerNorm, MaxPool2D
from ...layers_extra import AdaptiveAvgPool2D, DropPath, GroupNorm, HardSigmoid, HardSwish, LayerScale, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from ...shapes import Node
from .leaves import _activation, _channel_axis, _from_cf, _to_cf
from .modules import NumpyNet

register_builder("numpy", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register_builder("numpy", LeakyReLU)
def _leaky_relu(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return ops_extra.leaky_relu(x, cast(Any, node.layer).negative_slope)


_recurrent_all = builder_for("numpy", RNN)
assert _recurrent_all is not None


@register_builder("numpy", RNN, GRU, LSTM)
def _recurrent(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    y: np.ndarray = _recurrent_all(net, node, x, training)  # type: ignore[misc]
    return y if layer.return_sequences else ops_extra.last_step(y, len(layer.directions))


_pool_floor = builder_for("numpy", MaxPool2D)
assert _pool_floor is not None


@register_builder("numpy", MaxPool2D, AvgPool2D)
def _pool(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    include = getattr(layer, "count_include_pad", True)
    if not layer.ceil_mode and include:
        y: np.ndarray = _pool_floor(net, node, x, training)  # type: ignore[misc]
        return y
    kind = "max" if isinstance(layer, MaxPool2D) else "avg"
    return _from_cf(net, ops_extra.pool2d(_to_cf(net, x), kind, layer.pool_size, layer.strides, layer.padding,
                                          layer.ceil_mode, include))


@register_builder("numpy", AdaptiveAvgPool2D)
def _adaptive_avg_pool(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return _from_cf(net, ops_extra.adaptive_avg_pool2d(_to_cf(net, x), cast(Any, node.layer).output_size))


@register_builder("numpy", GroupNorm)
def _group_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    return _from_cf(net, ops_extra.group_norm(_to_cf(net, x), layer.num_groups, net.params[node.param_name("weight")],
                                              net.params[node.param_name("bias")], layer.eps))


@register_builder("numpy", LayerNorm)
def _layer_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    return ops_extra.layer_norm_axis(x, layer.resolved_axis(x.ndim, net.data_format),
                                     net.params[node.param_name("weight")], net.params[node.param_name("bias")],
                                     layer.eps)


@register_builder("numpy", LayerScale)
def _layer_scale(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    shape = [1] * x.ndim
    shape[_channel_axis(net, x.ndim)] = -1
    y: np.ndarray = x * net.params[node.param_name("weight")].reshape(shape)
    return y.astype(ops.float_type(x, y))


@register_builder("numpy", DropPath)
def _drop_path(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    rate = cast(Any, node.layer).rate
    if not training or rate == 0:
        return x
    keep = (net.rng.random(x.shape[0]) >= rate).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x * keep / np.float32(1 - rate)).astype(x.dtype)
