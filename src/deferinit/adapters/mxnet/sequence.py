# mypy: allow-subclassing-any
"""Gluon builders (registered on import, see ``leaves.py``) for the sequence and token layers (``layers_seq``):
batch-first ``(N, T, features)`` data.

Recurrent layers are Gluon's own ``rnn.RNN``/``GRU``/``LSTM`` (``layout='NTC'``, ``input_size=0``: the input size is
deferred to Gluon). MXNet's fused RNN operator keeps PyTorch's (cuDNN's) gate order and GRU formula, and Gluon
holds ``l{k}_i2h_weight`` ``(G*H, in)``, ``l{k}_h2h_weight``, ``l{k}_i2h_bias``, ``l{k}_h2h_bias`` (``r{k}_...``
for the reverse direction): the canonical ``weight_ih_l{k}``... one to one, same layouts. Gluon has no
bias-free recurrent layer, so ``use_bias=False`` keeps Gluon's biases at zero and frozen (``grad_req='null'``),
which is the same function with the same gradients; they are not canonical parameters.

Gluon 1.9 has no multi-head attention: it is written here as d2l's MXNet chapter does (four ``Dense`` projections,
``batch_dot``), the projections' input size deferred to Gluon. The class token and the learned position embedding
are Gluon Parameters whose deferred shapes MXNet infers from the data through ``_identity_with_attr_like_rhs``
(the operator MXNet provides for a value that takes another's shape).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mxnet import gluon
from mxnet.gluon import nn, rnn

from ...extend import register_builder
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
from ...layouts import recurrent_names
from . import modules

__all__ = ["MultiHeadAttentionBlock", "PositionalEncodingBlock", "ClassTokenBlock", "PositionEmbeddingBlock"]

Built = tuple[gluon.HybridBlock, dict[str, Any]]


def _recurrent(layer: RNN | GRU | LSTM, fmt: str) -> Built:
    common = dict(num_layers=layer.num_layers, layout="NTC", dropout=layer.dropout, bidirectional=layer.bidirectional,
                  input_size=0)
    if isinstance(layer, RNN):
        block = rnn.RNN(layer.hidden_size, activation=layer.activation, **common)
    else:
        block = (rnn.GRU if isinstance(layer, GRU) else rnn.LSTM)(layer.hidden_size, **common)
    params = {}
    for name in recurrent_names(type(layer).__name__, layer.num_layers, layer.bidirectional):
        param = getattr(block, _gluon_name(name))
        if layer.use_bias or name.startswith("weight"):
            params[name] = param
        else:
            param.grad_req = "null"  # stays at Gluon's zero init: no bias, and nothing to train
    return block, params


def _gluon_name(name: str) -> str:
    """The Gluon attribute of a canonical recurrent parameter: ``weight_ih_l0_reverse`` -> ``r0_i2h_weight``."""
    kind, gate, rest = name.split("_", 2)  # "weight", "ih", "l0_reverse"
    direction = "r" if rest.endswith("_reverse") else "l"
    return f"{direction}{rest[1:].split('_')[0]}_{gate[0]}2h_{kind}"


class MultiHeadAttentionBlock(gluon.HybridBlock):
    """d2l's multi-head self-attention (queries, keys and values are the input), no mask."""

    def __init__(self, num_hiddens: int, num_heads: int, use_bias: bool, dropout: float) -> None:
        super().__init__()
        self._heads, self._scale = num_heads, math.sqrt(num_hiddens // num_heads)
        with self.name_scope():
            self.q, self.k, self.v, self.out = (nn.Dense(num_hiddens, use_bias=use_bias, flatten=False, in_units=0,
                                                         prefix=f"{name}_") for name in ("q", "k", "v", "out"))
            self.dropout = modules.Dropout(dropout)

    def _split(self, F: Any, t: Any) -> Any:  # (N, T, H) -> (N * heads, T, H / heads)
        t = F.transpose(F.reshape(t, shape=(0, 0, self._heads, -1)), axes=(0, 2, 1, 3))
        return F.reshape(t, shape=(-3, 0, 0))

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        q, k, v = self._split(F, self.q(x)), self._split(F, self.k(x)), self._split(F, self.v(x))
        weights = self.dropout(F.softmax(F.batch_dot(q, k, transpose_b=True) / self._scale, axis=-1))
        heads = F.reshape(F.batch_dot(weights, v), shape=(-4, -1, self._heads, 0, 0))  # (N, heads, T, H / heads)
        return self.out(F.reshape(F.transpose(heads, axes=(0, 2, 1, 3)), shape=(0, 0, -1)))


def _attention(layer: MultiHeadAttention, fmt: str) -> Built:
    block = MultiHeadAttentionBlock(layer.num_hiddens, layer.num_heads, layer.use_bias, layer.dropout)
    params = {}
    for proj in ("q", "k", "v", "out"):
        params[f"{proj}_weight"] = getattr(block, proj).weight
        if layer.use_bias:
            params[f"{proj}_bias"] = getattr(block, proj).bias
    return block, params


class PositionalEncodingBlock(gluon.HybridBlock):
    """Adds d2l's sinusoidal table, computed in the graph from the input's own steps and features (float32, as
    ``ops.sinusoidal``): ``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(...)``."""

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        steps = F.contrib.arange_like(x, axis=1)  # (T,)
        feature = F.contrib.arange_like(x, axis=2)  # (D,)
        odd = feature % 2
        dim = F.cast(F.size_array(feature), dtype="float32")
        div = 10000.0 ** F.broadcast_div(feature - odd, dim)  # 10000^(2i/d), as ops.sinusoidal
        angles = F.broadcast_div(F.reshape(steps, shape=(-1, 1)), F.reshape(div, shape=(1, -1)))  # (T, D)
        odd = F.reshape(odd, shape=(1, -1))
        table = F.broadcast_mul(F.sin(angles), 1 - odd) + F.broadcast_mul(F.cos(angles), odd)
        return F.broadcast_add(x, F.expand_dims(table, axis=0))


class ClassTokenBlock(gluon.HybridBlock):
    """Prepends a learned ``(1, 1, D)`` token (zeros at first); D is deferred."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(1, 1, 0), init="zeros", allow_deferred_init=True)

    def hybrid_forward(self, F, x, weight):  # type: ignore[no-untyped-def]
        first = F.slice_axis(x, axis=1, begin=0, end=1)  # (N, 1, D)
        token = F._internal._identity_with_attr_like_rhs(weight, F.slice_axis(first, axis=0, begin=0, end=1))
        return F.concat(F.broadcast_like(token, first), x, dim=1)


class PositionEmbeddingBlock(gluon.HybridBlock):
    """Adds a learned ``(1, T, D)`` embedding; T and D are deferred. With ``max_len`` the table is
    ``(1, max_len, D)`` (D deferred: Gluon infers it from a ``(1, max_len, D)`` tensor made of the input's first
    step) and its first T rows are added (``slice_like``)."""

    def __init__(self, max_len: int | None = None) -> None:
        super().__init__()
        self._max_len = max_len
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(1, max_len or 0, 0), allow_deferred_init=True)

    def hybrid_forward(self, F, x, weight):  # type: ignore[no-untyped-def]
        first = F.slice_axis(x, axis=0, begin=0, end=1)
        if self._max_len is None:
            return F.broadcast_add(x, F._internal._identity_with_attr_like_rhs(weight, first))
        like = F.broadcast_axis(F.slice_axis(first, axis=1, begin=0, end=1), axis=1, size=self._max_len)
        weight = F._internal._identity_with_attr_like_rhs(weight, like)
        return F.broadcast_add(x, F.slice_like(weight, x, axes=(1,)))


def _with_weight(block: gluon.HybridBlock) -> Built:
    return block, {"weight": block.weight}


def _lambda(fn: Callable[[Any, Any, Any], Any]) -> Callable[[Any, str], Built]:
    return lambda layer, fmt: (nn.HybridLambda(lambda F, x: fn(F, x, layer)), {})  # type: ignore[call-arg]


_BUILDERS: dict[type, Callable[[Any, str], Built]] = {
    RNN: _recurrent, GRU: _recurrent, LSTM: _recurrent, MultiHeadAttention: _attention,
    PositionalEncoding: lambda layer, fmt: (PositionalEncodingBlock(), {}),
    ClassToken: lambda layer, fmt: _with_weight(ClassTokenBlock()),
    PositionEmbedding: lambda layer, fmt: _with_weight(PositionEmbeddingBlock(layer.max_len)),
    Reshape: _lambda(lambda F, x, layer: F.reshape(x, shape=(0,) + layer.shape)),
    Permute: _lambda(lambda F, x, layer: F.transpose(x, axes=(0,) + layer.dims)),
    Scale: _lambda(lambda F, x, layer: x * layer.factor),
    Take: _lambda(lambda F, x, layer: F.squeeze(F.slice_axis(x, axis=layer.axis, begin=layer.index,  # -1: to the end
                                                             end=layer.index + 1 or None), axis=layer.axis)),
    OneHot: _lambda(lambda F, x, layer: F.one_hot(x, depth=layer.num_classes)),
}
for _type, _builder in _BUILDERS.items():
    register_builder("mxnet", _type)(_builder)
