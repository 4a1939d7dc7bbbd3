"""The torch builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), torch's own
modules: ``nn.LazyConvTranspose1d``/``nn.LazyConvTranspose2d``, whose weight ``(in, out // groups, *kernel)`` is
the canonical layout."""

from __future__ import annotations

from typing import Any

from torch import nn

from ... import extend
from ...layers_up import Conv1DTranspose, Conv2DTranspose
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
