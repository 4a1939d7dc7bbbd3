"""The layers everyday architectures need beyond the basic set: more activations (ReLU6, SiLU, HardSwish,
HardSigmoid, LeakyReLU), adaptive average pooling, group normalization, a learned per-channel scale
(ConvNeXt's LayerScale) and stochastic depth (DropPath), each with its shape rule beside its fields.

The reference kernels are in :mod:`deferinit.ops_extra`; each backend's builders in
``deferinit/adapters/<backend>/extra.py``. ``ceil_mode``/``count_include_pad`` of the pools,
``LayerNorm(axis=...)``, ``GELU(approximate=...)`` and ``return_sequences`` of the recurrent layers are fields of
those layers themselves.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from .errors import fmt_shape
from .layers_base import Leaf, ParamSpec, RuleContext
from .layers_norm import _named_activation
from .spec import Shape, check_float, check_int, check_tuple

__all__ = ["ReLU6", "SiLU", "HardSwish", "HardSigmoid", "LeakyReLU", "AdaptiveAvgPool2D", "GroupNorm",
           "LayerScale", "DropPath", "EXTRA_LAYERS", "fill_role", "pool_out"]

ReLU6 = _named_activation("relu6", "``min(max(x, 0), 6)``.")
SiLU = _named_activation("silu", "``x * sigmoid(x)`` (Swish with beta 1).")
HardSwish = _named_activation("hard_swish", "``x * relu6(x + 3) / 6``.")
HardSigmoid = _named_activation("hard_sigmoid", "``relu6(x + 3) / 6`` (PyTorch's Hardsigmoid).")
for _cls, _n in ((ReLU6, "ReLU6"), (SiLU, "SiLU"), (HardSwish, "HardSwish"), (HardSigmoid, "HardSigmoid")):
    _cls.__name__ = _cls.__qualname__ = _n


@dataclass(frozen=True, eq=False, repr=False)
class LeakyReLU(Leaf):
    """``x`` where ``x >= 0``, ``negative_slope * x`` elsewhere (the activation name ``"leaky_relu"`` is slope 0.01)."""

    negative_slope: float = 0.01

    def validate(self) -> None:
        check_float("LeakyReLU", "negative_slope", self.negative_slope, -math.inf, math.inf, lo_open=True,
                    hi_open=True)

    @property
    def activation(self) -> str:
        return "leaky_relu"

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class AdaptiveAvgPool2D(Leaf):
    """Average pooling to a fixed ``output_size`` (int or (h, w)) with PyTorch's bins: output ``i`` of a dim of
    size ``n`` averages ``[floor(i * n / out), ceil((i + 1) * n / out))``."""

    output_size: Any

    def validate(self) -> None:
        object.__setattr__(self, "output_size", check_tuple("AdaptiveAvgPool2D", "output_size", self.output_size, 2))

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(4)):
            if shape[axis] == 0:
                raise ctx.mismatch("non-empty spatial dims", f"shape {fmt_shape(shape)}")
            out[axis] = self.output_size[i]
        return tuple(out), {}


@dataclass(frozen=True, eq=False, repr=False)
class GroupNorm(Leaf):
    """Group normalization: the channels split in ``num_groups`` groups, each normalized per sample over its
    channels and the spatial dims; then a per-channel scale ``weight (C,)`` and shift ``bias (C,)``."""

    num_groups: int
    _: KW_ONLY
    eps: float = 1e-5
    fan_name: ClassVar[str] = "channels"

    def validate(self) -> None:
        check_int("GroupNorm", "num_groups", self.num_groups)
        check_float("GroupNorm", "eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (2, 3, 4, 5), "(batch, channels, ...)")
        c = ctx.known(shape, ctx.channel_axis(len(shape)), "the channels")
        if c % self.num_groups:
            raise ctx.mismatch(f"a channel count divisible by num_groups={self.num_groups}", f"{c} channels",
                               "choose num_groups dividing the channels")
        return shape, {"weight": ParamSpec((c,), role="scale"), "bias": ParamSpec((c,), role="shift")}


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooled size: floor or ceil of ``(size + 2p - k) / s`` plus one; in ceil mode a last window that
    would start in the right padding is dropped."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def fill_role(value: float) -> str:
    """The init role of a parameter that starts filled with ``value`` whatever the initializer
    (see :func:`deferinit.init.generate`)."""
    return f"fill={float(value)!r}"


@dataclass(frozen=True, eq=False, repr=False)
class LayerScale(Leaf):
    """A learned per-channel scale (ConvNeXt, CaiT): ``y = x * weight`` along the channel axis, ``weight (C,)``
    starting at ``init_value`` whatever the initializer."""

    init_value: float = 1e-6
    fan_name: ClassVar[str] = "channels"

    def validate(self) -> None:
        check_float("LayerScale", "init_value", self.init_value, -math.inf, math.inf, lo_open=True, hi_open=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, channels, ...)", f"shape {fmt_shape(shape)}")
        c = ctx.known(shape, ctx.channel_axis(len(shape)), "the channels")
        return shape, {"weight": ParamSpec((c,), role=fill_role(self.init_value))}


@dataclass(frozen=True, eq=False, repr=False)
class DropPath(Leaf):
    """Stochastic depth: in training each sample is zeroed with probability ``rate`` (all of it) and the others
    scaled by ``1 / (1 - rate)``; the identity in inference."""

    rate: float

    def validate(self) -> None:
        check_float("DropPath", "rate", self.rate, 0.0, 1.0, lo_open=False, hi_open=True)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 1:
            raise ctx.mismatch("an input with a batch axis", f"shape {fmt_shape(shape)}")
        return shape, {}


EXTRA_LAYERS = (ReLU6, SiLU, HardSwish, HardSigmoid, LeakyReLU, AdaptiveAvgPool2D, GroupNorm, LayerScale, DropPath)


def _register() -> None:
    from .serialize import LAYER_TYPES

    for cls in EXTRA_LAYERS:
        LAYER_TYPES[cls.__name__] = cls


_register()
