# mypy: allow-subclassing-any
"""The Gluon builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Gluon's own blocks:
``nn.Conv1DTranspose``/``nn.Conv2DTranspose`` (MXNet's Deconvolution), whose weight ``(in, out // groups,
*kernel)`` and output size are PyTorch's, the canonical ones. ``Upsample2D``: nearest is ``repeat`` on each
spatial axis (MXNet's ``UpSampling`` takes one scale for both); bilinear is MXNet's own
``contrib.BilinearResize2D(align_corners=False)``, which has PyTorch's half-pixel centres (checked against
hand-derived numbers in tests/backends/mxnet/test_up_mxnet.py)."""

from __future__ import annotations

from typing import Any

from mxnet import gluon
from mxnet.gluon import nn

from ...errors import UnsupportedLayerError
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
from . import modules
from .leaves import Built, _params, _split_activation, _then


class _GroupedDeferred:
    """A grouped ``Conv*Transpose`` whose input channels Gluon defers. MXNet cannot build one (its Deconvolution
    shape rule fails on ``in_channels=0`` with ``num_group > 1``: "input num_filter must divide group size"), so
    the block is constructed ungrouped and given its groups after; at the first forward, Gluon's deferred init
    asks ``infer_shape`` for the weight, which is ``(in, out // groups, *kernel)`` with ``in`` read off the
    input MXNet passes (the shape the Deconvolution operator then checks against the data when it runs)."""

    def __init__(self, channels: int, kernel_size: Any, *, groups: int, **kwargs: Any) -> None:
        super().__init__(channels, kernel_size, groups=1, **kwargs)  # type: ignore[call-arg]
        self._kwargs["num_group"] = groups  # type: ignore[attr-defined]
        self.weight._shape = (0, channels // groups, *self._kwargs["kernel"])  # type: ignore[attr-defined]

    def infer_shape(self, x: Any, *args: Any) -> None:
        kw = self._kwargs  # type: ignore[attr-defined]
        self.weight.shape = (x.shape[1], self._channels // kw["num_group"], *kw["kernel"])  # type: ignore[attr-defined]


class _GroupedConv1DTranspose(_GroupedDeferred, nn.Conv1DTranspose):
    pass


class _GroupedConv2DTranspose(_GroupedDeferred, nn.Conv2DTranspose):
    pass


@register_builder("mxnet", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(layer: Any, fmt: str) -> Built:
    if any(op >= s for op, s in zip(layer.output_padding, layer.stride)):
        raise UnsupportedLayerError(f"expected output_padding smaller than stride (MXNet's Deconvolution limit), "
                                    f"received output_padding={layer.output_padding}, stride={layer.stride}")
    own, after = _split_activation(layer.activation)
    cls, layout = (nn.Conv1DTranspose, "NCW") if layer.ndim == 1 else (nn.Conv2DTranspose, "NCHW")
    if layer.groups > 1 and layer.in_channels is None:
        cls = _GroupedConv1DTranspose if layer.ndim == 1 else _GroupedConv2DTranspose
    conv = cls(layer.channels, layer.kernel_size, strides=layer.stride, padding=layer.padding,
               output_padding=layer.output_padding, dilation=layer.dilation, groups=layer.groups, layout=layout,
               activation=own, use_bias=layer.use_bias, in_channels=layer.in_channels or 0)
    block: Any = conv
    if fmt == "channels_last":  # MXNet's CPU Deconvolution computes channels-first only
        block = modules.ChannelsFirst(block, layer.ndim)
    return _then(block, after), _params(conv, weight="weight", bias="bias" if layer.use_bias else None)


class Upsample(gluon.HybridBlock):
    """Channels-first upsampling by whole factors: each pixel repeated, or bilinear with half-pixel centres."""

    def __init__(self, scale: tuple, mode: str) -> None:
        super().__init__()
        self.scale, self.mode = tuple(int(s) for s in scale), mode

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        if self.mode == "bilinear":
            return F.contrib.BilinearResize2D(x, scale_height=float(self.scale[0]), scale_width=float(self.scale[1]),
                                              align_corners=False)
        for axis, s in ((2, self.scale[0]), (3, self.scale[1])):
            if s > 1:
                x = F.repeat(x, repeats=s, axis=axis)
        return x


@register_builder("mxnet", Upsample2D)
def _upsample(layer: Upsample2D, fmt: str) -> Built:
    block: Any = Upsample(layer.scale_factor, layer.mode)
    return (modules.ChannelsFirst(block, 2) if fmt == "channels_last" else block), {}
