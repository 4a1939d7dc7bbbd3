"""Small Keras layers the TensorFlow adapter needs where a stock Keras layer differs from the spec.

Each one is a stock Keras layer with one documented difference, so the native model stays an ordinary
``keras.Model`` that ``summary()``, ``count_params()`` and ``save_weights`` understand (whole-model ``.keras``
saving would need these classes registered with Keras's serializer; they are not). The containers are in
``containers.py``, the NaN-keeping variants in ``nan.py``, the sequence layers in ``sequence.py``.
"""

from __future__ import annotations

import math
from typing import Any

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
import tensorflow as tf
from keras import ops
# isort: on

from ...layers import conv_pads

__all__ = ["Conv1D", "Conv2D", "MaxPool2D", "AvgPool2D", "BatchNorm",
           "spatial_axes", "call_layer", "nchw_runs", "transpose_channels_first"]


#: None: ask TensorFlow once (see ``transpose_channels_first``); tests set True/False to force a path
TRANSPOSE_CF: bool | None = None


def transpose_channels_first() -> bool:
    """Whether channels_first convolutions run as channels_last (a run of them between one transpose in and one
    out, see ``layout.py``).

    On a CPU, yes: TensorFlow's own CPU Conv2D kernel takes only NHWC, and where the oneDNN kernels (on by default
    on x86 Linux) do take NCHW they were 2-3x slower than channels-last on the 2-core CI machine's AMD EPYC
    (2026-12-04, TensorFlow 2.21, deferinit's forwards at batch 1, one process per path: MobileNetV2 32.0 against
    9.9 ms, ResNet-50 43.6 against 20.8, ResNet-18 25.8 against 12.9), and Keras's own models (its applications,
    its default ``image_data_format``) run channels-last there. With a GPU, NCHW runs natively (cuDNN's preferred
    layout): asked of TensorFlow once, with a 1-pixel NCHW convolution, and used where it runs.
    """
    global TRANSPOSE_CF
    if TRANSPOSE_CF is None:
        with tf.init_scope():  # run eagerly even while a tf.function is being traced
            TRANSPOSE_CF = not (bool(tf.config.list_logical_devices("GPU")) and nchw_runs())
    return TRANSPOSE_CF


def nchw_runs() -> bool:
    """Whether this TensorFlow runs an NCHW convolution at all (a 1-pixel one, run eagerly)."""
    with tf.init_scope():
        try:
            tf.nn.conv2d(tf.zeros((1, 1, 1, 1)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
            return True
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            return False


def spatial_axes(rank: int, data_format: str) -> tuple[int, ...]:
    return tuple(range(2, rank)) if data_format == "channels_first" else tuple(range(1, rank - 1))


def call_layer(layer: Any, x: Any, training: Any) -> Any:
    """``layer(x)``, passing ``training`` only to layers whose ``call`` takes it (as keras.Sequential does)."""
    if training is not None and getattr(layer, "_call_has_training_arg", False):
        return layer(x, training=training)
    return layer(x)


def build_child(layer: Any, shape: tuple) -> tuple:
    """Build ``layer`` for inputs of ``shape`` (unless built: a tied layer) and return its output shape.

    Keras's own advice for a container layer: a ``build(input_shape)`` that builds its children, each from the
    shape the previous one gives (Keras's per-layer ``compute_output_shape``). Without it, Keras builds a
    container by tracing its ``call`` in a scratch graph, once per level of nesting (about 1.5x the time of
    the whole dry run for ResNet-18)."""
    if not layer.built:
        layer.build(shape)
    return tuple(layer.compute_output_shape(shape))


def _pad(x: Any, pads: tuple, data_format: str, value: float = 0.0) -> Any:
    if not any(b or a for b, a in pads):
        return x
    width = [[0, 0] for _ in range(len(x.shape))]
    for axis, (before, after) in zip(spatial_axes(len(x.shape), data_format), pads):
        width[axis] = [before, after]
    return ops.pad(x, width, constant_values=value)


def _padded_shape(shape: tuple, pads: tuple, data_format: str) -> tuple:
    out = list(shape)
    for axis, (before, after) in zip(spatial_axes(len(shape), data_format), pads):
        out[axis] = None if out[axis] is None else out[axis] + before + after
    return tuple(out)


# ----------------------------------------------------------------------------------------------- convolution
def _same_at_stride_one(padding: Any, kernel: Any, strides: tuple, dilation: tuple) -> bool:
    """Whether explicit symmetric pads are what TensorFlow's ``same`` pads: at stride 1 it pads
    ``dilation * (kernel - 1)`` in all, the odd pixel after, so pads ``p`` with ``2 p`` equal to that
    (``Conv2D(c, 3, padding=1)``, ResNet's and VGG's) are ``same`` exactly."""
    if isinstance(padding, str) or max(strides) > 1:
        return False
    kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * len(padding)
    return all(2 * p == d * (k - 1) for p, k, d in zip(padding, kernel, dilation))


class _ConvMixin:
    """A Keras conv with the spec's padding and stride/dilation semantics.

    * Integer padding: zeros are padded explicitly, then the conv runs ``valid`` (Keras has only
      ``valid``/``same``). ``same`` is Keras's own (TensorFlow's rule, which the spec uses).
    * ``stride > 1`` together with ``dilation > 1``: Keras refuses the combination (TensorFlow has no kernel
      for it), so the conv runs at stride 1 and every ``stride``-th output is kept. Exact, at ``prod(stride)``
      times the arithmetic of that one layer; for ``same`` the pads of the strided conv are made explicit.
    """

    def __init__(self, *, spec_padding: Any, spec_strides: tuple, **kwargs: Any) -> None:
        dilation = kwargs["dilation_rate"]
        subsample = tuple(spec_strides) if max(spec_strides) > 1 and max(dilation) > 1 else None
        keras_padding = spec_padding if spec_padding in ("same", "valid") and subsample is None else "valid"
        if _same_at_stride_one(spec_padding, kwargs["kernel_size"], spec_strides, dilation):
            keras_padding = "same"  # the same zeros, padded by the conv kernel itself: one op fewer per conv
        super().__init__(strides=1 if subsample else spec_strides, padding=keras_padding,  # type: ignore[call-arg]
                         **kwargs)
        self.subsample = subsample
        self.spec_padding = spec_padding

    def _pads(self, shape: tuple, fmt: str) -> Any:
        """Static (before, after) pads per spatial dim of data in ``fmt``, None for none, or "dynamic" when they
        depend on a spatial size not known while tracing (``same`` with stride and dilation, relaxed shapes)."""
        if self.padding == "same" or self.spec_padding == "valid":  # type: ignore[attr-defined]
            return None
        if self.spec_padding != "same":
            return tuple((p, p) for p in self.spec_padding)
        sizes = [shape[a] for a in spatial_axes(len(shape), fmt)]
        if any(s is None for s in sizes):
            return "dynamic"
        return tuple(conv_pads(s, k, st, d, "same") for s, k, st, d in
                     zip(sizes, self.kernel_size, self.subsample, self.dilation_rate))  # type: ignore[attr-defined,arg-type]

    def _pad_dynamic(self, x: Any, fmt: str) -> Any:
        # TensorFlow's "same" rule with tensors: total = max((ceil(n / s) - 1) * s + eff - n, 0), odd pixel after
        width = [tf.zeros((2,), tf.int32) for _ in range(len(x.shape))]
        size = tf.shape(x)
        for i, axis in enumerate(spatial_axes(len(x.shape), fmt)):
            n, s = size[axis], self.subsample[i]  # type: ignore[index]
            eff = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1  # type: ignore[attr-defined]
            total = tf.maximum(((n + s - 1) // s - 1) * s + eff - n, 0)
            width[axis] = tf.stack([total // 2, total - total // 2])
        return tf.pad(x, tf.stack(width))

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        if self.data_format == "channels_last":  # type: ignore[attr-defined]
            return self._conv_last(inputs, kernel)
        if not transpose_channels_first():
            return super().convolution_op(inputs, kernel)  # type: ignore[misc]
        rank = len(inputs.shape)
        x = ops.transpose(inputs, (0,) + tuple(range(2, rank)) + (1,))
        y = self._conv_last(x, kernel)
        return ops.transpose(y, (0, rank - 1) + tuple(range(1, rank - 1)))

    def _conv_last(self, x: Any, kernel: Any) -> Any:
        groups = self.groups  # type: ignore[attr-defined]
        if groups > 1 and kernel.shape[-2] == 1:
            # depthwise (one input channel per group): TensorFlow's depthwise kernel, as keras.layers.
            # DepthwiseConv2D runs it; the grouped conv kernel took MobileNetV2 to 3.4x Keras's own model. Output
            # channel g * mult + m of the grouped kernel (..., 1, groups * mult) is the depthwise (..., g, m)
            shape = tuple(int(d) for d in kernel.shape)
            kernel = ops.reshape(kernel, shape[:-2] + (groups, shape[-1] // groups))
            return ops.depthwise_conv(x, kernel, strides=tuple(self.strides), padding=self.padding,  # type: ignore[attr-defined]
                                      dilation_rate=self.dilation_rate, data_format="channels_last")  # type: ignore[attr-defined]
        return ops.conv(x, kernel, strides=list(self.strides), padding=self.padding,  # type: ignore[attr-defined]
                        dilation_rate=self.dilation_rate, data_format="channels_last")  # type: ignore[attr-defined]

    def call(self, inputs: Any) -> Any:
        return self._forward(inputs, self.data_format)  # type: ignore[attr-defined]

    def _forward(self, inputs: Any, fmt: str) -> Any:
        """BaseConv.call, written out (keras.layers.Conv1D.call skips convolution_op), on data in ``fmt``: the
        layer's own format, or channels_last for a channels_first layer inside a channels-last run
        (``layout.py``)."""
        pads = self._pads(tuple(inputs.shape), fmt)
        if pads == "dynamic":
            inputs = self._pad_dynamic(inputs, fmt)
        elif pads is not None:
            inputs = _pad(inputs, pads, fmt)
        if fmt == self.data_format:  # type: ignore[attr-defined]
            y = self.convolution_op(inputs, self.kernel)  # type: ignore[attr-defined]
        else:
            y = self._conv_last(inputs, self.kernel)  # type: ignore[attr-defined]
        if self.subsample:
            index = [slice(None)] * len(y.shape)
            for axis, s in zip(spatial_axes(len(y.shape), fmt), self.subsample):
                index[axis] = slice(None, None, s)
            y = y[tuple(index)]
        if self.use_bias:  # type: ignore[attr-defined]
            shape = [1] * len(y.shape)
            shape[1 if fmt == "channels_first" else -1] = self.filters  # type: ignore[attr-defined]
            # tf.add, not keras.ops.add: Keras turns an add of a bias-shaped tensor into tf.nn.bias_add and picks
            # NHWC whenever the last dim equals the channels, so an NCHW output with W == C got its bias gradient
            # summed over the wrong axes (found by the parity session's gradient comparison)
            y = tf.add(y, tf.reshape(self.bias, shape))  # type: ignore[attr-defined]
        return self.activation(y) if self.activation is not None else y  # type: ignore[attr-defined]

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = tuple(input_shape)
        pads = self._pads(shape, self.data_format)  # type: ignore[attr-defined]
        if pads is not None and pads != "dynamic":
            shape = _padded_shape(shape, pads, self.data_format)  # type: ignore[attr-defined]
        out = list(super().compute_output_shape(shape))  # type: ignore[misc]
        if self.subsample:
            for axis, s in zip(spatial_axes(len(out), self.data_format), self.subsample):  # type: ignore[attr-defined]
                out[axis] = None if out[axis] is None else -(-out[axis] // s)
        return tuple(out)


class Conv1D(_ConvMixin, keras.layers.Conv1D):  # type: ignore[misc]
    pass


class Conv2D(_ConvMixin, keras.layers.Conv2D):  # type: ignore[misc]
    pass


# ----------------------------------------------------------------------------------------------- pooling
class _PadPoolMixin:
    """Explicit symmetric padding before a ``valid`` pool: -inf for max pooling (padding never wins), zeros for
    average pooling (counted in the average: PyTorch's ``count_include_pad=True``). Keras's ``same`` pooling
    excludes padding from averages, so it is not used."""

    fill: float = 0.0

    def __init__(self, *, pads: tuple, **kwargs: Any) -> None:
        super().__init__(padding="valid", **kwargs)  # type: ignore[call-arg]
        self.pads = tuple((p, p) for p in pads)

    def call(self, inputs: Any) -> Any:
        return self._forward(inputs, self.data_format)  # type: ignore[attr-defined]

    def _forward(self, inputs: Any, fmt: str) -> Any:
        """Keras's pooling call (``BasePooling.call``) on padded data in ``fmt``: the layer's own format, or
        channels_last for a channels_first layer inside a channels-last run (``layout.py``)."""
        pool = ops.max_pool if self.pool_mode == "max" else ops.average_pool  # type: ignore[attr-defined]
        return pool(_pad(inputs, self.pads, fmt, self.fill), self.pool_size, strides=self.strides,  # type: ignore[attr-defined]
                    padding="valid", data_format=fmt)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return super().compute_output_shape(_padded_shape(tuple(input_shape), self.pads, self.data_format))  # type: ignore[misc,attr-defined]


class MaxPool2D(_PadPoolMixin, keras.layers.MaxPooling2D):  # type: ignore[misc]
    fill = -math.inf


class AvgPool2D(_PadPoolMixin, keras.layers.AveragePooling2D):  # type: ignore[misc]
    fill = 0.0


# ----------------------------------------------------------------------------------------------- batch norm
class BatchNorm(keras.layers.BatchNormalization):  # type: ignore[misc]
    """BatchNormalization whose running variance follows PyTorch's rule.

    Keras normalizes with the biased batch variance (as PyTorch does) but also moves ``moving_variance``
    toward that biased value; the spec (PyTorch) moves it toward the UNBIASED one, ``var * n / (n - 1)``
    with ``n`` the number of values per channel. Only the training-mode update differs, so only that branch
    is rewritten; inference is Keras's own. Keras's ``momentum`` is the weight of the old value
    (``1 - spec momentum``), set by the adapter.
    """

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        return self._forward(inputs, training, self.axis)

    def _forward(self, inputs: Any, training: Any, axis: int) -> Any:
        """Normalize ``inputs`` whose channel axis is ``axis`` (the layer's own, or the last inside a
        channels-last run, ``layout.py``): Keras's inference formula, and in training PyTorch's update rule."""
        x = ops.cast(inputs, backend_float(inputs))
        if training and self.trainable:
            rank = len(x.shape)
            mean, variance = ops.moments(x, axes=[a for a in range(rank) if a != axis % rank])  # biased, centred
            count = ops.cast(tf.size(x) // tf.shape(x)[axis], variance.dtype)
            unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
            self.moving_mean.assign(ops.cast(self.moving_mean, mean.dtype) * self.momentum
                                    + mean * (1.0 - self.momentum))
            self.moving_variance.assign(ops.cast(self.moving_variance, variance.dtype) * self.momentum
                                        + unbiased * (1.0 - self.momentum))
        else:
            mean, variance = ops.cast(self.moving_mean, x.dtype), ops.cast(self.moving_variance, x.dtype)
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        y = ops.batch_normalization(x, mean, variance, axis=axis, offset=beta, scale=gamma,
                                    epsilon=self.epsilon)
        return ops.cast(y, self.compute_dtype)


def backend_float(x: Any) -> str:
    """float32 for float16/bfloat16/float32 data (statistics overflow in half precision), else the dtype."""
    name = keras.backend.standardize_dtype(x.dtype)
    return "float64" if name == "float64" else "float32"
