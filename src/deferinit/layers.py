"""Leaf layers, each with its shape rule beside its fields.

A rule ``infer(shape, ctx)`` takes the input shape (a tuple whose dims may be ``None`` where they vary)
and returns the output shape and the parameters, in canonical names and layouts (those of ONNX and
PyTorch: Dense ``(out, in)``, Conv ``(out, in // groups, *kernel)``). These rules are the framework-free
truth every adapter is tested against. Arithmetic is floor-mode ("ceil-free") as in PyTorch, Keras, Flax
and Gluon defaults.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from .errors import SpecError, fmt_shape
from .layers_base import Buffer, ParamSpec, RuleContext, conv_pads
from .layers_base import Leaf as Leaf
from .layers_base import _bool_error as _bool_error
from .layers_base import _layer_name as _layer_name
from .layers_base import _padded as _padded
from .layers_base import _spatial_axes as _spatial_axes
from .layers_base import _window_out as _window_out
from .layers_base import check_kind as check_kind
from .layers_norm import (
    GELU,
    Activation,
    BatchNorm,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .spec import Shape, check_activation, check_int, check_tuple

__all__ = [
    "ParamSpec", "Buffer", "RuleContext", "Dense", "Conv1D", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "BatchNorm", "LayerNorm", "Dropout", "Flatten", "Identity", "Activation", "ReLU", "Sigmoid", "Tanh",
    "GELU", "Softmax", "Embedding", "conv_pads",
]


# --------------------------------------------------------------------------------------------- leaf layers
# Leaf and the rule helpers are in layers_base.py; normalization, activations, reshaping and embedding in
# layers_norm.py. Dense, convolution and pooling, which share the window arithmetic, are here.


@dataclass(frozen=True, eq=False, repr=False)
class Dense(Leaf):
    """A fully connected layer acting on the last axis: ``y = x @ W.T + b``, ``W`` of shape ``(units, in)``."""

    units: int
    _: KW_ONLY
    activation: str | None = None
    use_bias: bool = True
    in_features: int | None = None

    def validate(self) -> None:
        check_int("Dense", "units", self.units)
        check_activation("Dense", self.activation)
        check_int("Dense", "in_features", self.in_features, optional=True)
        if not isinstance(self.use_bias, bool):
            raise _bool_error("Dense", self.use_bias)

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, ..., features)", f"shape {fmt_shape(shape)}")
        fan_in = ctx.known(shape, -1, "the input features")
        ctx.check_declared("in_features", self.in_features, fan_in)
        params = {"weight": ParamSpec((self.units, fan_in))}
        if self.use_bias:
            params["bias"] = ParamSpec((self.units,), role="bias")
        return shape[:-1] + (self.units,), params


def check_conv_fields(layer: Any, name: str) -> None:
    """The fields every convolution and transposed convolution shares: groups, in_channels, activation,
    use_bias, and groups dividing both channel counts."""
    check_int(name, "groups", layer.groups)
    check_int(name, "in_channels", layer.in_channels, optional=True)
    check_activation(name, layer.activation)
    if not isinstance(layer.use_bias, bool):
        raise _bool_error(name, layer.use_bias)
    if layer.channels % layer.groups:
        raise SpecError(f"{name}: groups must divide channels. Received: channels={layer.channels}, "
                        f"groups={layer.groups}")
    if layer.in_channels is not None and layer.in_channels % layer.groups:
        raise SpecError(f"{name}: groups must divide in_channels. Received: in_channels={layer.in_channels}, "
                        f"groups={layer.groups}")


def conv_input(layer: Any, shape: Shape, ctx: RuleContext) -> tuple[int, int, int]:
    """A convolution's input checked (rank, declared in_channels, channels divisible by groups): its rank, channel
    axis and channel count."""
    rank = layer.ndim + 2
    ctx.need_rank(shape, (rank,), f"(batch, channels, {layer.ndim} spatial dims in {ctx.data_format} order)")
    c_axis = ctx.channel_axis(rank)
    c_in = ctx.known(shape, c_axis, "the input channels")
    ctx.check_declared("in_channels", layer.in_channels, c_in)
    if c_in % layer.groups:
        raise ctx.mismatch(f"input channels divisible by groups={layer.groups}", f"{c_in} channels")
    return rank, c_axis, c_in


@dataclass(frozen=True, eq=False, repr=False)
class _ConvND(Leaf):
    channels: int
    kernel_size: Any
    _: KW_ONLY
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    activation: str | None = None
    use_bias: bool = True
    in_channels: int | None = None

    ndim: ClassVar[int] = 2
    fan_name: ClassVar[str] = "input channels per group"

    def validate(self) -> None:
        name, n = _layer_name(self), self.ndim
        check_int(name, "channels", self.channels)
        object.__setattr__(self, "kernel_size", check_tuple(name, "kernel_size", self.kernel_size, n))
        object.__setattr__(self, "stride", check_tuple(name, "stride", self.stride, n))
        object.__setattr__(self, "dilation", check_tuple(name, "dilation", self.dilation, n))
        if self.padding not in ("same", "valid"):
            object.__setattr__(self, "padding", check_tuple(name, "padding", self.padding, n, minimum=0))
        check_conv_fields(self, name)

    def pads(self, spatial: Shape) -> tuple[tuple[int, int], ...]:
        """Resolved (before, after) padding per spatial dim for an input of these spatial sizes."""
        return tuple(conv_pads(size, self.kernel_size[i], self.stride[i], self.dilation[i],
                               self.padding if isinstance(self.padding, str) else self.padding[i])
                     for i, size in enumerate(spatial))

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        rank, c_axis, c_in = conv_input(self, shape, ctx)
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(rank)):
            pad = self.padding if isinstance(self.padding, str) else self.padding[i]
            out[axis] = _window_out(ctx, shape, axis, self.kernel_size[i], self.stride[i], self.dilation[i], pad)
        out[c_axis] = self.channels
        params = {"weight": ParamSpec((self.channels, c_in // self.groups) + tuple(self.kernel_size))}
        if self.use_bias:
            params["bias"] = ParamSpec((self.channels,), role="bias")
        return tuple(out), params

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        axes = _spatial_axes(len(shape), data_format)
        return _padded(shape, axes, self.pads(tuple(shape[a] for a in axes)))


@dataclass(frozen=True, eq=False, repr=False)
class Conv1D(_ConvND):
    """1-D convolution over ``(N, C, L)`` (channels_first) or ``(N, L, C)``; weight ``(out, in // groups, k)``."""

    ndim: ClassVar[int] = 1


@dataclass(frozen=True, eq=False, repr=False)
class Conv2D(_ConvND):
    """2-D convolution; weight ``(out, in // groups, kh, kw)`` (OIHW)."""

    ndim: ClassVar[int] = 2


@dataclass(frozen=True, eq=False, repr=False)
class _Pool2D(Leaf):
    pool_size: Any
    _: KW_ONLY
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False

    def validate(self) -> None:
        name = _layer_name(self)
        for field in ("ceil_mode", "count_include_pad"):
            if not isinstance(getattr(self, field, False), bool):
                raise SpecError(f"{name}: {field} must be True or False. Received: {field}={getattr(self, field)!r}")
        object.__setattr__(self, "pool_size", check_tuple(name, "pool_size", self.pool_size, 2))
        if self.stride is not None:
            object.__setattr__(self, "stride", check_tuple(name, "stride", self.stride, 2))
        object.__setattr__(self, "padding", check_tuple(name, "padding", self.padding, 2, minimum=0))
        for p, k in zip(self.padding, self.pool_size):
            if 2 * p > k:  # PyTorch's limit; beyond it a window could hold only padding
                    raise SpecError(f"{name}: padding must be at most half of pool_size. Received: "
                                f"pool_size={self.pool_size}, padding={self.padding}")

    @property
    def strides(self) -> tuple[int, int]:
        strides: tuple[int, int] = self.stride if self.stride is not None else self.pool_size
        return strides

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(4)):
            out[axis] = _window_out(ctx, shape, axis, self.pool_size[i], self.strides[i], 1, self.padding[i])
            if self.ceil_mode and out[axis] is not None:  # PyTorch's ceil mode (see layers_extra.pool_out)
                from .layers_extra import pool_out

                out[axis] = pool_out(shape[axis], self.pool_size[i], self.strides[i], self.padding[i], True)
        return tuple(out), {}

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        return _padded(shape, _spatial_axes(4, data_format), tuple((p, p) for p in self.padding))


@dataclass(frozen=True, eq=False, repr=False)
class MaxPool2D(_Pool2D):
    """Max pooling (padding counts as -inf); ``stride`` defaults to ``pool_size``; ``ceil_mode`` as PyTorch's."""


@dataclass(frozen=True, eq=False, repr=False)
class AvgPool2D(_Pool2D):
    """Average pooling with PyTorch's ``ceil_mode`` and ``count_include_pad`` (by default padded zeros are counted
    in the average; a ceil-mode window hanging past the padding is not)."""

    _: KW_ONLY
    count_include_pad: bool = True


@dataclass(frozen=True, eq=False, repr=False)
class GlobalAvgPool2D(Leaf):
    """Mean over both spatial dims: ``(N, C, H, W) -> (N, C)``; with ``keepdims=True`` the spatial dims stay as
    ones, ``(N, C, 1, 1)`` (``(N, 1, 1, C)`` channels-last), ready to gate the input (squeeze-and-excitation)."""

    _: KW_ONLY
    keepdims: bool = False

    def validate(self) -> None:
        if not isinstance(self.keepdims, bool):
            raise SpecError(f"GlobalAvgPool2D: keepdims must be True or False. Received: keepdims={self.keepdims!r}")

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        if any(shape[a] == 0 for a in ctx.spatial_axes(4)):
            raise ctx.mismatch("non-empty spatial dims", f"shape {fmt_shape(shape)}")
        if self.keepdims:
            return tuple(1 if a in ctx.spatial_axes(4) else d for a, d in enumerate(shape)), {}
        return (shape[0], shape[ctx.channel_axis(4)]), {}
