"""The framework-free reference backend: the oracle every framework adapter is checked against.

Shapes come straight from the reference rules (``source="reference"``); the forward pass runs each layer
with the NumPy kernels of :mod:`deferinit.ops` in float32. It needs nothing but NumPy.

The ``native`` object is a :class:`NumpyNet`: the plan plus a dict of canonical weights.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .. import ops
from ..errors import SpecError
from ..init import Uniform
from ..init import get as get_init
from ..layers import (
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
from ..layers_seq import (
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
from ..shapes import Inference, Node
from ..spec import Concat, Residual, Sequential
from .compiled import CompiledModel, NativeParam

__all__ = ["NumpyModel", "NumpyNet"]


class NumpyNet:
    """Canonical weights plus the plan; callable like a model."""

    def __init__(self, root: Node, data_format: str) -> None:
        self.root, self.data_format = root, data_format
        self.params: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        # ReLU masks, in call order, frozen by the parity check's finite differences (deferinit.parity_fd):
        # None in every ordinary call
        self.frozen: list[np.ndarray] | None = None
        self.frozen_at = 0

    def __call__(self, x: np.ndarray, training: bool = False,
                 record: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return _run(self, self.root, x, training, record)


def _activate(net: NumpyNet, name: str | None, y: np.ndarray) -> np.ndarray:
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


def _dense(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Dense = node.layer  # type: ignore[assignment]
    y = np.matmul(x, net.params[node.param_name("weight")].T)
    if layer.use_bias:
        y = y + net.params[node.param_name("bias")]
    return _activate(net, layer.activation, y)


def _conv(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer = node.layer
    xc = _to_cf(net, x)
    bias = net.params[node.param_name("bias")] if layer.use_bias else None
    y = ops.conv(xc, net.params[node.param_name("weight")], bias, layer.stride, layer.pads(xc.shape[2:]),
                 layer.dilation, layer.groups)
    return _activate(net, layer.activation, _from_cf(net, y))


def _pool(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer = node.layer
    kind = "max" if isinstance(layer, MaxPool2D) else "avg"
    return _from_cf(net, ops.pool(_to_cf(net, x), kind, layer.pool_size, layer.strides, layer.padding))


def _gap(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return _to_cf(net, x).mean(axis=(2, 3), dtype=ops.float_type(x))


def _batch_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: BatchNorm = node.layer  # type: ignore[assignment]
    p = {k: net.params[node.param_name(k)] for k in ("weight", "bias", "running_mean", "running_var")}
    y, mean, var = ops.batch_norm(x, _channel_axis(net, x.ndim), p["weight"], p["bias"], p["running_mean"],
                                  p["running_var"], layer.eps, training, layer.momentum)
    if training:
        net.params[node.param_name("running_mean")] = mean  # type: ignore[assignment]
        net.params[node.param_name("running_var")] = var  # type: ignore[assignment]
    return y


def _layer_norm(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return ops.layer_norm(x, net.params[node.param_name("weight")], net.params[node.param_name("bias")],
                          node.layer.eps)


def _dropout(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    rate = node.layer.rate
    if not training or rate == 0:
        return x
    keep = net.rng.random(x.shape) >= rate
    return (x * keep / np.float32(1 - rate)).astype(x.dtype)


def _flatten(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def _activation(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return _activate(net, node.layer.activation, x)


def _embedding(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return net.params[node.param_name("weight")][x]


def _own(net: NumpyNet, node: Node) -> dict[str, np.ndarray]:
    """The node's parameters keyed by their short names (``weight_ih_l0``, ``q_weight``...)."""
    prefix = node.param_name("")
    return {name[len(prefix):]: value for name, value in net.params.items() if name.startswith(prefix)
            and "." not in name[len(prefix):]}


def _recurrent(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer = node.layer
    kind = {RNN: "rnn", GRU: "gru", LSTM: "lstm"}[type(layer)]
    if training and layer.dropout and layer.num_layers > 1:
        from ..errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"layer '{node.path}' ({type(layer).__name__}) on backend numpy: dropout between "
                                    f"recurrent layers in training mode has no reference")
    return ops.recurrent(kind, x, _own(net, node), layer.hidden_size, layer.num_layers, layer.bidirectional,
                         layer.use_bias, getattr(layer, "activation", "tanh"))


def _attention(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer = node.layer
    if training and layer.dropout:
        from ..errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"layer '{node.path}' (MultiHeadAttention) on backend numpy: attention dropout "
                                    f"in training mode has no reference")
    return ops.attention(x, _own(net, node), layer.num_heads, layer.use_bias)


def _class_token(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    token = np.broadcast_to(net.params[node.param_name("weight")], (x.shape[0], 1, x.shape[2]))
    return np.concatenate([token, x], axis=1)


def _one_hot(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return np.eye(node.layer.num_classes, dtype=np.float32)[x]


LEAVES: dict[type, Callable[[NumpyNet, Node, np.ndarray, bool], np.ndarray]] = {
    Dense: _dense, Conv1D: _conv, Conv2D: _conv, MaxPool2D: _pool, AvgPool2D: _pool, GlobalAvgPool2D: _gap,
    BatchNorm: _batch_norm, LayerNorm: _layer_norm, Dropout: _dropout, Flatten: _flatten,
    Identity: lambda net, node, x, training: x, Activation: _activation, ReLU: _activation,
    Sigmoid: _activation, Tanh: _activation, GELU: _activation, Softmax: _activation, Embedding: _embedding,
    RNN: _recurrent, GRU: _recurrent, LSTM: _recurrent, MultiHeadAttention: _attention,
    PositionalEncoding: lambda net, node, x, training: (x + ops.sinusoidal(x.shape[1], x.shape[2])).astype(ops.float_type(x)),
    ClassToken: _class_token,
    PositionEmbedding: lambda net, node, x, training: x + net.params[node.param_name("weight")],
    Reshape: lambda net, node, x, training: x.reshape((x.shape[0],) + node.layer.shape),
    Permute: lambda net, node, x, training: x.transpose((0,) + node.layer.dims),
    Scale: lambda net, node, x, training: (x * np.float32(node.layer.factor)).astype(ops.float_type(x)),
    Take: lambda net, node, x, training: np.take(x, node.layer.index, axis=node.layer.axis),
    OneHot: _one_hot,
}


def _run(net: NumpyNet, node: Node, x: np.ndarray, training: bool, record: dict | None) -> np.ndarray:
    target = node.tied_to or node
    layer = target.layer
    inner = record if node.tied_to is None else None
    if isinstance(layer, Sequential):
        y = x
        for child in target.children:
            y = _run(net, child, y, training, inner)
    elif isinstance(layer, Residual):
        y = _run(net, target.children[0], x, training, inner)
        short = _run(net, target.children[1], x, training, inner) if len(target.children) > 1 else x
        y = _activate(net, layer.activation, (y + short).astype(ops.float_type(y, short)))
    elif isinstance(layer, Concat):
        outs = [_run(net, child, x, training, inner) for child in target.children]
        y = np.concatenate(outs, axis=_channel_axis(net, outs[0].ndim))
    else:
        fn = LEAVES.get(type(layer))
        if fn is None:
            from ..errors import UnsupportedLayerError

            raise UnsupportedLayerError(f"layer '{node.path}' ({type(layer).__name__}) has no reference forward")
        y = fn(net, target, x, training)
    if record is not None and node.path:
        record[node.path] = y
    return y


class NumpyModel(CompiledModel[NumpyNet]):
    """The reference backend. ``init=None`` draws weights uniformly in ``±1/sqrt(fan_in)`` (PyTorch's default
    bound) with biases at zero; a callable ``init(name, shape) -> array`` is its "own" initializer."""

    backend = "numpy"
    _swaps_weights = True  # _set_weights builds a new dict, then assigns it

    def _new_native(self) -> NumpyNet:
        return NumpyNet(self.root, self.spec.data_format)

    def _native_init(self, native: NumpyNet, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool) -> dict[str, NativeParam]:
        found = {name: NativeParam(name, p.shape, p.shape, "reference") for name, p in inference.params.items()}
        if abstract:
            return found
        if init is None:
            from .. import init as init_mod

            seed = 0 if key is None else self._int_key(key)
            native.params = init_mod.generate(inference.params, _DefaultInit(), seed)
        elif callable(init) and get_init(init) is None:
            params = {}
            for name, p in inference.params.items():
                value = np.asarray(init(name, p.shape))
                error = self._init_value_error(name, p.shape, value.shape, value.dtype, value.dtype.kind in "fiu")
                if error is not None:
                    raise error
                params[name] = value.astype(np.float32)
            native.params = params
        else:
            raise SpecError(f"init: the numpy backend expected a portable initializer or a callable "
                            f"init(name, shape), received {init!r}")
        return found

    def _to_native(self, x: Any) -> np.ndarray:
        arr = np.asarray(x)
        return arr.astype(np.float32) if arr.dtype.kind == "f" and arr.dtype != np.float32 else arr

    def _is_native(self, x: Any) -> bool:
        return False

    def _forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.native(x, training)

    def _intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        record: dict[str, np.ndarray] = {}
        self.native(x, False, record)
        return record

    def _get_weights(self) -> dict[str, np.ndarray]:
        return dict(self.native.params)

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.native.params = {name: np.array(weights[name], dtype=np.float32) for name in self.report.params}


class _DefaultInit(Uniform):
    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return (2.0 * rng.random(shape) - 1.0) / np.sqrt(fan_in)
