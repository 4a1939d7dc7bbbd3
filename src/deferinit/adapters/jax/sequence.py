# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""Flax linen modules and builders for the sequence layers (layers_seq.py), imported only with the jax backend.

Every input-dependent dim comes from Flax's own ``init``: the cells' Dense layers find their fan-in, the
attention's DenseGeneral layers theirs, and ClassToken / PositionEmbedding declare ``self.param`` with shapes
read from the input, as d2l's JAX ViT does. So no entry here is ``source="reference"``.

* Recurrent layers are Flax's own: ``nn.RNN(cell)`` over batch-first sequences (a ``lax.scan``), wrapped in
  ``nn.Bidirectional`` (the backward RNN runs reversed with ``keep_order=True``, so step ``t`` of both
  directions is aligned, as in PyTorch), stacked as ``layers_<l>`` for ``num_layers > 1``. The cells compute
  PyTorch's functions exactly (checked against ``ops.recurrent`` in the tests):

  - ``nn.SimpleCell``: ``h' = act(W_i x + b_i + W_h h)``; ``b_i`` holds ``b_ih + b_hh``.
  - ``nn.GRUCell``: ``r = sigmoid(W_ir x + b_ir + W_hr h)``, ``z`` alike, ``n = tanh(W_in x + b_in +
    r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``: the reset gate acts on ``W_hn h + b_hn`` as in PyTorch;
    ``b_ir`` and ``b_iz`` hold the sums ``b_ir + b_hr`` and ``b_iz + b_hz``, ``b_in`` and ``b_hn`` are PyTorch's.
  - ``nn.OptimizedLSTMCell`` (``nn.LSTMCell``'s variables and function, its matmuls fused): gates (i, f, g, o)
    in PyTorch's order, one bias per gate on the hidden side (``hi/bias`` holds ``b_ii + b_hi``).

  Flax's cells always have biases, so ``use_bias=False`` cannot be written with them: the ``*NoBias`` cells
  below are Flax's cells with the same variable names, formulas and initializers, minus the biases.
  Canonical layout: the per-gate kernels ``(in, H)`` stack into PyTorch's ``(G*H, in)`` (see
  ``_jax_tree.Gates``). Dropout between stacked layers (training only) is PyTorch's; it has no reference.
* ``MultiHeadAttention`` is ``nn.MultiHeadDotProductAttention`` used as self-attention: projections
  ``query``/``key``/``value`` of kernel ``(D, heads, head_dim)`` (heads are consecutive blocks of ``head_dim``,
  as in d2l's ``transpose_qkv``) and ``out`` of kernel ``(heads, head_dim, H)``; Flax scales the queries by
  ``1 / sqrt(head_dim)`` before the product where d2l scales the scores after (the same up to rounding), and
  drops attention weights per element (``broadcast_dropout=False``), as d2l's dropout on them does.
* ``PositionalEncoding`` adds d2l's sinusoidal table, computed once in numpy (the reference's float32 arithmetic).
* ``ClassToken`` / ``PositionEmbedding``: d2l's JAX ``cls_token`` (zeros) and ``pos_embed``
  (``nn.initializers.normal()``, standard deviation 0.01), declared with shapes read from the input.

Flax's default initializers are each module's own (cells: lecun_normal input kernels, orthogonal recurrent
kernels, zero biases; DenseGeneral: lecun_normal on the flattened projection). A Flax initializer given to
``apply_init`` replaces them for every weight matrix (input and recurrent kernels, the four projections, the
position embedding) and leaves biases and the class token alone, as the other backends do.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ... import ops
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
from ...shapes import Node
from . import params as T

__all__ = ["SEQ_LEAVES", "Recurrent", "Bidirectional", "Stacked", "SimpleCellNoBias", "GRUCellNoBias",
           "LSTMCellNoBias", "SelfAttention", "SinusoidalEncoding", "ClassTokenModule", "PositionEmbeddingModule"]


# --------------------------------------------------------------------------------------------- recurrent
class Recurrent(nn.RNN):
    """``nn.RNN`` as a layer of the tree: batch-first, zero initial state, the output sequence only."""

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)


class Bidirectional(nn.Bidirectional):
    """``nn.Bidirectional``: both directions' outputs concatenated on the features, forward first."""

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)


class Stacked(nn.Module):
    """``num_layers`` recurrent layers (``nn.RNN`` or ``nn.Bidirectional``) named ``layers_<l>``; in training,
    dropout on the outputs of every layer but the last, as PyTorch's ``dropout=`` does."""

    layers: tuple = ()
    rate: float = 0.0

    def __call__(self, x: Any, train: bool = False) -> Any:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if train and self.rate > 0 and i < len(self.layers) - 1:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, x.shape)
                x = jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
        return x


class SimpleCellNoBias(nn.SimpleCell):
    """``nn.SimpleCell`` without its bias ``i/bias``: ``h' = act(W_i x + W_h h)``."""

    @nn.compact
    def __call__(self, carry: Any, inputs: Any) -> Any:
        dense = functools.partial(nn.Dense, carry.shape[-1], use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        h = self.activation_fn(dense(kernel_init=self.kernel_init, name="i")(inputs)
                               + dense(kernel_init=self.recurrent_kernel_init, name="h")(carry))
        return h, h


class GRUCellNoBias(nn.GRUCell):
    """``nn.GRUCell`` without its biases (``ir``, ``iz``, ``in``, ``hn``): the same gates, kernels and names."""

    @nn.compact
    def __call__(self, carry: Any, inputs: Any) -> Any:
        h = carry
        dense = functools.partial(nn.Dense, h.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        dense_i = functools.partial(dense, kernel_init=self.kernel_init)
        dense_h = functools.partial(dense, kernel_init=self.recurrent_kernel_init)
        r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(h))
        z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(h))
        n = self.activation_fn(dense_i(name="in")(inputs) + r * dense_h(name="hn")(h))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class LSTMCellNoBias(nn.LSTMCell):
    """``nn.LSTMCell`` without its biases (``hi``, ``hf``, ``hg``, ``ho``)."""

    @nn.compact
    def __call__(self, carry: Any, inputs: Any) -> Any:
        c, h = carry
        dense = functools.partial(nn.Dense, h.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)

        def gate(name: str) -> Any:
            return (dense(kernel_init=self.kernel_init, name="i" + name)(inputs)
                    + dense(kernel_init=self.recurrent_kernel_init, name="h" + name)(h))
        i, f = self.gate_fn(gate("i")), self.gate_fn(gate("f"))
        g, o = self.activation_fn(gate("g")), self.gate_fn(gate("o"))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h


# cell classes, the input and hidden gate variables in PyTorch's gate order, and the variables holding
# (bias_ih, bias_hh) per gate with whether bias_hh's part is its own (True) or folded into bias_ih's (False)
_CELLS = {RNN: (nn.SimpleCell, SimpleCellNoBias), GRU: (nn.GRUCell, GRUCellNoBias),
          LSTM: (nn.OptimizedLSTMCell, LSTMCellNoBias)}
_GATES = {RNN: (("i",), ("h",)), GRU: (("ir", "iz", "in"), ("hr", "hz", "hn")),
          LSTM: (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"))}
_BIASES = {RNN: (("i",), ("i",), (False,)), GRU: (("ir", "iz", "in"), ("ir", "iz", "hn"), (False, False, True)),
           LSTM: (("hi", "hf", "hg", "ho"), ("hi", "hf", "hg", "ho"), (False,) * 4)}


def _cell(layer: Any) -> nn.Module:
    cls = _CELLS[type(layer)][0 if layer.use_bias else 1]
    if isinstance(layer, RNN):
        return cls(layer.hidden_size, activation_fn=jnp.tanh if layer.activation == "tanh" else nn.relu)
    return cls(layer.hidden_size)


def _recurrent(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer  # the builder's own layer type (the table maps it here)
    cell = _cell(layer)  # its initializers (Flax's defaults: lecun_normal, orthogonal, zeros) go to the Leafs

    def direction(reverse: bool = False) -> nn.Module:
        return nn.RNN(_cell(layer), reverse=reverse, keep_order=reverse)

    def one(top: bool) -> nn.Module:
        if layer.bidirectional:
            return (Bidirectional if top else nn.Bidirectional)(direction(), direction(True),
                                                                name=name if top else None)
        return Recurrent(_cell(layer), name=name) if top else direction()

    single = layer.num_layers == 1
    module = one(True) if single else Stacked(tuple(one(False) for _ in range(layer.num_layers)), layer.dropout,
                                              name=name)
    sides = (("", "forward_rnn/"), ("_reverse", "backward_rnn/")) if layer.bidirectional else (("", ""),)
    ins, hids = _GATES[type(layer)]
    bias_ih, bias_hh, own = _BIASES[type(layer)]
    out: dict[str, T.Layout] = {}
    for i in range(layer.num_layers):
        for sfx, side in sides:
            at = f"{'' if single else f'layers_{i}/'}{side}cell/"

            def leaves(gates: tuple, leaf: str, init: Any, kernel: bool) -> list[T.Leaf]:
                return [T.Leaf("params", f"{at}{g}/{leaf}", init, kernel=kernel) for g in gates]  # noqa: B023
            out[f"weight_ih_l{i}{sfx}"] = T.Gates(leaves(ins, "kernel", cell.kernel_init, True), kernel=True)
            out[f"weight_hh_l{i}{sfx}"] = T.Gates(leaves(hids, "kernel", cell.recurrent_kernel_init, True), kernel=True)
            if layer.use_bias:
                out[f"bias_ih_l{i}{sfx}"] = T.Gates(leaves(bias_ih, "bias", cell.bias_init, False), kernel=False)
                out[f"bias_hh_l{i}{sfx}"] = T.Gates(leaves(bias_hh, "bias", cell.bias_init, False), kernel=False,
                                                    held=own)
    return module, out


# --------------------------------------------------------------------------------------------- attention
class SelfAttention(nn.MultiHeadDotProductAttention):
    """``nn.MultiHeadDotProductAttention`` on one input (queries, keys and values), deterministic in inference."""

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x, deterministic=not train)


def _attention(node: Node, cf: bool, name: str) -> T.Made:
    layer: MultiHeadAttention = node.layer  # type: ignore[assignment]
    m = SelfAttention(num_heads=layer.num_heads, qkv_features=layer.num_hiddens, out_features=layer.num_hiddens,
                      use_bias=layer.use_bias, dropout_rate=layer.dropout, broadcast_dropout=False, name=name)
    out: dict[str, T.Layout] = {}
    for proj, sub in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
        # DenseGeneral initializes its kernel flattened to (fan in, fan out): split after the contracted axes
        split = 2 if proj == "out" else 1
        out[f"{proj}_weight"] = T.One(T.Leaf("params", f"{sub}/kernel", m.kernel_init, kernel=True, split=split),
                                      "heads_out" if proj == "out" else "heads_in")
        if layer.use_bias:
            out[f"{proj}_bias"] = T.One(T.Leaf("params", f"{sub}/bias", m.bias_init),
                                        "same" if proj == "out" else "heads_bias")
    return m, out


# --------------------------------------------------------------------------------------------- tokens, positions
@functools.lru_cache(maxsize=16)
def _table(steps: int, dim: int) -> np.ndarray:
    return ops.sinusoidal(steps, dim)


class SinusoidalEncoding(nn.Module):
    """Adds d2l's sinusoidal table ``P[:T]`` (no variables)."""

    max_len: int = 1000

    def __call__(self, x: Any, train: bool = False) -> Any:
        steps, dim = x.shape[1], x.shape[2]
        if isinstance(steps, int):  # a constant of the compiled function, computed as the reference does
            return x + _table(self.max_len, dim)[:steps]
        # a symbolic number of steps (abstract init with unknown dims): the same formula, traced
        pos = jnp.arange(steps, dtype=jnp.float32).reshape(-1, 1)
        angles = pos / jnp.power(jnp.float32(10000), jnp.arange(0, dim, 2, dtype=jnp.float32) / jnp.float32(dim))
        return x + jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(steps, dim)


class ClassTokenModule(nn.Module):
    """d2l's JAX ``cls_token``: ``self.param('cls_token', zeros, (1, 1, D))``, prepended to every sequence."""

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        token = self.param("cls_token", nn.initializers.zeros, (1, 1, x.shape[-1]), jnp.float32)
        return jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, x.shape[-1])).astype(x.dtype), x], axis=1)


#: d2l's JAX ViT draws its position embedding with ``nn.initializers.normal()`` (standard deviation 0.01)
POSITION_INIT = nn.initializers.normal()


class PositionEmbeddingModule(nn.Module):
    """d2l's JAX ``pos_embed``: ``self.param('pos_embed', normal(), (1, T, D))``, T and D from the input; with
    ``max_len`` a ``(1, max_len, D)`` table whose first T rows are added."""

    max_len: int | None = None

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        table = self.param("pos_embed", POSITION_INIT, (1, self.max_len or x.shape[1], x.shape[2]), jnp.float32)
        return x + table[:, :x.shape[1]]


def _class_token(node: Node, cf: bool, name: str) -> T.Made:
    return ClassTokenModule(name=name), {"weight": T.One(T.Leaf("params", "cls_token", nn.initializers.zeros))}


def _position_embedding(node: Node, cf: bool, name: str) -> T.Made:
    max_len = getattr(node.layer, "max_len", None)
    return PositionEmbeddingModule(max_len, name=name), {"weight": T.One(T.Leaf("params", "pos_embed", POSITION_INIT,
                                                                                 kernel=True))}


# --------------------------------------------------------------------------------------------- stateless
class Fn(nn.Module):
    """A layer without variables: ``fn(x)`` (``fn`` a hashable partial of a module-level function)."""

    fn: Callable = lambda x: x

    def __call__(self, x: Any, train: bool = False) -> Any:
        return self.fn(x)


def _reshape(shape: tuple, x: Any) -> Any:
    return x.reshape((x.shape[0],) + shape)


def _permute(dims: tuple, x: Any) -> Any:
    return jnp.transpose(x, (0,) + dims)


def _scale(factor: float, x: Any) -> Any:
    return x * jnp.asarray(factor, x.dtype)


def _take(index: int, axis: int, x: Any) -> Any:
    return jax.lax.index_in_dim(x, index, axis, keepdims=False)


def _one_hot(num_classes: int, x: Any) -> Any:
    return jax.nn.one_hot(x, num_classes, dtype=jnp.float32)


def _fn(make: Callable[[Any], Callable]) -> Callable[[Node, bool, str], T.Made]:
    return lambda node, cf, name: (Fn(make(node.layer), name=name), {})


SEQ_LEAVES: dict[type, Callable[[Node, bool, str], T.Made]] = {
    RNN: _recurrent, GRU: _recurrent, LSTM: _recurrent, MultiHeadAttention: _attention,
    PositionalEncoding: lambda node, cf, name: (SinusoidalEncoding(cast(Any, node.layer).max_len, name=name), {}),
    ClassToken: _class_token, PositionEmbedding: _position_embedding,
    Reshape: _fn(lambda s: functools.partial(_reshape, s.shape)),
    Permute: _fn(lambda s: functools.partial(_permute, s.dims)),
    Scale: _fn(lambda s: functools.partial(_scale, float(s.factor))),
    Take: _fn(lambda s: functools.partial(_take, s.index, s.axis)),
    OneHot: _fn(lambda s: functools.partial(_one_hot, s.num_classes)),
}
for _type, _builder in SEQ_LEAVES.items():
    register_builder("jax", _type)(_builder)
