"""The Keras layers of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Keras's own.

``keras.layers.Conv2DTranspose``/``Conv1DTranspose`` (the gradient of a convolution, as PyTorch's ConvTranspose;
kernel ``(*kernel, out, in)``, the canonical ``(in, out, *kernel)`` read backwards: layout kind ``conv``) have
only ``"valid"``/``"same"`` padding, so PyTorch's ``padding=p``/``output_padding=op`` cannot be expressed: the
layer runs ``"valid"`` with ``output_padding = max(op - p, 0)`` (Keras's output is then
``(in-1)*stride + dilation*(k-1) + 1 + that``) and its output is cropped by ``p`` before and
``max(p - op, 0)`` after each spatial dim, which is PyTorch's output. Keras's ``output_padding`` must be smaller
than the stride, nor does it take stride and dilation both above 1: those cases are refused by name at compile
time. Keras has no ``groups`` here: with ``groups > 1`` the layer keeps Keras's own kernel (``(*kernel,
out // groups, in)``, built with ``filters = out // groups``), runs ``keras.ops.conv_transpose`` once per group on
its slice of the input channels and kernel, concatenates the groups' outputs and adds a bias of all ``out``.

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
from .modules import spatial_axes, transpose_channels_first

register = extend.register_builder
params.PARAMS[Conv1DTranspose] = (("weight", "kernel", params.CONV), ("bias", "bias", params.SAME))
params.PARAMS[Conv2DTranspose] = (("weight", "kernel", params.CONV), ("bias", "bias", params.SAME))


class _CropMixin:
    """Keras's ``valid`` transposed convolution, its output cropped by ``crops[i] = (before, after)``."""

    def __init__(self, *, crops: tuple, **kwargs: Any) -> None:
        super().__init__(padding="valid", **kwargs)  # type: ignore[call-arg]
        self.crops = tuple(crops)

    def _crop(self, y: Any, fmt: str | None = None) -> Any:
        if not any(a or b for a, b in self.crops):
            return y
        index = [slice(None)] * len(y.shape)
        for axis, (a, b) in zip(spatial_axes(len(y.shape), fmt or self.data_format), self.crops):  # type: ignore[attr-defined]
            index[axis] = slice(a, (-b) or None)
        return y[tuple(index)]

    def _forward_last(self, x: Any) -> Any:
        """A channels_first layer on channels-last data (inside a channels-last run, ``layout.py``)."""
        y = self._crop(self._conv_last(x), "channels_last")
        return self.activation(y) if self.activation is not None else y  # type: ignore[has-type]

    def call(self, inputs: Any) -> Any:
        if self.data_format == "channels_first" and transpose_channels_first():  # type: ignore[attr-defined]
            y = self._nchw_by_nhwc(inputs)  # no NCHW kernel here (oneDNN off): as the convolutions do
        else:
            act, self.activation = self.activation, None  # type: ignore[has-type]
            try:
                y = super().call(inputs)  # type: ignore[misc]
            finally:
                self.activation = act
        y = self._crop(y)
        return self.activation(y) if self.activation is not None else y  # type: ignore[has-type]

    def _nchw_by_nhwc(self, inputs: Any) -> Any:
        """Channels-first data through TensorFlow's NHWC-only CPU kernel, between two transposes (see
        modules.transpose_channels_first); with groups, each group's transposed conv the same way."""
        rank = len(inputs.shape)
        x = keras.ops.transpose(inputs, (0,) + tuple(range(2, rank)) + (1,))
        return keras.ops.transpose(self._conv_last(x), (0, rank - 1) + tuple(range(1, rank - 1)))

    def _conv_last(self, x: Any) -> Any:
        """The transposed convolution (and bias) of channels-last ``x`` by TensorFlow's NHWC kernel."""
        groups = getattr(self, "groups", 1)
        per = x.shape[-1] // groups
        kernel = self.kernel  # type: ignore[attr-defined]
        outs = [keras.ops.conv_transpose(
            x[..., g * per:(g + 1) * per] if groups > 1 else x, kernel[..., g * per:(g + 1) * per] if groups > 1
            else kernel, strides=self.strides, padding="valid", output_padding=self.output_padding,  # type: ignore[attr-defined]
            data_format="channels_last", dilation_rate=self.dilation_rate) for g in range(groups)]  # type: ignore[attr-defined]
        y = keras.ops.concatenate(outs, axis=-1) if groups > 1 else outs[0]
        bias = getattr(self, "bias", None)
        return y + bias if bias is not None else y

    def compute_output_shape(self, input_shape: Any) -> Any:
        out = list(super().compute_output_shape(input_shape))  # type: ignore[misc]
        for axis, (a, b) in zip(spatial_axes(len(out), self.data_format), self.crops):  # type: ignore[attr-defined]
            if out[axis] is not None:
                out[axis] -= a + b
        return tuple(out)


class _GroupedMixin(_CropMixin):
    """``groups > 1``: ``filters`` is one group's outputs; the bias (all ``channels``) is this layer's own."""

    def __init__(self, *, groups: int, channels: int, use_bias: bool, **kwargs: Any) -> None:
        super().__init__(use_bias=False, **kwargs)
        self.groups, self.channels, self.grouped_bias = groups, channels, use_bias

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)  # type: ignore[misc]
        if self.grouped_bias:
            self.bias = self.add_weight(name="bias", shape=(self.channels,),  # type: ignore[attr-defined]
                                        initializer=self.bias_initializer, trainable=True)  # type: ignore[attr-defined]

    def call(self, inputs: Any) -> Any:
        fmt: str = self.data_format  # type: ignore[attr-defined]
        if fmt == "channels_first" and transpose_channels_first():
            return _CropMixin.call(self, inputs)
        axis = 1 if fmt == "channels_first" else len(inputs.shape) - 1
        per = inputs.shape[axis] // self.groups
        kernel = self.kernel  # type: ignore[attr-defined]
        outs = [keras.ops.conv_transpose(
            keras.ops.take(inputs, list(range(g * per, (g + 1) * per)), axis=axis), kernel[..., g * per:(g + 1) * per],
            strides=self.strides, padding="valid", output_padding=self.output_padding,  # type: ignore[attr-defined]
            data_format=fmt, dilation_rate=self.dilation_rate) for g in range(self.groups)]  # type: ignore[attr-defined]
        y = keras.ops.concatenate(outs, axis=axis)
        if self.grouped_bias:
            shape = [1] * len(y.shape)
            shape[axis] = self.channels
            y = y + keras.ops.reshape(self.bias, shape)  # type: ignore[attr-defined]
        y = self._crop(y)
        act = self.activation  # type: ignore[has-type]
        return act(y) if act is not None else y

    def compute_output_shape(self, input_shape: Any) -> Any:
        out = list(super().compute_output_shape(input_shape))
        out[1 if self.data_format == "channels_first" else -1] = self.channels  # type: ignore[attr-defined]
        return tuple(out)


class Conv1DTransposeCropped(_CropMixin, keras.layers.Conv1DTranspose):  # type: ignore[misc]
    pass


class Conv2DTransposeCropped(_CropMixin, keras.layers.Conv2DTranspose):  # type: ignore[misc]
    pass


class Conv1DTransposeGrouped(_GroupedMixin, keras.layers.Conv1DTranspose):  # type: ignore[misc]
    pass


class Conv2DTransposeGrouped(_GroupedMixin, keras.layers.Conv2DTranspose):  # type: ignore[misc]
    pass


@register("tensorflow", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    here = where(node.path, s, "tensorflow")
    if max(s.stride) > 1 and max(s.dilation) > 1:
        raise UnsupportedLayerError(f"{here}: expected stride 1 or dilation 1 (Keras's transposed convolutions refuse "
                                    f"both above 1), received stride={s.stride}, dilation={s.dilation}")
    extra = tuple(max(op - p, 0) for p, op in zip(s.padding, s.output_padding))
    if any(e >= st for e, st in zip(extra, s.stride)):
        raise UnsupportedLayerError(f"{here}: expected output_padding - padding smaller than stride (Keras's "
                                    f"output_padding limit), received padding={s.padding}, "
                                    f"output_padding={s.output_padding}, stride={s.stride}")
    crops = tuple((p, max(p - op, 0)) for p, op in zip(s.padding, s.output_padding))
    one = isinstance(s, Conv1DTranspose)
    common = dict(kernel_size=s.kernel_size, strides=s.stride, output_padding=extra, dilation_rate=s.dilation,
                  activation=kn.activation(s.activation), data_format=fmt, crops=crops, name=node.path)
    if s.groups > 1:
        grouped = Conv1DTransposeGrouped if one else Conv2DTransposeGrouped
        return grouped(filters=s.channels // s.groups, groups=s.groups, channels=s.channels, use_bias=s.use_bias,
                       **common)
    cls = Conv1DTransposeCropped if one else Conv2DTransposeCropped
    return cls(filters=s.channels, use_bias=s.use_bias, **common)


@register("tensorflow", Upsample2D)
def _upsample(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    return keras.layers.UpSampling2D(size=tuple(s.scale_factor), data_format=fmt, interpolation=s.mode,
                                     name=node.path)
