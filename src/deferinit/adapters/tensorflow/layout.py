"""Channels-last runs: one transpose in and one out for a whole run of channels-first layers, not two per conv.

Where TensorFlow has no NCHW convolution kernel (its own CPU kernels take NHWC only, see
``modules.transpose_channels_first``), each channels_first convolution runs channels_last between two transposes,
and Keras does the same around each channels_first pooling. A hand-written Keras model for such a machine takes
the NCHW data, permutes it once to NHWC and runs every layer channels_last (``bench/native_tensorflow.py``). This
module lets a compiled spec do the same: a container (``Seq``) runs each maximal run of layers that can work on
channels-last data between ONE transpose in (at the first layer that would transpose anyway: a convolution or a
pooling) and ONE transpose back (before the first layer that cannot, a ``Flatten`` say, or at the end). Measured with
``bench/run.py`` on the 2-core CI machine (TensorFlow 2.21, no NCHW kernel), against a hand-written model that
permutes once: LeNet's forward at batch 1 went from 1.51x to 1.06x, ResNet-18's from 1.30x to 1.03x.

Each layer keeps its spec layout; only its call changes. What runs channels-last here (``kind``):

* starts a run: the adapter's convolutions (``modules.Conv1D``/``Conv2D``, groups, dilation, explicit pads),
  transposed convolutions (``up.py``) and poolings (``MaxPool2D``, NaN-keeping or not, ``AvgPool2D``);
* continues one: batch norm (its channel axis moved last), global average pooling, element-wise activations
  (not softmax: it has an axis), identity, dropout, stochastic depth, adaptive average pooling to 1x1, and the
  containers (``Seq``, ``Residual``,
  ``Concat`` on any axis, ``Add``/``Multiply``) whose children all can;
* anything else ends the run (its data is transposed back first), so every other layer sees exactly the data it
  sees without this module.

The values are the same ops on permuted data: the same convolution kernel (channels_last, as before), the same
element-wise arithmetic; only batch norm's training-mode statistics sum in another order (last-bit
differences). It is off while a recorder observes shapes (``apply_init`` notes every layer's output in the spec's
layout) and for symbolic (``KerasTensor``) calls; ``ENABLED = False`` (environment
``DEFERINIT_TF_CHANNELS_LAST_RUNS=0``) turns it off, and a test runs models both ways and compares.
"""

from __future__ import annotations

import os
from typing import Any

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops
# isort: on

from . import extra_layers as el
from . import modules as kl
from . import nan as kn

__all__ = ["ENABLED", "applies", "run", "to_last", "to_first"]

ENABLED = os.environ.get("DEFERINIT_TF_CHANNELS_LAST_RUNS", "1") != "0"

START, CONTINUE = 2, 1  # a layer's kind; 0: cannot run channels-last

#: activations that act element by element (Keras's and the adapter's functions, by ``__name__``)
ELEMENTWISE = frozenset({"relu", "relu6", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "swish", "elu", "selu",
                         "leaky_relu", "hard_sigmoid", "hard_swish", "hard_silu", "softplus", "softsign", "mish",
                         "linear", "exponential"})


def to_last(x: Any) -> Any:
    """``(N, C, *spatial)`` -> ``(N, *spatial, C)``; data of rank 2 or less is its own channels-last form."""
    rank = len(x.shape)
    return x if rank < 3 else ops.transpose(x, (0,) + tuple(range(2, rank)) + (1,))


def to_first(x: Any) -> Any:
    rank = len(x.shape)
    return x if rank < 3 else ops.transpose(x, (0, rank - 1) + tuple(range(1, rank - 1)))


def _elementwise(fn: Any) -> bool:
    return fn is None or getattr(fn, "__name__", None) in ELEMENTWISE


def kind(layer: Any) -> int:
    """START, CONTINUE or 0 for one layer (0 until built; cached on a built one: its type and config decide)."""
    cached = layer.__dict__.get("_deferinit_cl_kind")
    if cached is None:
        cached = _kind(layer)
        if getattr(layer, "built", False):  # an unbuilt layer's 0 is not its answer once Keras has built it
            layer.__dict__["_deferinit_cl_kind"] = cached
    return int(cached)


def _kind(layer: Any) -> int:
    from . import containers as kc
    from . import up

    if not getattr(layer, "built", False) or getattr(layer, "compute_dtype", "float32") != "float32":
        return 0
    first = getattr(layer, "data_format", "channels_first") == "channels_first"
    if isinstance(layer, kl._ConvMixin):
        return START if first and _elementwise(layer.activation) else 0  # type: ignore[attr-defined]
    if isinstance(layer, up._CropMixin):
        return START if first and _elementwise(layer.activation) else 0  # type: ignore[attr-defined]
    if isinstance(layer, kl._PadPoolMixin) and type(layer) in (kl.MaxPool2D, kl.AvgPool2D, kn.MaxPool2D):
        return START if first else 0
    if isinstance(layer, kl.BatchNorm):
        return CONTINUE if layer.axis == 1 and not layer.renorm and not layer.synchronized else 0
    if type(layer) is keras.layers.GlobalAveragePooling2D:
        return CONTINUE if first else 0
    if type(layer) is keras.layers.Activation:
        return CONTINUE if _elementwise(layer.activation) else 0
    if type(layer) in (keras.layers.Identity, keras.layers.Dropout, el.DropPath):
        return CONTINUE
    if type(layer) is el.AdaptiveAvgPool2D:  # to 1x1: a global average pooling (squeeze-and-excitation blocks)
        return CONTINUE if first and tuple(layer.output_size) == (1, 1) else 0
    if isinstance(layer, kc.Seq):
        children: list = list(layer.layers)
    elif isinstance(layer, kc.Residual):
        if not _elementwise(layer.activation):
            return 0
        children = [layer.body] + ([layer.shortcut] if layer.shortcut is not None else [])
    elif isinstance(layer, kc.Concat) and type(layer) in (kc.Concat, kc.Merge):
        children = list(layer.branches)
    else:
        return 0
    kinds = [kind(child) for child in children]
    return 0 if not kinds or 0 in kinds else max(kinds)


def applies(x: Any) -> bool:
    """Whether a container's call may use channels-last runs: eager or traced data (not symbolic), no recorder
    observing shapes, and a TensorFlow whose convolutions must transpose channels_first data."""
    from . import containers as kc

    return (ENABLED and kc._active() is None and not isinstance(x, keras.KerasTensor)
            and x.dtype == "float32" and kl.transpose_channels_first())


def run(layers: Any, x: Any, training: Any) -> Any:
    """``layers`` one after another on channels-first ``x``, each run of channels-last layers between one
    transpose in and one out."""
    last = False
    for layer in layers:
        k = kind(layer)
        if k == START or (k == CONTINUE and last):
            if not last:
                x, last = to_last(x), True
            x = call_last(layer, x, training)
            if len(x.shape) < 3:
                last = False  # (N, C) reads the same either way
        else:
            if last:
                x, last = to_first(x), False
            x = kl.call_layer(layer, x, training)
    return to_first(x) if last else x


def _axis_last(axis: int, rank: int) -> int:
    """Where a channels-first axis is in the channels-last form of data of ``rank``."""
    axis %= rank
    return axis if rank < 3 or axis == 0 else rank - 1 if axis == 1 else axis - 1


def call_last(layer: Any, x: Any, training: Any) -> Any:
    """``layer`` (a kind START or CONTINUE) on channels-last ``x``: the channels-last form of its output."""
    from . import containers as kc
    from . import up

    if isinstance(layer, kl._ConvMixin):
        return layer._forward(x, "channels_last")
    if isinstance(layer, kl._PadPoolMixin):
        return layer._forward(x, "channels_last")
    if isinstance(layer, up._CropMixin):
        return layer._forward_last(x)
    if isinstance(layer, kl.BatchNorm):
        return layer._forward(x, training, -1)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return ops.mean(x, axis=[1, 2], keepdims=layer.keepdims)
    if isinstance(layer, el.AdaptiveAvgPool2D):
        return ops.mean(x, axis=[1, 2], keepdims=True)
    if isinstance(layer, el.DropPath):  # one mask value per sample: the same draw on either layout
        return layer(x, training=training)
    if isinstance(layer, keras.layers.Activation):
        return layer.activation(x)
    if isinstance(layer, keras.layers.Dropout):  # in training, the mask drawn exactly as without this module
        return to_last(layer(to_first(x), training=True)) if training else x
    if isinstance(layer, keras.layers.Identity):
        return x
    if isinstance(layer, kc.Seq):
        for child in layer.layers:
            x = call_last(child, x, training)
        return x
    if isinstance(layer, kc.Residual):
        y = call_last(layer.body, x, training)
        return layer.combine(y, call_last(layer.shortcut, x, training) if layer.shortcut is not None else x)
    if isinstance(layer, kc.Merge):
        return layer.combine([call_last(b, x, training) for b in layer.branches])
    if isinstance(layer, kc.Concat):
        outs = [call_last(b, x, training) for b in layer.branches]
        return ops.concatenate(outs, axis=_axis_last(layer.axis, len(outs[0].shape)))
    raise AssertionError(f"{type(layer).__name__} has no channels-last call")  # kind() said it had
