"""NumPy kernels of the reference forward for the layers of :mod:`deferinit.layers_up`, channels-first, float32
in and out (float64 when given float64), written from the formulas, not from any framework.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .layers_up import transpose_out
from .ops import float_type

__all__ = ["conv_transpose", "upsample2d", "bilinear_taps"]


def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[Any, ...],
                   padding: tuple[Any, ...], output_padding: tuple[Any, ...], dilation: tuple[Any, ...],
                   groups: int) -> np.ndarray:
    """N-d transposed convolution of channels-first ``x`` with weight ``w (in, out // groups, *kernel)``: input
    pixel ``i`` adds ``x[i] * w[j]`` at output ``i * stride + j * dilation - padding`` (the scatter that is the
    gradient of a convolution); ``output_padding`` extends the end of each dim (only the bias reaches it
    where no input does)."""
    n = x.ndim - 2
    batch, c_in = x.shape[:2]
    spatial, kernel = x.shape[2:], w.shape[2:]
    fg = w.shape[1]
    dtype = float_type(x, w)
    # contributions (N, G, Fg, *spatial, *kernel): sum over the group's input channels
    xg = x.reshape((batch, groups, c_in // groups) + spatial).astype(dtype)
    wg = w.reshape((groups, c_in // groups, fg) + kernel).astype(dtype)
    letters = "abcdef"[:n] + "uvwxyz"[:n]
    t = np.einsum(f"ngc{letters[:n]},gco{letters[n:]}->ngo{letters}", xg, wg)
    natural = [(s - 1) * st + d * (k - 1) + 1 for s, st, d, k in zip(spatial, stride, dilation, kernel)]
    full = np.zeros((batch, groups, fg) + tuple(nat + op for nat, op in zip(natural, output_padding)), dtype)
    for offs in itertools.product(*(range(k) for k in kernel)):
        index = (slice(None),) * 3 + tuple(slice(j * d, j * d + (s - 1) * st + 1, st)
                                           for j, d, s, st in zip(offs, dilation, spatial, stride))
        full[index] += t[(Ellipsis,) + offs]
    outs = [transpose_out(s, k, st, p, op, d) for s, k, st, p, op, d in
            zip(spatial, kernel, stride, padding, output_padding, dilation)]
    y = full[(slice(None),) * 3 + tuple(slice(p, p + o) for p, o in zip(padding, outs))]
    y = y.reshape((batch, groups * fg) + tuple(outs))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n).astype(dtype)
    return np.ascontiguousarray(y, dtype=dtype)


def bilinear_taps(size: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the ``size * scale`` outputs of one dim: the two input indices it interpolates and the weight
    of the second, with half-pixel centres (PyTorch's ``align_corners=False``): the source coordinate
    ``(o + 0.5) / scale - 0.5`` clamped at 0; the second index stays inside the input."""
    src = np.maximum((np.arange(size * scale, dtype=np.float64) + 0.5) / scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, src - lo


def upsample2d(x: np.ndarray, scale: tuple[Any, ...], mode: str) -> np.ndarray:
    """Channels-first ``x`` (N, C, H, W) -> (N, C, H * sh, W * sw): each pixel repeated (``nearest``) or
    interpolated between its neighbours in each dim (``bilinear``, separable: rows, then columns)."""
    dtype = float_type(x)
    if mode == "nearest":
        return np.ascontiguousarray(np.repeat(np.repeat(x, scale[0], axis=2), scale[1], axis=3), dtype=dtype)
    y = x.astype(np.float64)
    for axis, s in ((2, scale[0]), (3, scale[1])):
        lo, hi, w = bilinear_taps(y.shape[axis], s)
        shape = [1] * 4
        shape[axis] = -1
        w = w.reshape(shape)
        y = np.take(y, lo, axis=axis) * (1 - w) + np.take(y, hi, axis=axis) * w
    return np.ascontiguousarray(y, dtype=dtype)
