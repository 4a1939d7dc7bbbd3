"""Keras layers for what Keras has no layer or option for (built by ``extra.py``): PyTorch's ceil-mode pooling
and ``count_include_pad=False``, each a stock Keras pooling layer with explicit padding around it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops
# isort: on

from ...layers_extra import pool_out
from ...ops_extra import adaptive_bins, pool_divisor
from .modules import _pad, spatial_axes

__all__ = ["MaxPool2DExtra", "AvgPool2DExtra", "AdaptiveAvgPool2D", "LayerScale", "DropPath"]


class _PoolExtraMixin:
    """Keras's ``valid`` pooling of the input padded by ``p`` before and ``p + e`` after each spatial dim, ``e``
    the overhang of PyTorch's ceil mode; the output cut to PyTorch's size. An average is Keras's (over the whole
    window) times the window's size, divided by what PyTorch divides by (:func:`deferinit.ops_extra.pool_divisor`,
    a constant of the input's static spatial size)."""

    fill: float = 0.0

    def __init__(self, *, pads: tuple, ceil_mode: bool, count_include_pad: bool = True, **kwargs: Any) -> None:
        super().__init__(padding="valid", **kwargs)  # type: ignore[call-arg]
        self.spec_pads, self.ceil_mode, self.count_include_pad = tuple(pads), ceil_mode, count_include_pad

    def _geometry(self, shape: tuple) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]]:
        sizes = [shape[a] for a in spatial_axes(4, self.data_format)]  # type: ignore[attr-defined]
        outs, pads = [], []
        for i, n in enumerate(sizes):
            k, s, p = self.pool_size[i], self.strides[i], self.spec_pads[i]  # type: ignore[attr-defined]
            o = pool_out(n, k, s, p, self.ceil_mode)
            outs.append(o)
            pads.append((p, p + max((o - 1) * s + k - (n + 2 * p), 0)))
        return (outs[0], outs[1]), tuple(pads)

    def _crop(self, y: Any, outs: tuple[int, int]) -> Any:
        if self.data_format == "channels_first":  # type: ignore[attr-defined]
            return y[:, :, :outs[0], :outs[1]]
        return y[:, :outs[0], :outs[1], :]

    def compute_output_shape(self, input_shape: Any) -> Any:
        outs, _ = self._geometry(tuple(input_shape))
        if self.data_format == "channels_first":  # type: ignore[attr-defined]
            return (input_shape[0], input_shape[1]) + outs
        return (input_shape[0],) + outs + (input_shape[3],)


class MaxPool2DExtra(_PoolExtraMixin, keras.layers.MaxPooling2D):  # type: ignore[misc]
    """Padding is -inf; ``0 * clip(average)`` keeps a window's NaN, as ``nan.MaxPool2D`` does."""

    def call(self, inputs: Any) -> Any:
        outs, pads = self._geometry(tuple(inputs.shape))
        y = super().call(_pad(inputs, pads, self.data_format, -math.inf))
        mean = ops.average_pool(_pad(inputs, pads, self.data_format), self.pool_size, strides=self.strides,
                                padding="valid", data_format=self.data_format)
        return self._crop(y + 0.0 * ops.clip(mean, -1.0, 1.0), outs)


class AvgPool2DExtra(_PoolExtraMixin, keras.layers.AveragePooling2D):  # type: ignore[misc]
    def call(self, inputs: Any) -> Any:
        outs, pads = self._geometry(tuple(inputs.shape))
        sizes = tuple(inputs.shape[a] for a in spatial_axes(4, self.data_format))
        divisor = pool_divisor(sizes, self.pool_size, self.strides, self.spec_pads, self.ceil_mode,
                               self.count_include_pad)
        scale = (float(np.prod(self.pool_size)) / divisor).astype(np.float32)
        scale = scale[None, None] if self.data_format == "channels_first" else scale[None, :, :, None]
        y = self._crop(super().call(_pad(inputs, pads, self.data_format)), outs)
        return y * ops.convert_to_tensor(scale, dtype=y.dtype)


class AdaptiveAvgPool2D(keras.layers.AdaptiveAveragePooling2D):  # type: ignore[misc]
    """Keras's own adaptive average pooling (PyTorch's bins). Keras pools every dim with two window sizes,
    ``ceil(n / out)`` and one more, and TensorFlow refuses a window longer than the dim when tracing (an output
    of 1, or larger than the input): there the bins are averaged one by one, as PyTorch does."""

    def call(self, inputs: Any) -> Any:
        ha, wa = spatial_axes(4, self.data_format)
        h, w = inputs.shape[ha], inputs.shape[wa]
        oh, ow = self.output_size
        if -(-h // oh) + 1 <= h and -(-w // ow) + 1 <= w:
            return super().call(inputs)
        rows = []
        for h0, h1 in adaptive_bins(h, oh):
            band = inputs[:, :, h0:h1] if ha == 2 else inputs[:, h0:h1]
            cols = [ops.mean(band[:, :, :, w0:w1] if wa == 3 else band[:, :, w0:w1], axis=(ha, wa))
                    for w0, w1 in adaptive_bins(w, ow)]
            rows.append(ops.stack(cols, axis=-1))
        y = ops.stack(rows, axis=-2)  # (N, C, oh, ow)
        return y if self.data_format == "channels_first" else ops.transpose(y, (0, 2, 3, 1))


class LayerScale(keras.layers.Layer):  # type: ignore[misc]
    """``x * scale`` along the channel axis, ``scale (C,)`` starting at ``init_value`` (Keras has no LayerScale
    layer; keras-hub's ConvNeXt writes this one the same way)."""

    def __init__(self, init_value: float, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_value, self.axis = init_value, axis

    def build(self, input_shape: Any) -> None:
        channels = input_shape[self.axis]
        self.scale = self.add_weight(name="scale", shape=(channels,),
                                     initializer=keras.initializers.Constant(self.init_value), trainable=True)

    def call(self, x: Any) -> Any:
        if self.axis in (-1, len(x.shape) - 1):
            return x * self.scale
        return x * ops.reshape(self.scale, (1, -1) + (1,) * (len(x.shape) - 2))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "init_value": self.init_value, "axis": self.axis}


class DropPath(keras.layers.Dropout):  # type: ignore[misc]
    """Stochastic depth as Keras's own Dropout with one mask value per sample: ``noise_shape`` ``(None, 1, ...)``
    (the batch dim filled in by Keras at each call), set once the input's rank is known."""

    def build(self, input_shape: Any) -> None:
        self.noise_shape = (None,) + (1,) * (len(input_shape) - 1)
        super().build(input_shape)
