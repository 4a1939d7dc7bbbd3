"""NumPy kernels of the reference forward for the layers of :mod:`deferinit.layers_up`, channels-first, float32
in and out (float64 when given float64), written from the formulas, not from any framework.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .layers_up import transpose_out
from .ops import float_type

__all__ = ["conv_transpose"]


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
