"""Leaf layers, each with its shape rule beside its fields.

A rule ``infer(shape, ctx)`` takes the input shape (a tuple whose dims may be ``None`` where they vary)
and returns the output shape and the parameters, in canonical names and layouts (those of ONNX and
PyTorch: Dense ``(out, in)``, Conv ``(out, in // groups, *kernel)``). These rules are the framework-free
truth every adapter is tested against. Arithmetic is floor-mode ("ceil-free") as in PyTorch, Keras, Flax
and Gluon defaults.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, NamedTuple

from .errors import DTypeError, ShapeMismatchError, SpecError, fmt_shape, where
from .spec import ACTIVATIONS, Layer, check_activation, check_float, check_int, check_tuple, show

__all__ = [
    "ParamSpec", "Buffer", "RuleContext", "Dense", "Conv1D", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "BatchNorm", "LayerNorm", "Dropout", "Flatten", "Identity", "Activation", "ReLU", "Sigmoid", "Tanh",
    "GELU", "Softmax", "Embedding", "conv_pads",
]


class ParamSpec(NamedTuple):
    """A parameter as the rules see it. ``role`` tells initializers what it is."""

    shape: tuple[int, ...]
    trainable: bool = True
    role: str = "kernel"  # kernel | bias | scale | shift | mean | var | embedding


class Buffer(NamedTuple):
    """A tensor a layer holds besides its parameters, input and output, for the memory estimate
    (:mod:`deferinit.resources`): ``resident`` tables live as long as the model, workspace while the layer runs."""

    what: str
    shape: tuple[int, ...]
    resident: bool = False
    itemsize: int = 4


class RuleContext:
    """What a rule needs besides its input shape: where it is (for errors) and the data format."""

    __slots__ = ("path", "layer", "data_format", "backend")

    def __init__(self, path: str, layer: Layer, data_format: str, backend: str | None = None) -> None:
        self.path, self.layer, self.data_format, self.backend = path, layer, data_format, backend

    def mismatch(self, expected: str, received: str, hint: str = "") -> ShapeMismatchError:
        msg = f"{where(self.path, self.layer, self.backend)} expected {expected}, received {received}"
        return ShapeMismatchError(msg + (f"; {hint}" if hint else ""))

    def channel_axis(self, rank: int) -> int:
        return 1 if (self.data_format == "channels_first" or rank == 2) else rank - 1

    def spatial_axes(self, rank: int) -> tuple[int, ...]:
        return tuple(range(2, rank)) if self.data_format == "channels_first" else tuple(range(1, rank - 1))

    def need_rank(self, shape: tuple, ranks: tuple[int, ...], what: str) -> None:
        if len(shape) not in ranks:
            names = " or ".join(str(r) for r in ranks)
            raise self.mismatch(f"a rank-{names} input {what}", f"shape {fmt_shape(shape)} (rank {len(shape)})")

    def known(self, shape: tuple, axis: int, what: str) -> int:
        """A dim that a parameter depends on: it must be concrete."""
        dim = shape[axis]
        if dim is None:
            raise self.mismatch(f"a known size for {what} (axis {axis % len(shape)}), since parameters depend on it",
                                f"shape {fmt_shape(shape)} with that dim None",
                                "give that dim a concrete size")
        return dim

    def check_declared(self, field: str, declared: int | None, actual: int) -> None:
        if declared is not None and declared != actual:
            raise self.mismatch(f"{field}={declared} (declared in the spec)", f"{actual}")


def conv_pads(size: int | None, kernel: int, stride: int, dilation: int, padding: Any) -> tuple[int, int]:
    """(before, after) padding of one spatial dim. ``"same"`` follows TensorFlow: ``out = ceil(size / stride)``,
    the odd pixel going after; for stride 1 that is PyTorch's ``padding='same'`` too."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        eff = dilation * (kernel - 1) + 1
        if size is None:
            total = eff - 1 if stride == 1 else None
            if total is None:  # depends on the size; the output dim is None anyway
                return 0, 0
        else:
            out = -(-size // stride)
            total = max((out - 1) * stride + eff - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def _window_out(ctx: RuleContext, shape: tuple, axis: int, kernel: int, stride: int, dilation: int,
                padding: Any) -> int | None:
    size = shape[axis]
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    before, after = conv_pads(size, kernel, stride, dilation, padding)
    eff = dilation * (kernel - 1) + 1
    if size + before + after < eff:
        raise ctx.mismatch(f"spatial size >= {eff} on axis {axis} (the {'dilated ' if dilation > 1 else ''}window, "
                           f"after padding {before}+{after})", f"shape {fmt_shape(shape)}",
                           "use a larger input or a smaller kernel/stride")
    return (size + before + after - eff) // stride + 1


def _bool_error(layer: str, value: Any) -> SpecError:
    return SpecError(f"{layer}: use_bias must be True or False. Received: use_bias={show(value)}")


def _layer_name(layer: Layer) -> str:
    return type(layer).__name__


# --------------------------------------------------------------------------------------------- leaf layers
@dataclass(frozen=True, eq=False, repr=False)
class Leaf(Layer):
    accepts: ClassVar[str] = "float"  # float | int | any: the input dtype kind the layer takes
    fan_name: ClassVar[str] = "input features"  # what the input dim its parameters depend on is called

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        raise NotImplementedError

    def buffers(self, shape: tuple, out: tuple, data_format: str) -> tuple[Buffer, ...]:
        """What the layer allocates beyond its output for an input of ``shape`` (concrete dims): none for most."""
        return ()


def _spatial_axes(rank: int, data_format: str) -> tuple[int, ...]:
    return tuple(range(2, rank)) if data_format == "channels_first" else tuple(range(1, rank - 1))


def _padded(shape: tuple, axes: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> tuple[Buffer, ...]:
    """The zero-padded copy of the input that explicit padding costs (TensorFlow pads in a layer of its own)."""
    if not any(a or b for a, b in pads):
        return ()
    full = list(shape)
    for axis, (a, b) in zip(axes, pads):
        full[axis] += a + b
    return (Buffer("zero-padded copy of the input", tuple(full)),)


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

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, ..., features)", f"shape {fmt_shape(shape)}")
        fan_in = ctx.known(shape, -1, "the input features")
        ctx.check_declared("in_features", self.in_features, fan_in)
        params = {"weight": ParamSpec((self.units, fan_in))}
        if self.use_bias:
            params["bias"] = ParamSpec((self.units,), role="bias")
        return shape[:-1] + (self.units,), params


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
        check_int(name, "groups", self.groups)
        check_int(name, "in_channels", self.in_channels, optional=True)
        check_activation(name, self.activation)
        if not isinstance(self.use_bias, bool):
            raise _bool_error(name, self.use_bias)
        if self.channels % self.groups:
            raise SpecError(f"{name}: groups must divide channels. Received: channels={self.channels}, "
                            f"groups={self.groups}")
        if self.in_channels is not None and self.in_channels % self.groups:
            raise SpecError(f"{name}: groups must divide in_channels. Received: in_channels={self.in_channels}, "
                            f"groups={self.groups}")

    def pads(self, spatial: tuple) -> tuple[tuple[int, int], ...]:
        """Resolved (before, after) padding per spatial dim for an input of these spatial sizes."""
        return tuple(conv_pads(size, self.kernel_size[i], self.stride[i], self.dilation[i],
                               self.padding if isinstance(self.padding, str) else self.padding[i])
                     for i, size in enumerate(spatial))

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        rank = self.ndim + 2
        ctx.need_rank(shape, (rank,), f"(batch, channels, {self.ndim} spatial dims in {ctx.data_format} order)")
        c_axis = ctx.channel_axis(rank)
        c_in = ctx.known(shape, c_axis, "the input channels")
        ctx.check_declared("in_channels", self.in_channels, c_in)
        if c_in % self.groups:
            raise ctx.mismatch(f"input channels divisible by groups={self.groups}", f"{c_in} channels")
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(rank)):
            pad = self.padding if isinstance(self.padding, str) else self.padding[i]
            out[axis] = _window_out(ctx, shape, axis, self.kernel_size[i], self.stride[i], self.dilation[i], pad)
        out[c_axis] = self.channels
        params = {"weight": ParamSpec((self.channels, c_in // self.groups) + tuple(self.kernel_size))}
        if self.use_bias:
            params["bias"] = ParamSpec((self.channels,), role="bias")
        return tuple(out), params

    def buffers(self, shape: tuple, out: tuple, data_format: str) -> tuple[Buffer, ...]:
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

    def validate(self) -> None:
        name = _layer_name(self)
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
        return self.stride if self.stride is not None else self.pool_size

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(4)):
            out[axis] = _window_out(ctx, shape, axis, self.pool_size[i], self.strides[i], 1, self.padding[i])
        return tuple(out), {}

    def buffers(self, shape: tuple, out: tuple, data_format: str) -> tuple[Buffer, ...]:
        return _padded(shape, _spatial_axes(4, data_format), tuple((p, p) for p in self.padding))


@dataclass(frozen=True, eq=False, repr=False)
class MaxPool2D(_Pool2D):
    """Max pooling (padding counts as -inf); ``stride`` defaults to ``pool_size``."""


@dataclass(frozen=True, eq=False, repr=False)
class AvgPool2D(_Pool2D):
    """Average pooling; padded zeros are counted in the average (PyTorch's ``count_include_pad=True``)."""


@dataclass(frozen=True, eq=False, repr=False)
class GlobalAvgPool2D(Leaf):
    """Mean over both spatial dims: ``(N, C, H, W) -> (N, C)``."""

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        if any(shape[a] == 0 for a in ctx.spatial_axes(4)):
            raise ctx.mismatch("non-empty spatial dims", f"shape {fmt_shape(shape)}")
        return (shape[0], shape[ctx.channel_axis(4)]), {}


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

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
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
    """Layer normalization over the last axis, with a learned scale and shift."""

    _: KW_ONLY
    eps: float = 1e-5

    def validate(self) -> None:
        check_float("LayerNorm", "eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, ..., features)", f"shape {fmt_shape(shape)}")
        c = ctx.known(shape, -1, "the normalized (last) axis")
        return shape, {"weight": ParamSpec((c,), role="scale"), "bias": ParamSpec((c,), role="shift")}


@dataclass(frozen=True, eq=False, repr=False)
class Dropout(Leaf):
    """Zeroes a fraction ``rate`` of the inputs in training; the identity in inference."""

    rate: float
    accepts: ClassVar[str] = "any"

    def validate(self) -> None:
        check_float("Dropout", "rate", self.rate, 0.0, 1.0, lo_open=False, hi_open=True)

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class Flatten(Leaf):
    """Flattens every axis but the first, in the data format's own order."""

    accepts: ClassVar[str] = "any"

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        if len(shape) < 1:
            raise ctx.mismatch("an input with a batch axis", f"shape {fmt_shape(shape)}")
        rest = shape[1:]
        size = None if any(d is None for d in rest) else math.prod(rest)
        return (shape[0], size), {}


@dataclass(frozen=True, eq=False, repr=False)
class Identity(Leaf):
    """Returns its input."""

    accepts: ClassVar[str] = "any"

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        return shape, {}


@dataclass(frozen=True, eq=False, repr=False)
class Activation(Leaf):
    """An element-wise activation by name (``softmax`` acts on the last axis)."""

    activation: str

    def validate(self) -> None:
        check_activation("Activation", self.activation, optional=False)

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        return shape, {}


def _named_activation(act: str, doc: str) -> type:
    @dataclass(frozen=True, eq=False, repr=False)
    class _Named(Leaf):
        __doc__ = doc

        @property
        def activation(self) -> str:
            return act

        def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
            return shape, {}

    return _Named


ReLU = _named_activation("relu", "``max(x, 0)``.")
Sigmoid = _named_activation("sigmoid", "``1 / (1 + exp(-x))``.")
Tanh = _named_activation("tanh", "Hyperbolic tangent.")
GELU = _named_activation("gelu", "The exact (erf) GELU, as PyTorch's default; Flax's tanh form is not used.")
Softmax = _named_activation("softmax", "Softmax over the last axis.")
for _cls, _n in ((ReLU, "ReLU"), (Sigmoid, "Sigmoid"), (Tanh, "Tanh"), (GELU, "GELU"), (Softmax, "Softmax")):
    _cls.__name__ = _cls.__qualname__ = _n
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

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        if len(shape) < 1:
            raise ctx.mismatch("integer indices with a batch axis", f"shape {fmt_shape(shape)}")
        return shape + (self.dim,), {"weight": ParamSpec((self.num_embeddings, self.dim), role="embedding")}


def check_kind(ctx: RuleContext, layer: Leaf, kind: str) -> None:
    """The dtype kind flowing into ``layer`` (``float`` or ``int``) must be one it accepts."""
    if layer.accepts not in ("any", kind):
        need = "integer indices" if layer.accepts == "int" else "floating-point data"
        raise DTypeError(f"{where(ctx.path, layer, ctx.backend)} expected {need}, received {kind} data")
