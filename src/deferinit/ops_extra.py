"""NumPy kernels of the reference forward for the layers of :mod:`deferinit.layers_extra` (and the activations
``relu6``, ``hard_swish``, ``hard_sigmoid``, ``leaky_relu`` and ``gelu_tanh``), channels-first, float32 in and
out (float64 when given float64), written from the formulas, not from any framework.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .layers_extra import pool_out
from .ops import float_type

__all__ = ["activation_extra", "relu6", "leaky_relu", "gelu_tanh", "pool2d", "pool_out", "adaptive_bins",
           "adaptive_avg_pool2d", "group_norm", "layer_norm_axis", "last_step"]


def relu6(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.minimum(np.maximum(x, x.dtype.type(0)), x.dtype.type(6))
    return out


def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, x * x.dtype.type(slope)).astype(x.dtype)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, computed in float64."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(x.dtype)


def activation_extra(name: str, x: np.ndarray) -> np.ndarray:
    out: np.ndarray
    if name == "relu6":
        return relu6(x)
    if name == "hard_sigmoid":  # relu6(x + 3) / 6 (PyTorch's Hardsigmoid; Keras 2's 0.2 x + 0.5 is another function)
        out = (relu6(x.astype(np.float64) + 3.0) / 6.0).astype(x.dtype)
        return out
    if name == "hard_swish":
        x64 = x.astype(np.float64)
        out = (x64 * relu6(x64 + 3.0) / 6.0).astype(x.dtype)
        return out
    if name == "leaky_relu":
        return leaky_relu(x, 0.01)
    if name == "gelu_tanh":
        return gelu_tanh(x)
    raise ValueError(name)  # pragma: no cover - names are validated by the spec


def pool2d(x: np.ndarray, kind: str, size: tuple[Any, ...], stride: tuple[Any, ...], padding: tuple[Any, ...],
           ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """2-D max or average pooling of channels-first ``x`` with PyTorch's semantics, window by window: a window
    covers ``[o*s - p, o*s - p + k)`` clipped to ``[-p, size + p)``; padding is -inf for max; an average divides
    by the clipped window's size (``count_include_pad``) or by the number of real pixels in it."""
    n, c, h, w = x.shape
    oh, ow = (pool_out(d, size[i], stride[i], padding[i], ceil_mode) for i, d in enumerate((h, w)))
    out = np.zeros((n, c, oh, ow), float_type(x))
    for i in range(oh):
        h0 = i * stride[0] - padding[0]
        h1 = min(h0 + size[0], h + padding[0])
        for j in range(ow):
            w0 = j * stride[1] - padding[1]
            w1 = min(w0 + size[1], w + padding[1])
            win = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            if kind == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                count = (h1 - h0) * (w1 - w0) if count_include_pad else win.shape[2] * win.shape[3]
                out[:, :, i, j] = win.sum(axis=(2, 3), dtype=np.float64) / count
    return out


def pool_divisor(spatial: tuple[int, int], size: tuple[Any, ...], stride: tuple[Any, ...],
                 padding: tuple[Any, ...], ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """``(out_h, out_w)`` float64: what each average pooling window divides by, as :func:`pool2d`."""
    outs = [pool_out(d, size[i], stride[i], padding[i], ceil_mode) for i, d in enumerate(spatial)]
    per_axis = []
    for i, d in enumerate(spatial):
        counts = []
        for o in range(outs[i]):
            lo = o * stride[i] - padding[i]
            hi = min(lo + size[i], d + padding[i])
            counts.append(hi - lo if count_include_pad else min(hi, d) - max(lo, 0))
        per_axis.append(np.array(counts, np.float64))
    return np.outer(per_axis[0], per_axis[1])


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool2d(x: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros((n, c) + tuple(output_size), float_type(x))
    for i, (h0, h1) in enumerate(adaptive_bins(h, output_size[0])):
        for j, (w0, w1) in enumerate(adaptive_bins(w, output_size[1])):
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=np.float64)
    return out


def group_norm(x: np.ndarray, groups: int, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Channels-first ``x`` (N, C, ...): mean and (biased) variance per sample and group of C // groups
    channels, then a per-channel scale and shift."""
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1).astype(np.float64)
    y = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = y.reshape(x.shape) * weight.reshape(shape) + bias.reshape(shape)
    out: np.ndarray = y.astype(float_type(x, weight))
    return out


def layer_norm_axis(x: np.ndarray, axis: int, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Layer normalization over the single axis ``axis``, scale and shift along it."""
    mean = x.mean(axis=axis, keepdims=True, dtype=np.float64)
    var = x.var(axis=axis, keepdims=True, dtype=np.float64)
    shape = [1] * x.ndim
    shape[axis] = -1
    y = (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)
    out: np.ndarray = y.astype(float_type(x, weight))
    return out


def last_step(y: np.ndarray, directions: int) -> np.ndarray:
    """``(N, T, H * directions) -> (N, H * directions)``: the forward direction's output at the last step and the
    backward direction's at the first (its last), as Keras's ``return_sequences=False``."""
    h = y.shape[-1] // directions
    parts = [y[:, -1, :h]] + ([y[:, 0, h:]] if directions == 2 else [])
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))
