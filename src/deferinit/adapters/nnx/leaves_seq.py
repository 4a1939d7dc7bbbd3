# mypy: disable-error-code="misc"
"""NNX builders for the sequence layers with parameters: ``ClassToken`` / ``PositionEmbedding`` (d2l's ViT
``cls_token``, zeros, and ``pos_embed``, normal with standard deviation 0.01, as ``nnx.Param``s),
``MultiHeadAttention`` (``nnx.MultiHeadAttention`` as self-attention, the jax backend's ``heads_*`` layouts)
and the recurrent layers (``nnx.RNN`` over NNX's own cells, ``nnx.Bidirectional`` for two directions, stacked
in a list for ``num_layers > 1``).

NNX's cells compute PyTorch's functions: ``nnx.SimpleCell`` ``h' = act(W_i x + b_i + W_h h)`` (``b_i`` holds
``b_ih + b_hh``) and ``nnx.LSTMCell`` (per-gate kernels ``ii, if_, ig, io`` / ``hi, hf, hg, ho``, one bias per
gate on the hidden side holding ``b_ih + b_hh``); the jax backend's ``Gates`` layout stacks them into PyTorch's
``(G*H, in)``. ``nnx.GRUCell`` fuses the gates (``dense_i`` ``(in, 3H)`` in PyTorch's order r, z, n) and computes
``n = tanh(W_in x + b_in + r * (W_hn h))``: its hidden projection has no bias, so a ``(3H,)`` bias is added to
``dense_h`` and the cell is PyTorch's GRU exactly (``b_hn`` inside the reset gate's product). ``use_bias=False``
removes each cell's biases (``Linear.bias = None``, as ``nnx.Linear(use_bias=False)`` holds it).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from ...extend import register_builder
from ...layers_seq import GRU, LSTM, RNN, ClassToken, MultiHeadAttention, PositionEmbedding
from ...shapes import Node
from ..jax import params as T
from . import modules as M
from .leaves import Made, _one


class SelfAttention(nnx.MultiHeadAttention):
    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x, deterministic=not train)


@register_builder("nnx", MultiHeadAttention)
def _attention(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: MultiHeadAttention = node.layer  # type: ignore[assignment]
    m = SelfAttention(layer.num_heads, int(in_shape[-1]), qkv_features=layer.num_hiddens,
                      out_features=layer.num_hiddens, use_bias=layer.use_bias, dropout_rate=layer.dropout,
                      broadcast_dropout=False, decode=False, rngs=rngs)
    out: dict[str, T.Layout] = {}
    for proj, sub in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
        out[f"{proj}_weight"] = _one(f"{sub}/kernel", "heads_out" if proj == "out" else "heads_in")
        if layer.use_bias:
            out[f"{proj}_bias"] = _one(f"{sub}/bias", "same" if proj == "out" else "heads_bias")
    return m, out


class Recurrent(nnx.Module):
    """``num_layers`` recurrent layers (``nnx.RNN`` or ``nnx.Bidirectional``) in ``layers``, batch-first, zero
    initial state; in training, dropout on the outputs of every layer but the last (PyTorch's ``dropout=``);
    ``return_sequences=False``: the forward direction's last step and the backward's first, as Keras."""

    def __init__(self, layers: list, rate: float, directions: int, sequences: bool, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(layers)
        self.dropout = M.Dropout(rate, rngs=rngs) if rate > 0 and len(layers) > 1 else None
        self.directions, self.sequences = directions, sequences

    def __call__(self, x: Any, train: bool = False) -> Any:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.dropout is not None and i < len(self.layers) - 1:
                x = self.dropout(x, train)
        if self.sequences:
            return x
        if self.directions == 1:
            return x[:, -1]
        h = x.shape[-1] // 2
        return jnp.concatenate([x[:, -1, :h], x[:, 0, h:]], axis=-1)


_GATES = {RNN: (("dense_i",), ("dense_h",), ("dense_i",)), LSTM: (("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho"),
                                                                ("hi", "hf", "hg", "ho"))}


def _no_bias(linear: nnx.Linear) -> None:
    linear.bias, linear.use_bias = None, False


def _cell(layer: Any, fan_in: int, rngs: nnx.Rngs) -> Any:
    h = layer.hidden_size
    if isinstance(layer, GRU):
        cell = nnx.GRUCell(fan_in, h, rngs=rngs)
        if layer.use_bias:
            cell.dense_h.bias, cell.dense_h.use_bias = nnx.Param(jnp.zeros((3 * h,), jnp.float32)), True
        else:
            _no_bias(cell.dense_i)
        return cell
    if isinstance(layer, RNN):
        act = jnp.tanh if layer.activation == "tanh" else nnx.relu
        cell = nnx.SimpleCell(fan_in, h, activation_fn=act, rngs=rngs)
    else:
        cell = nnx.LSTMCell(fan_in, h, rngs=rngs)
    if not layer.use_bias:
        for name in _GATES[type(layer)][2]:
            _no_bias(getattr(cell, name))
    return cell


def _layouts(layer: Any, at: str) -> dict[str, T.Layout]:
    """The canonical parameters of one direction of one layer, whose cell is at ``at``."""
    if isinstance(layer, GRU):
        out: dict[str, T.Layout] = {"weight_ih": _one(f"{at}dense_i/kernel", "dense"),
                                    "weight_hh": _one(f"{at}dense_h/kernel", "dense")}
        if layer.use_bias:
            out.update(bias_ih=_one(f"{at}dense_i/bias"), bias_hh=_one(f"{at}dense_h/bias"))
        return out
    ins, hids, biases = _GATES[type(layer)]

    def leaves(gates: tuple, leaf: str) -> list[T.Leaf]:
        return [T.Leaf("params", f"{at}{g}/{leaf}") for g in gates]
    out = {"weight_ih": T.Gates(leaves(ins, "kernel"), kernel=True),
           "weight_hh": T.Gates(leaves(hids, "kernel"), kernel=True)}
    if layer.use_bias:
        out.update(bias_ih=T.Gates(leaves(biases, "bias"), kernel=False),
                   bias_hh=T.Gates(leaves(biases, "bias"), kernel=False, held=(False,) * len(biases)))
    return out


@register_builder("nnx", RNN, GRU, LSTM)
def _recurrent(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Any = node.layer
    dirs = len(layer.directions)
    layers = []
    for i in range(layer.num_layers):
        fan_in = int(in_shape[-1]) if i == 0 else layer.hidden_size * dirs
        forward = nnx.RNN(_cell(layer, fan_in, rngs), rngs=rngs)
        layers.append(forward if dirs == 1 else nnx.Bidirectional(
            forward, nnx.RNN(_cell(layer, fan_in, rngs), reverse=True, keep_order=True, rngs=rngs), rngs=rngs))
    out: dict[str, T.Layout] = {}
    for i in range(layer.num_layers):
        for sfx, side in zip(layer.directions, ("forward_rnn/", "backward_rnn/") if dirs == 2 else ("",)):
            for kind, layout in _layouts(layer, f"layers/{i}/{side}cell/").items():
                out[f"{kind}_l{i}{sfx}"] = layout
    return Recurrent(layers, layer.dropout, dirs, layer.return_sequences, rngs), out


class ClassTokenModule(nnx.Module):
    """d2l's ``cls_token`` ``(1, 1, D)`` (zeros), prepended to every sequence."""

    def __init__(self, features: int) -> None:
        self.cls_token = nnx.Param(jnp.zeros((1, 1, features), jnp.float32))

    def __call__(self, x: Any, train: bool = False) -> Any:
        token = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        return jnp.concatenate([token, x], axis=1)


class PositionEmbeddingModule(nnx.Module):
    """d2l's ``pos_embed`` ``(1, T, D)`` (``T`` the layer's ``max_len`` when set: an input of fewer steps adds its
    first rows), drawn with ``nnx.initializers.normal()`` (standard deviation 0.01)."""

    def __init__(self, steps: int, features: int, rngs: nnx.Rngs) -> None:
        self.pos_embed = nnx.Param(nnx.initializers.normal()(rngs.params(), (1, steps, features), jnp.float32))

    def __call__(self, x: Any, train: bool = False) -> Any:
        return x + self.pos_embed[:, :x.shape[1]]


@register_builder("nnx", ClassToken)
def _class_token(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    return ClassTokenModule(int(in_shape[-1])), {"weight": _one("cls_token")}


@register_builder("nnx", PositionEmbedding)
def _position_embedding(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    steps = node.layer.max_len or in_shape[1]  # type: ignore[attr-defined]
    return PositionEmbeddingModule(int(steps), int(in_shape[2]), rngs), {"weight": _one("pos_embed")}
