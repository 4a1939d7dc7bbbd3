"""The torch builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), torch's own
modules: ``nn.LazyConvTranspose1d``/``nn.LazyConvTranspose2d``, whose weight ``(in, out // groups, *kernel)`` is
the canonical layout, and ``nn.Upsample`` (bilinear with ``align_corners=False``: half-pixel centres)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ... import extend
from ...layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
from .leaves import _act
from .modules import CF, F32, Step

register = extend.register_builder


@register("torch", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(layer: Any, rank: int | None) -> list[Step]:
    cls = nn.LazyConvTranspose1d if isinstance(layer, Conv1DTranspose) else nn.LazyConvTranspose2d
    conv = cls(layer.channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
               output_padding=layer.output_padding, groups=layer.groups, bias=layer.use_bias,
               dilation=layer.dilation, dtype=F32)
    return [Step("", conv, CF)] + _act(layer.activation)


@register("torch", Upsample2D)
def _upsample(layer: Upsample2D, rank: int | None) -> list[Step]:
    align = False if layer.mode == "bilinear" else None  # torch takes align_corners only for the linear modes
    scale = tuple(float(s) for s in layer.scale_factor)
    return [Step("", nn.Upsample(scale_factor=scale, mode=layer.mode, align_corners=align), CF)]
