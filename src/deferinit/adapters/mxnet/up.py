"""The Gluon builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Gluon's own blocks:
``nn.Conv1DTranspose``/``nn.Conv2DTranspose`` (MXNet's Deconvolution), whose weight ``(in, out // groups,
*kernel)`` and output size are PyTorch's, the canonical ones."""

from __future__ import annotations

from typing import Any

from mxnet.gluon import nn

from ...errors import UnsupportedLayerError
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose
from . import modules
from .leaves import Built, _params, _split_activation, _then


@register_builder("mxnet", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(layer: Any, fmt: str) -> Built:
    if any(op >= s for op, s in zip(layer.output_padding, layer.stride)):
        raise UnsupportedLayerError(f"expected output_padding smaller than stride (MXNet's Deconvolution limit), "
                                    f"received output_padding={layer.output_padding}, stride={layer.stride}")
    if layer.groups > 1 and layer.in_channels is None:
        raise UnsupportedLayerError(f"expected in_channels= declared with groups={layer.groups} (MXNet's "
                                    f"Deconvolution infers a grouped weight's shape wrongly), received "
                                    f"in_channels=None")
    own, after = _split_activation(layer.activation)
    cls, layout = (nn.Conv1DTranspose, "NCW") if layer.ndim == 1 else (nn.Conv2DTranspose, "NCHW")
    conv = cls(layer.channels, layer.kernel_size, strides=layer.stride, padding=layer.padding,
               output_padding=layer.output_padding, dilation=layer.dilation, groups=layer.groups, layout=layout,
               activation=own, use_bias=layer.use_bias, in_channels=layer.in_channels or 0)
    block: Any = conv
    if fmt == "channels_last":  # MXNet's CPU Deconvolution computes channels-first only
        block = modules.ChannelsFirst(block, layer.ndim)
    return _then(block, after), _params(conv, weight="weight", bias="bias" if layer.use_bias else None)
