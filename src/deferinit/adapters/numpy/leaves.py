"""The numpy backend's table: spec leaf type -> NumPy kernel, registered with
``@deferinit.extend.register_builder("numpy", LayerType)`` and looked up with ``extend.builder_for``.

A numpy builder has nothing to build: it *is* the layer's forward, called at each position of the plan as

    kernel(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray

``net.params`` holds the canonical weights (``net.params[node.param_name("weight")]``), ``node.layer`` the
layer's fields, ``x`` the input in the spec's data format (``net.data_format``); activations go through
``activate(net, name, y)`` so parity's finite differences can hold ReLU masks. Kernels compute in float32,
and in float64 when given float64 (the finite differences), through :mod:`deferinit.ops`.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ... import ops
from ...extend import register_builder
from ...layers import (
    GELU,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from ...layers_seq import (
    GRU,
    LSTM,
    RNN,
    ClassToken,
    MultiHeadAttention,
    OneHot,
    Permute,
    PositionalEncoding,
    PositionEmbedding,
    Reshape,
    Scale,
    Take,
)
from ...shapes import Node
from .modules import NumpyNet

__all__ = ["activate"]


def activate(net: NumpyNet, name: str | None, y: np.ndarray) -> np.ndarray:
    """``ops.activation``; with ``net.frozen`` set, ReLU keeps the mask of the first (unperturbed) pass, so
    finite differences see the frameworks' convention relu'(0) = 0 and never step across a kink (zero biases
    put dead units exactly on it)."""
    if name != "relu" or net.frozen is None:
        return ops.activation(name, y)
    if net.frozen_at == len(net.frozen):
        net.frozen.append(y > 0)
    mask = net.frozen[net.frozen_at]
    net.frozen_at += 1
    return np.where(mask, y, 0).astype(y.dtype)



def _to_cf(net: NumpyNet, x: np.ndarray) -> np.ndarray:
    return x if net.data_format == "channels_first" or x.ndim <= 2 else np.moveaxis(x, -1, 1)


def _from_cf(net: NumpyNet, x: np.ndarray) -> np.ndarray:
    return x if net.data_format == "channels_first" or x.ndim <= 2 else np.moveaxis(x, 1, -1)


def _channel_axis(net: NumpyNet, rank: int) -> int:
    return 1 if net.data_format == "channels_first" or rank == 2 else rank - 1


@register_builder("numpy", Dense)
def _dense(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Dense = node.layer  # type: ignore[assignment]
    y = np.matmul(x, net.params[node.param_name("weight")].T)
    if layer.use_bias:
        y = y + net.params[node.param_name("bias")]
    return activate(net, layer.activation, y)


@register_builder("numpy", Conv1D, Conv2D)
def _conv(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer  # the builder is registered for its type: read its fields as that type
    xc = _to_cf(net, x)
    bias = net.params[node.param_name("bias")] if layer.use_bias else None
    y = ops.conv(xc, net.params[node.param_name("weight")], bias, layer.stride, layer.pads(xc.shape[2:]),
                 layer.dilation, layer.groups)
    return activate(net, layer.activation, _from_cf(net, y))


@register_builder("numpy", MaxPool2D, AvgPool2D)
def _pool(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer  # the builder is registered for its type: read its fields as that type
    kind = "max" if isinstance(layer, MaxPool2D) else "avg"
    return _from_cf(net, ops.pool(_to_cf(net, x), kind, layer.pool_size, layer.strides, layer.padding))


@register_builder("numpy", GlobalAvgPool2D)
def _gap(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    y: np.ndarray = _to_cf(net, x).mean(axis=(2, 3), dtype=ops.float_type(x), keepdims=cast(Any, node.layer).keepdims)
    return _from_cf(net, y)


@register_builder("numpy", BatchNorm)
def _batch_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: BatchNorm = node.layer  # type: ignore[assignment]
    p = {k: net.params[node.param_name(k)] for k in ("weight", "bias", "running_mean", "running_var")}
    y, mean, var = ops.batch_norm(x, _channel_axis(net, x.ndim), p["weight"], p["bias"], p["running_mean"],
                                  p["running_var"], layer.eps, training, layer.momentum)
    if training:
        net.params[node.param_name("running_mean")] = mean  # type: ignore[assignment]
        net.params[node.param_name("running_var")] = var  # type: ignore[assignment]
    return y


@register_builder("numpy", LayerNorm)
def _layer_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return ops.layer_norm(x, net.params[node.param_name("weight")], net.params[node.param_name("bias")],
                          cast(Any, node.layer).eps)


@register_builder("numpy", Dropout)
def _dropout(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    rate = cast(Any, node.layer).rate
    if not training or rate == 0:
        return x
    keep = net.rng.random(x.shape) >= rate
    return (x * keep / np.float32(1 - rate)).astype(x.dtype)


@register_builder("numpy", Flatten)
def _flatten(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


@register_builder("numpy", Activation, ReLU, Sigmoid, Tanh, GELU, Softmax)
def _activation(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return activate(net, cast(Any, node.layer).activation, x)


@register_builder("numpy", Embedding)
def _embedding(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return net.params[node.param_name("weight")][x]


def _own(net: NumpyNet, node: Node) -> dict[str, np.ndarray]:
    """The node's parameters keyed by their short names (``weight_ih_l0``, ``q_weight``...)."""
    prefix = node.param_name("")
    return {name[len(prefix):]: value for name, value in net.params.items() if name.startswith(prefix)
            and "." not in name[len(prefix):]}


@register_builder("numpy", RNN, GRU, LSTM)
def _recurrent(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer  # the builder is registered for its type: read its fields as that type
    kind = {RNN: "rnn", GRU: "gru", LSTM: "lstm"}[type(layer)]
    if training and layer.dropout and layer.num_layers > 1:
        from ...errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"layer '{node.path}' ({type(layer).__name__}) on backend numpy: dropout between "
                                    f"recurrent layers in training mode has no reference")
    return ops.recurrent(kind, x, _own(net, node), layer.hidden_size, layer.num_layers, layer.bidirectional,
                         layer.use_bias, getattr(layer, "activation", "tanh"))


@register_builder("numpy", MultiHeadAttention)
def _attention(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer  # the builder is registered for its type: read its fields as that type
    if training and layer.dropout:
        from ...errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"layer '{node.path}' (MultiHeadAttention) on backend numpy: attention dropout "
                                    f"in training mode has no reference")
    if layer.causal:
        from ...graph_run import masked_attention

        return masked_attention(x, x, x, _own(net, node), layer.num_heads, layer.use_bias, causal=True)
    return ops.attention(x, _own(net, node), layer.num_heads, layer.use_bias)


@register_builder("numpy", ClassToken)
def _class_token(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    token = np.broadcast_to(net.params[node.param_name("weight")], (x.shape[0], 1, x.shape[2]))
    return np.concatenate([token, x], axis=1)


@register_builder("numpy", OneHot)
def _one_hot(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return np.eye(cast(Any, node.layer).num_classes, dtype=np.float32)[x]


@register_builder("numpy", Identity)
def _identity(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x


@register_builder("numpy", PositionalEncoding)
def _positional_encoding(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return (x + ops.sinusoidal(x.shape[1], x.shape[2])).astype(ops.float_type(x))


@register_builder("numpy", PositionEmbedding)
def _position_embedding(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x + net.params[node.param_name("weight")][:, :x.shape[1]]


@register_builder("numpy", Reshape)
def _reshape(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x.reshape((x.shape[0],) + cast(Any, node.layer).shape)


@register_builder("numpy", Permute)
def _permute(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x.transpose((0,) + cast(Any, node.layer).dims)


@register_builder("numpy", Scale)
def _scale(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return (x * np.float32(cast(Any, node.layer).factor)).astype(ops.float_type(x))


@register_builder("numpy", Take)
def _take(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return np.take(x, cast(Any, node.layer).index, axis=cast(Any, node.layer).axis)

from . import extra as extra  # noqa: E402  (registers the builders of deferinit.layers_extra)
from . import up as up  # noqa: E402  (registers the kernels of deferinit.layers_up)
