"""The Keras layers of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Keras's own.

``keras.layers.Conv2DTranspose``/``Conv1DTranspose`` (the gradient of a convolution, as PyTorch's ConvTranspose;
kernel ``(*kernel, out, in)``, the canonical ``(in, out, *kernel)`` read backwards: layout kind ``conv``) have
only ``"valid"``/``"same"`` padding, so PyTorch's ``padding=p``/``output_padding=op`` cannot be expressed: the
layer runs ``"valid"`` with ``output_padding = max(op - p, 0)`` (Keras's output is then
``(in-1)*stride + dilation*(k-1) + 1 + that``) and its output is cropped by ``p`` before and
``max(p - op, 0)`` after each spatial dim, which is PyTorch's output. Keras has no ``groups`` here, and its
``output_padding`` must be smaller than the stride, nor does it take stride and dilation both above 1:
those cases are refused by name at compile time.

``Upsample2D`` is ``keras.layers.UpSampling2D(interpolation=...)``: nearest repeats pixels; bilinear goes through
``tf.image.resize`` (``antialias`` irrelevant when enlarging), whose half-pixel centres are PyTorch's
``align_corners=False`` (checked against hand-derived numbers in tests/backends/tensorflow/test_up_tensorflow.py).
"""

from __future__ import annotations

from typing import Any

from ... import extend
from ...errors import UnsupportedLayerError, where
from ...layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
from ...shapes import Node

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
# isort: on

from . import nan as kn
from . import params
from .modules import spatial_axes

register = extend.register_builder
params.PARAMS[Conv1DTranspose] = (("weight", "kernel", params.CONV), ("bias", "bias", params.SAME))
params.PARAMS[Conv2DTranspose] = (("weight", "kernel", params.CONV), ("bias", "bias", params.SAME))


class _CropMixin:
    """Keras's ``valid`` transposed convolution, its output cropped by ``crops[i] = (before, after)``."""

    def __init__(self, *, crops: tuple, **kwargs: Any) -> None:
        super().__init__(padding="valid", **kwargs)  # type: ignore[call-arg]
        self.crops = tuple(crops)

    def _crop(self, y: Any) -> Any:
        if not any(a or b for a, b in self.crops):
            return y
        index = [slice(None)] * len(y.shape)
        for axis, (a, b) in zip(spatial_axes(len(y.shape), self.data_format), self.crops):  # type: ignore[attr-defined]
            index[axis] = slice(a, (-b) or None)
        return y[tuple(index)]

    def call(self, inputs: Any) -> Any:
        act, self.activation = self.activation, None  # type: ignore[has-type]
        try:
            y = super().call(inputs)  # type: ignore[misc]
        finally:
            self.activation = act
        y = self._crop(y)
        return act(y) if act is not None else y

    def compute_output_shape(self, input_shape: Any) -> Any:
        out = list(super().compute_output_shape(input_shape))  # type: ignore[misc]
        for axis, (a, b) in zip(spatial_axes(len(out), self.data_format), self.crops):  # type: ignore[attr-defined]
            if out[axis] is not None:
                out[axis] -= a + b
        return tuple(out)


class Conv1DTransposeCropped(_CropMixin, keras.layers.Conv1DTranspose):  # type: ignore[misc]
    pass


class Conv2DTransposeCropped(_CropMixin, keras.layers.Conv2DTranspose):  # type: ignore[misc]
    pass


@register("tensorflow", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    here = where(node.path, s, "tensorflow")
    if s.groups > 1:
        raise UnsupportedLayerError(f"{here}: expected groups=1 (Keras's {type(s).__name__} has no groups), "
                                    f"received groups={s.groups}")
    if max(s.stride) > 1 and max(s.dilation) > 1:
        raise UnsupportedLayerError(f"{here}: expected stride 1 or dilation 1 (Keras's transposed convolutions refuse "
                                    f"both above 1), received stride={s.stride}, dilation={s.dilation}")
    extra = tuple(max(op - p, 0) for p, op in zip(s.padding, s.output_padding))
    if any(e >= st for e, st in zip(extra, s.stride)):
        raise UnsupportedLayerError(f"{here}: expected output_padding - padding smaller than stride (Keras's "
                                    f"output_padding limit), received padding={s.padding}, "
                                    f"output_padding={s.output_padding}, stride={s.stride}")
    crops = tuple((p, max(p - op, 0)) for p, op in zip(s.padding, s.output_padding))
    cls = Conv1DTransposeCropped if isinstance(s, Conv1DTranspose) else Conv2DTransposeCropped
    return cls(filters=s.channels, kernel_size=s.kernel_size, strides=s.stride, output_padding=extra,
               dilation_rate=s.dilation, activation=kn.activation(s.activation), use_bias=s.use_bias,
               data_format=fmt, crops=crops, name=node.path)


@register("tensorflow", Upsample2D)
def _upsample(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    return keras.layers.UpSampling2D(size=tuple(s.scale_factor), data_format=fmt, interpolation=s.mode,
                                     name=node.path)
