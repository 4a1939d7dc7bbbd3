"""Layers that grow the spatial dims (decoders, U-Net): transposed convolutions and upsampling, each with its shape
rule beside its fields. The reference kernels are in :mod:`deferinit.ops_up`; each backend's builders in
``deferinit/adapters/<backend>/up.py``. ``GlobalAvgPool2D(keepdims=True)`` is a field of that layer itself.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from .errors import SpecError
from .layers import check_conv_fields, conv_input
from .layers_base import Leaf, ParamSpec, RuleContext, _layer_name
from .spec import Shape, check_int, check_tuple

__all__ = ["Conv1DTranspose", "Conv2DTranspose", "Upsample2D", "UP_LAYERS", "transpose_out"]


def transpose_out(size: int, k: int, s: int, p: int, op: int, d: int) -> int:
    """PyTorch's ConvTranspose output size: ``(size - 1) * s - 2 p + d (k - 1) + op + 1``."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


@dataclass(frozen=True, eq=False, repr=False)
class _ConvTransposeND(Leaf):
    channels: int
    kernel_size: Any
    _: KW_ONLY
    stride: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    activation: str | None = None
    use_bias: bool = True
    in_channels: int | None = None

    ndim: ClassVar[int] = 2
    fan_name: ClassVar[str] = "input channels"

    def validate(self) -> None:
        name, n = _layer_name(self), self.ndim
        check_int(name, "channels", self.channels)
        for field in ("kernel_size", "stride", "dilation"):
            object.__setattr__(self, field, check_tuple(name, field, getattr(self, field), n))
        for field in ("padding", "output_padding"):  # PyTorch's: ints only (no "same"/"valid")
            object.__setattr__(self, field, check_tuple(name, field, getattr(self, field), n, minimum=0))
        check_conv_fields(self, name)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):  # PyTorch's limit: more would only add rows no input reaches
                raise SpecError(f"{name}: output_padding must be smaller than stride or dilation. Received: "
                                f"output_padding={self.output_padding}, stride={self.stride}, "
                                f"dilation={self.dilation}")

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        rank, c_axis, c_in = conv_input(self, shape, ctx)
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(rank)):
            size = shape[axis]
            if size is None:
                continue
            o = transpose_out(size, self.kernel_size[i], self.stride[i], self.padding[i], self.output_padding[i],
                              self.dilation[i])
            if size < 1 or o < 1:
                raise ctx.mismatch(f"a positive output size on axis {axis} ((in-1)*stride - 2*padding + "
                                   f"dilation*(kernel-1) + output_padding + 1)", f"in={size}, giving {o}",
                                   "use a smaller padding")
            out[axis] = o
        out[c_axis] = self.channels
        params = {"weight": ParamSpec((c_in, self.channels // self.groups) + tuple(self.kernel_size))}
        if self.use_bias:
            params["bias"] = ParamSpec((self.channels,), role="bias")
        return tuple(out), params


@dataclass(frozen=True, eq=False, repr=False)
class Conv1DTranspose(_ConvTransposeND):
    """1-D transposed convolution (PyTorch's ConvTranspose1d); weight ``(in, out // groups, k)``."""

    ndim: ClassVar[int] = 1


@dataclass(frozen=True, eq=False, repr=False)
class Conv2DTranspose(_ConvTransposeND):
    """2-D transposed convolution (PyTorch's ConvTranspose2d, ONNX's ConvTranspose); weight
    ``(in, out // groups, kh, kw)``; output ``(in-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``."""

    ndim: ClassVar[int] = 2


@dataclass(frozen=True, eq=False, repr=False)
class Upsample2D(Leaf):
    """Upsampling by whole factors (``scale_factor``: int or ``(sh, sw)``), PyTorch's ``nn.Upsample``:
    ``mode="nearest"`` repeats each pixel, ``"bilinear"`` interpolates with half-pixel centres
    (``align_corners=False``: output pixel ``o`` samples the input at ``(o + 0.5) / scale - 0.5``, clamped at 0,
    the last input pixel repeated past the end)."""

    scale_factor: Any
    _: KW_ONLY
    mode: str = "nearest"

    MODES: ClassVar[tuple[str, ...]] = ("nearest", "bilinear")

    def validate(self) -> None:
        object.__setattr__(self, "scale_factor", check_tuple("Upsample2D", "scale_factor", self.scale_factor, 2))
        if self.mode not in self.MODES:
            raise SpecError(f"Upsample2D: mode must be one of {', '.join(map(repr, self.MODES))}. Received: "
                            f"mode={self.mode!r}")

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        ctx.need_rank(shape, (4,), f"(batch, channels, height, width in {ctx.data_format} order)")
        out = list(shape)
        for i, axis in enumerate(ctx.spatial_axes(4)):
            if shape[axis] == 0:
                raise ctx.mismatch("non-empty spatial dims", f"shape {shape}")
            out[axis] = None if shape[axis] is None else shape[axis] * self.scale_factor[i]
        return tuple(out), {}


UP_LAYERS: tuple[type, ...] = (Conv1DTranspose, Conv2DTranspose, Upsample2D)


def _register() -> None:
    from .serialize import LAYER_TYPES

    for cls in UP_LAYERS:
        LAYER_TYPES[cls.__name__] = cls


_register()
