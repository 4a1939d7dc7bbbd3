"""Leaf layers without a window: normalization, dropout, reshaping, activations and embedding, each with its
shape rule beside its fields (see :mod:`deferinit.layers`, which exports them all).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from .errors import SpecError, fmt_shape
from .layers_base import Leaf, ParamSpec, RuleContext
from .spec import ACTIVATIONS, Shape, check_activation, check_float, check_int, show

__all__ = ["BatchNorm", "LayerNorm", "Dropout", "Flatten", "Identity", "Activation", "ReLU", "Sigmoid", "Tanh",
           "GELU", "Softmax", "Embedding"]


@dataclass(frozen=True, eq=False, repr=False)
class BatchNorm(Leaf):
    """Batch normalization over the channel axis; ``momentum`` as in PyTorch (weight of the new batch)."""

    _: KW_ONLY
    eps: float = 1e-5
    momentum: float = 0.1
    fan_name: ClassVar[str] = "channels"

    def validate(self) -> None:
        check_float("BatchNorm", "eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)
        check_float("BatchNorm", "momentum", self.momentum, 0.0, 1.0, lo_open=False, hi_open=False)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (2, 3, 4, 5), "(batch, channels, ...)")
        c = ctx.known(shape, ctx.channel_axis(len(shape)), "the channels")
        return shape, {
            "weight": ParamSpec((c,), role="scale"),
            "bias": ParamSpec((c,), role="shift"),
            "running_mean": ParamSpec((c,), trainable=False, role="mean"),
            "running_var": ParamSpec((c,), trainable=False, role="var"),
        }


@dataclass(frozen=True, eq=False, repr=False)
class LayerNorm(Leaf):
    """Layer normalization over one axis, with a learned scale and shift along it: ``axis=-1`` the last (the
    default), an int, or ``"channels"``: the data format's channel axis (ConvNeXt's LayerNorm2d on channels-first
    images, without a Permute)."""

    _: KW_ONLY
    eps: float = 1e-5
    axis: Any = -1

    def validate(self) -> None:
        check_float("LayerNorm", "eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)
        if self.axis != "channels" and (not isinstance(self.axis, int) or isinstance(self.axis, bool)):
            raise SpecError(f"LayerNorm: axis must be an int or 'channels'. Received: axis={show(self.axis)}")

    def resolved_axis(self, rank: int, data_format: str) -> int:
        """The normalized axis, from 0, of a rank-``rank`` input (assumed valid: the rule checks it)."""
        if self.axis == "channels":
            return 1 if (data_format == "channels_first" or rank == 2) else rank - 1
        return int(self.axis) % rank

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, ..., features)", f"shape {fmt_shape(shape)}")
        if self.axis != "channels" and not (-len(shape) <= self.axis < len(shape) and self.axis % len(shape)):
            raise ctx.mismatch(f"an axis other than the batch axis for axis={self.axis}",
                               f"shape {fmt_shape(shape)} (rank {len(shape)})")
        axis = self.resolved_axis(len(shape), ctx.data_format)
        c = ctx.known(shape, axis, "the normalized axis")
        return shape, {"weight": ParamSpec((c,), role="scale"), "bias": ParamSpec((c,), role="shift")}


@dataclass(frozen=True, eq=False, repr=False)
class Dropout(Leaf):
    """Zeroes a fraction ``rate`` of the inputs in training; the identity in inference."""

    rate: float
    accepts: ClassVar[str] = "any"

    def validate(self) -> None:
        check_float("Dropout", "rate", self.rate, 0.0, 1.0, lo_open=False, hi_open=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class Flatten(Leaf):
    """Flattens every axis but the first, in the data format's own order."""

    accepts: ClassVar[str] = "any"

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 1:
            raise ctx.mismatch("an input with a batch axis", f"shape {fmt_shape(shape)}")
        rest = shape[1:]
        size = None if any(d is None for d in rest) else math.prod(rest)
        return (shape[0], size), {}


@dataclass(frozen=True, eq=False, repr=False)
class Identity(Leaf):
    """Returns its input."""

    accepts: ClassVar[str] = "any"

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class Activation(Leaf):
    """An element-wise activation by name (``softmax`` acts on the last axis)."""

    activation: str

    def validate(self) -> None:
        check_activation("Activation", self.activation, optional=False)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


def _named_activation(act: str, doc: str) -> type:
    @dataclass(frozen=True, eq=False, repr=False)
    class _Named(Leaf):
        __doc__ = doc

        @property
        def activation(self) -> str:
            return act

        def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
            return shape, {}

    return _Named


ReLU = _named_activation("relu", "``max(x, 0)``.")
Sigmoid = _named_activation("sigmoid", "``1 / (1 + exp(-x))``.")
Tanh = _named_activation("tanh", "Hyperbolic tangent.")
Softmax = _named_activation("softmax", "Softmax over the last axis.")
for _cls, _n in ((ReLU, "ReLU"), (Sigmoid, "Sigmoid"), (Tanh, "Tanh"), (Softmax, "Softmax")):
    _cls.__name__ = _cls.__qualname__ = _n


@dataclass(frozen=True, eq=False, repr=False)
class GELU(Leaf):
    """GELU: ``approximate="none"`` the exact erf form (PyTorch's default), ``"tanh"`` the tanh form
    (PyTorch's ``approximate="tanh"``, Flax's default; the activation name ``"gelu_tanh"``)."""

    _: KW_ONLY
    approximate: str = "none"

    def validate(self) -> None:
        if self.approximate not in ("none", "tanh"):
            raise SpecError(f"GELU: approximate must be 'none' or 'tanh'. Received: approximate={show(self.approximate)}")

    @property
    def activation(self) -> str:
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


assert set(ACTIVATIONS) >= {"relu", "sigmoid", "tanh", "gelu", "softmax"}


@dataclass(frozen=True, eq=False, repr=False)
class Embedding(Leaf):
    """A lookup table: integer indices of any shape -> ``shape + (dim,)``; weight ``(num_embeddings, dim)``."""

    num_embeddings: int
    dim: int
    accepts: ClassVar[str] = "int"

    def validate(self) -> None:
        check_int("Embedding", "num_embeddings", self.num_embeddings)
        check_int("Embedding", "dim", self.dim)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 1:
            raise ctx.mismatch("integer indices with a batch axis", f"shape {fmt_shape(shape)}")
        return shape + (self.dim,), {"weight": ParamSpec((self.num_embeddings, self.dim), role="embedding")}
