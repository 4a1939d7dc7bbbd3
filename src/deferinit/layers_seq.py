"""Sequence and token layers (the d2l sequence chapters, the Transformer and the Vision Transformer).

Sequences are batch-first, ``(N, T, features)``, on every backend and in either data format.

Recurrent layers use PyTorch's (and ONNX's) canonical parameters, per layer ``l`` and direction (suffix
``""`` or ``"_reverse"``): ``weight_ih_l{l}`` ``(G*H, in)``, ``weight_hh_l{l}`` ``(G*H, H)``, ``bias_ih_l{l}``
and ``bias_hh_l{l}`` ``(G*H,)``, with the gates stacked in PyTorch's order: RNN ``G=1``; GRU ``G=3`` as
``(r, z, n)`` with the reset gate applied to ``W_hn h + b_hn``; LSTM ``G=4`` as ``(i, f, g, o)``.
Frameworks that keep one bias per gate (Keras LSTM, Flax) hold the sum of the two; they export it as
``bias_ih`` with ``bias_hh`` zero, which computes the same function and has the same gradients.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from .errors import SpecError, fmt_shape
from .layers import Buffer, Leaf, ParamSpec, RuleContext
from .spec import MAX_INT, Shape, check_float, check_int, show

__all__ = ["RNN", "GRU", "LSTM", "MultiHeadAttention", "PositionalEncoding", "ClassToken", "PositionEmbedding",
           "Reshape", "Permute", "Scale", "Take", "OneHot", "SEQUENCE_LAYERS"]


def _need_sequence(ctx: RuleContext, shape: Shape, what: str = "(batch, steps, features)") -> None:
    if len(shape) != 3:
        raise ctx.mismatch(f"a rank-3 input {what}", f"shape {fmt_shape(shape)} (rank {len(shape)})")


@dataclass(frozen=True, eq=False, repr=False)
class _Recurrent(Leaf):
    hidden_size: int
    _: KW_ONLY
    num_layers: int = 1
    bidirectional: bool = False
    use_bias: bool = True
    dropout: float = 0.0
    return_sequences: bool = True

    gates: ClassVar[int] = 1

    def validate(self) -> None:
        name = type(self).__name__
        check_int(name, "hidden_size", self.hidden_size)
        check_int(name, "num_layers", self.num_layers)
        check_float(name, "dropout", self.dropout, 0.0, 1.0, lo_open=False, hi_open=True)
        for field in ("bidirectional", "use_bias", "return_sequences"):
            if not isinstance(getattr(self, field), bool):
                raise SpecError(f"{name}: {field} must be True or False. Received: {field}={show(getattr(self, field))}")

    @property
    def directions(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        _need_sequence(ctx, shape)
        features = ctx.known(shape, 2, "the input features")
        g, h = self.gates * self.hidden_size, self.hidden_size
        params: dict[str, ParamSpec] = {}
        for layer in range(self.num_layers):
            fan_in = features if layer == 0 else h * len(self.directions)
            for sfx in self.directions:
                params[f"weight_ih_l{layer}{sfx}"] = ParamSpec((g, fan_in))
                params[f"weight_hh_l{layer}{sfx}"] = ParamSpec((g, h))
                if self.use_bias:
                    params[f"bias_ih_l{layer}{sfx}"] = ParamSpec((g,), role="bias")
                    params[f"bias_hh_l{layer}{sfx}"] = ParamSpec((g,), role="bias")
        if not self.return_sequences:  # the last step's output per direction, as Keras's return_sequences=False
            return (shape[0], h * len(self.directions)), params
        return (shape[0], shape[1], h * len(self.directions)), params

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        # the input projections of every step at once (PyTorch, cuDNN-style), and a lower layer's outputs
        n, t, width = shape[0], shape[1], len(self.directions) * self.hidden_size
        below = (Buffer("outputs of the lower layers", (n, t, width)),) if self.num_layers > 1 else ()
        return (Buffer("gate inputs of every step", (n, t, self.gates * width)),) + below


@dataclass(frozen=True, eq=False, repr=False)
class RNN(_Recurrent):
    """Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``; ``activation`` is ``tanh`` or ``relu``."""

    _: KW_ONLY
    activation: str = "tanh"

    def validate(self) -> None:
        super().validate()
        if self.activation not in ("tanh", "relu"):
            raise SpecError(f"RNN: activation must be 'tanh' or 'relu'. Received: activation={show(self.activation)}")


@dataclass(frozen=True, eq=False, repr=False)
class GRU(_Recurrent):
    """Gated recurrent unit, gates ``(r, z, n)``: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``."""

    gates: ClassVar[int] = 3


@dataclass(frozen=True, eq=False, repr=False)
class LSTM(_Recurrent):
    """Long short-term memory, gates ``(i, f, g, o)``; returns the hidden states of the last layer."""

    gates: ClassVar[int] = 4


@dataclass(frozen=True, eq=False, repr=False)
class MultiHeadAttention(Leaf):
    """Multi-head attention as in d2l: ``q``, ``k``, ``v`` and ``out`` projections of ``num_hiddens`` units,
    scaled dot-product attention per head. In a list spec it is self-attention on its one input; in a graph
    spec it is called ``mha(queries, keys, values, valid_lens=lens)``, ``valid_lens`` masking keys as d2l's
    ``masked_softmax``. ``causal=True`` masks future positions (GPT-2's decoder)."""

    num_hiddens: int
    num_heads: int
    _: KW_ONLY
    use_bias: bool = False
    dropout: float = 0.0
    causal: bool = False

    def validate(self) -> None:
        check_int("MultiHeadAttention", "num_hiddens", self.num_hiddens)
        check_int("MultiHeadAttention", "num_heads", self.num_heads)
        check_float("MultiHeadAttention", "dropout", self.dropout, 0.0, 1.0, lo_open=False, hi_open=True)
        if not isinstance(self.use_bias, bool):
            raise SpecError(f"MultiHeadAttention: use_bias must be True or False. Received: use_bias={show(self.use_bias)}")
        if not isinstance(self.causal, bool):
            raise SpecError(f"MultiHeadAttention: causal must be True or False. Received: causal={show(self.causal)}")
        if self.num_hiddens % self.num_heads:
            raise SpecError(f"MultiHeadAttention: num_heads must divide num_hiddens. Received: "
                            f"num_hiddens={self.num_hiddens}, num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.num_hiddens // self.num_heads

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        _need_sequence(ctx, shape)
        d = ctx.known(shape, 2, "the input features")
        h = self.num_hiddens
        params = {}
        for proj, fan_in in (("q", d), ("k", d), ("v", d), ("out", h)):
            params[f"{proj}_weight"] = ParamSpec((h, fan_in))
            if self.use_bias:
                params[f"{proj}_bias"] = ParamSpec((h,), role="bias")
        return (shape[0], shape[1], h), params

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        n, t, h = shape[0], shape[1], self.num_hiddens
        return (Buffer("queries, keys and values", (3, n, t, h)), Buffer("heads' outputs", (n, t, h)),
                Buffer("attention scores and weights", (2, n, self.num_heads, t, t)))


@dataclass(frozen=True, eq=False, repr=False)
class PositionalEncoding(Leaf):
    """Adds d2l's sinusoidal encoding: ``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(...)``."""

    _: KW_ONLY
    max_len: int = 1000

    def validate(self) -> None:
        check_int("PositionalEncoding", "max_len", self.max_len)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        _need_sequence(ctx, shape)
        d = ctx.known(shape, 2, "the features")
        if d % 2:
            raise ctx.mismatch("an even number of features (sin and cos pairs)", f"{d} features")
        if shape[1] is not None and shape[1] > self.max_len:
            raise ctx.mismatch(f"at most max_len={self.max_len} steps", f"{shape[1]} steps")
        return shape, {}

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        # PyTorch, TensorFlow and JAX build the whole max_len table with the layer, whatever the input's steps
        return (Buffer("sinusoidal table", (self.max_len, shape[2]), resident=True),)


@dataclass(frozen=True, eq=False, repr=False)
class ClassToken(Leaf):
    """Prepends a learned token: ``(N, T, D) -> (N, T + 1, D)``; weight ``(1, 1, D)``, zeros at first."""

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        _need_sequence(ctx, shape)
        d = ctx.known(shape, 2, "the features")
        steps = None if shape[1] is None else shape[1] + 1
        return (shape[0], steps, d), {"weight": ParamSpec((1, 1, d), role="shift")}


@dataclass(frozen=True, eq=False, repr=False)
class PositionEmbedding(Leaf):
    """Adds a learned position embedding of shape ``(1, T, D)``; both T and D are deferred (d2l's ViT). With
    ``max_len``, the table is ``(1, max_len, D)`` and an input of ``T <= max_len`` steps gets its first ``T`` rows
    (GPT-2's and BERT's learned positions: ``wpe`` of 1024 x 768 whatever the sequence length)."""

    _: KW_ONLY
    max_len: int | None = None
    fan_names: ClassVar[dict[int, str]] = {1: "steps", 2: "features"}

    def validate(self) -> None:
        check_int("PositionEmbedding", "max_len", self.max_len, optional=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        _need_sequence(ctx, shape)
        d = ctx.known(shape, 2, "the features")
        if self.max_len is None:
            return shape, {"weight": ParamSpec((1, ctx.known(shape, 1, "the number of steps"), d), role="embedding")}
        if shape[1] is not None and shape[1] > self.max_len:
            raise ctx.mismatch(f"at most max_len={self.max_len} steps", f"{shape[1]} steps")
        return shape, {"weight": ParamSpec((1, self.max_len, d), role="embedding")}


@dataclass(frozen=True, eq=False, repr=False)
class Reshape(Leaf):
    """Reshapes every axis but the batch to ``shape`` (one entry may be -1)."""

    shape: Any
    accepts: ClassVar[str] = "any"

    def validate(self) -> None:
        target = tuple(self.shape) if isinstance(self.shape, (list, tuple)) else None
        ok = target is not None and len(target) >= 1 and all(
            isinstance(d, int) and not isinstance(d, bool) and (1 <= d <= MAX_INT or d == -1) for d in target) \
            and sum(d == -1 for d in target) <= 1
        if not ok:
            raise SpecError(f"Reshape: shape must be a tuple of positive sizes (below 2**63) with at most one -1. "
                            f"Received: shape={show(self.shape)}")
        object.__setattr__(self, "shape", target)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        rest = shape[1:]
        known = math.prod(d for d in self.shape if d != -1)
        if any(d is None for d in rest):
            if -1 not in self.shape:
                raise ctx.mismatch(f"known sizes to reshape to {fmt_shape(self.shape)}", f"shape {fmt_shape(shape)}")
            return (shape[0],) + tuple(None if d == -1 else d for d in self.shape), {}
        size = math.prod(rest)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ctx.mismatch(f"{'a multiple of ' if -1 in self.shape else ''}{known} elements per example to reshape "
                               f"to {fmt_shape(self.shape)}", f"shape {fmt_shape(shape)} ({size} elements)")
        return (shape[0],) + tuple(size // known if d == -1 else d for d in self.shape), {}


@dataclass(frozen=True, eq=False, repr=False)
class Permute(Leaf):
    """Permutes the non-batch axes, numbered from 1 as in Keras: ``Permute((2, 1))`` swaps the last two."""

    dims: Any
    accepts: ClassVar[str] = "any"

    def validate(self) -> None:
        dims = tuple(self.dims) if isinstance(self.dims, (list, tuple)) else None
        ints = dims is not None and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        if not ints or not dims or sorted(dims) != list(range(1, len(dims) + 1)):
            raise SpecError(f"Permute: dims must be a permutation of 1..n. Received: dims={show(self.dims)}")
        object.__setattr__(self, "dims", dims)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) != len(self.dims) + 1:
            raise ctx.mismatch(f"a rank-{len(self.dims) + 1} input", f"shape {fmt_shape(shape)}")
        return (shape[0],) + tuple(shape[d] for d in self.dims), {}


@dataclass(frozen=True, eq=False, repr=False)
class Scale(Leaf):
    """Multiplies by a constant (d2l scales embeddings by ``sqrt(num_hiddens)``)."""

    factor: float

    def validate(self) -> None:
        check_float("Scale", "factor", self.factor, -math.inf, math.inf, lo_open=True, hi_open=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class Take(Leaf):
    """Selects one index along an axis (``X[:, 0]`` for a class token; ``-1`` the last): the axis disappears."""

    index: int
    _: KW_ONLY
    axis: int = 1
    accepts: ClassVar[str] = "any"

    def validate(self) -> None:
        check_int("Take", "index", self.index, minimum=-MAX_INT)
        check_int("Take", "axis", self.axis)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) <= self.axis:
            raise ctx.mismatch(f"an input with axis {self.axis}", f"shape {fmt_shape(shape)}")
        size = shape[self.axis]
        if size is not None and not -size <= self.index < size:
            need = self.index + 1 if self.index >= 0 else -self.index
            raise ctx.mismatch(f"more than {need - 1} entries on axis {self.axis} (index {self.index})",
                               f"shape {fmt_shape(shape)}")
        return shape[:self.axis] + shape[self.axis + 1:], {}


@dataclass(frozen=True, eq=False, repr=False)
class OneHot(Leaf):
    """Integer indices -> one-hot float vectors of ``num_classes`` (d2l's RNN language models)."""

    num_classes: int
    accepts: ClassVar[str] = "int"

    def validate(self) -> None:
        check_int("OneHot", "num_classes", self.num_classes)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape + (self.num_classes,), {}

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        # PyTorch's one_hot makes int64 only; the float32 output is a cast of it
        return (Buffer("one-hot as int64 before the float32 cast", out, itemsize=8),)


SEQUENCE_LAYERS = (RNN, GRU, LSTM, MultiHeadAttention, PositionalEncoding, ClassToken, PositionEmbedding, Reshape,
                   Permute, Scale, Take, OneHot)
