"""NumPy kernels of the reference forward pass (float32 in, float32 out; channels-first layouts).

Written for clarity and exactness rather than speed: they are the oracle the frameworks are compared with.
Accumulation happens in float32 through BLAS (``matmul``), as the frameworks do on CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv", "pool", "activation", "batch_norm", "layer_norm", "softmax", "gelu"]

_erf = np.frompyfunc(math.erf, 1, 1)


def float_type(*arrays: np.ndarray) -> type[np.floating[Any]]:
    """float32 (the reference's own precision), or float64 when an operand is float64: the parity check's
    finite differences run the same kernels in float64 (see :mod:`deferinit.parity_fd`)."""
    return np.float64 if any(np.asarray(a).dtype == np.float64 for a in arrays) else np.float32


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * Phi(x)`` with the C library's erf (numpy has none)."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.asarray(_erf(x64 / math.sqrt(2.0)), dtype=np.float64))).astype(x.dtype)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return out


def activation(name: str | None, x: np.ndarray) -> np.ndarray:
    if name is None:
        return x
    out: np.ndarray
    if name == "relu":
        out = np.maximum(x, np.float32(0))
        return out
    if name == "sigmoid":
        out = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)
        return out
    if name == "tanh":
        out = np.tanh(x)
        return out
    if name == "gelu":
        return gelu(x)
    if name == "softmax":
        return softmax(x, -1)
    if name == "silu":
        return (x.astype(np.float64) / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)
    from .ops_extra import activation_extra

    return activation_extra(name, x)  # pragma: no cover - names are validated by the spec


def _windows(x: np.ndarray, kernel: tuple[Any, ...], stride: tuple[Any, ...], dilation: tuple[Any, ...]) -> np.ndarray:
    """(N, C, *out, *kernel) view of every window of a padded channels-first input."""
    n = len(kernel)
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    win = sliding_window_view(x, eff, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride) \
        + tuple(slice(None, None, d) for d in dilation)
    return win[index]


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[Any, ...], pads: tuple[Any, ...], dilation: tuple[Any, ...],
         groups: int) -> np.ndarray:
    """N-d convolution (cross-correlation) of channels-first ``x`` with OI* weight ``w``."""
    n = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    kernel = w.shape[2:]
    win = _windows(x, kernel, stride, dilation)
    batch, channels = x.shape[:2]
    out_sp = win.shape[2:2 + n]
    cg, fo = channels // groups, w.shape[0]
    fg = fo // groups
    k = math.prod(kernel)
    # (N, G, Cg, *out, *k) -> (N, G, out, Cg*k)
    win = win.reshape((batch, groups, cg) + out_sp + kernel)
    perm = (0, 1) + tuple(range(3, 3 + n)) + (2,) + tuple(range(3 + n, 3 + 2 * n))
    cols = np.ascontiguousarray(win.transpose(perm)).reshape(batch, groups, math.prod(out_sp), cg * k)
    wg = w.reshape(groups, fg, cg * k).transpose(0, 2, 1)  # (G, Cg*k, Fg)
    out = np.matmul(cols, wg[None])  # (N, G, out, Fg)
    out = out.transpose(0, 1, 3, 2).reshape((batch, fo) + out_sp)
    if b is not None:
        out = out + b.reshape((1, fo) + (1,) * n)
    return np.ascontiguousarray(out, dtype=float_type(out))


def pool(x: np.ndarray, kind: str, size: tuple[Any, ...], stride: tuple[Any, ...], padding: tuple[Any, ...]) -> np.ndarray:
    """2-D max or average pooling of channels-first ``x``; average counts padded zeros (count_include_pad)."""
    fill = -np.inf if kind == "max" else 0.0
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=fill)
    win = _windows(x, size, stride, (1,) * len(size))
    axes = tuple(range(-len(size), 0))
    if kind == "max":
        return np.ascontiguousarray(win.max(axis=axes))
    return np.ascontiguousarray(win.mean(axis=axes, dtype=float_type(x)))


def batch_norm(x: np.ndarray, axis: int, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
               eps: float, training: bool, momentum: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Returns the output and, in training, the updated running mean and variance (PyTorch's rule:
    ``new = (1 - momentum) * old + momentum * batch``, the variance unbiased)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    if training:
        axes = tuple(a for a in range(x.ndim) if a != axis)
        count = x.size // x.shape[axis]
        bmean = x.mean(axis=axes, dtype=np.float64)
        bvar = x.var(axis=axes, dtype=np.float64)
        y = (x - bmean.reshape(shape)) / np.sqrt(bvar.reshape(shape) + eps)
        unbiased = bvar * count / max(count - 1, 1)
        new_mean = ((1 - momentum) * mean + momentum * bmean).astype(np.float32)
        new_var = ((1 - momentum) * var + momentum * unbiased).astype(np.float32)
    else:
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + np.float32(eps))
        new_mean = new_var = None
    y = y * weight.reshape(shape) + bias.reshape(shape)
    return y.astype(float_type(x, weight)), new_mean, new_var


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
    var = x.var(axis=-1, keepdims=True, dtype=np.float64)
    y: np.ndarray = ((x - mean) / np.sqrt(var + eps)) * weight + bias
    return y.astype(float_type(x, weight))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(float_type(x))


def recurrent(kind: str, x: np.ndarray, params: dict[str, Any], hidden: int, num_layers: int, bidirectional: bool,
              use_bias: bool, activation: str = "tanh") -> np.ndarray:
    """PyTorch's RNN/GRU/LSTM on batch-first ``x`` (N, T, F) with zero initial state; returns (N, T, H*dirs).

    ``params`` maps ``weight_ih_l0`` etc. (no layer path) to canonical arrays."""
    n, t = x.shape[:2]
    dirs = ("", "_reverse") if bidirectional else ("",)
    ft = float_type(x, *params.values())
    seq = x.astype(ft)
    for layer in range(num_layers):
        outs = []
        for sfx in dirs:
            w_ih, w_hh = params[f"weight_ih_l{layer}{sfx}"], params[f"weight_hh_l{layer}{sfx}"]
            zero = np.zeros(w_ih.shape[0], ft)
            b_ih = params.get(f"bias_ih_l{layer}{sfx}", zero) if use_bias else zero
            b_hh = params.get(f"bias_hh_l{layer}{sfx}", zero) if use_bias else zero
            xs = np.matmul(seq, w_ih.T) + b_ih  # (N, T, G*H): the input part of every step at once
            h = np.zeros((n, hidden), ft)
            c = np.zeros((n, hidden), ft)
            steps = range(t - 1, -1, -1) if sfx else range(t)
            out = np.zeros((n, t, hidden), ft)
            for s in steps:
                gh = np.matmul(h, w_hh.T) + b_hh
                gx = xs[:, s]
                if kind == "rnn":
                    h = np.tanh(gx + gh) if activation == "tanh" else np.maximum(gx + gh, ft(0))
                elif kind == "gru":
                    r = _sigmoid(gx[:, :hidden] + gh[:, :hidden])
                    z = _sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
                    cand = np.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
                    h = ((1 - z) * cand + z * h).astype(ft)
                else:
                    g = gx + gh
                    i, f = _sigmoid(g[:, :hidden]), _sigmoid(g[:, hidden:2 * hidden])
                    cell, o = np.tanh(g[:, 2 * hidden:3 * hidden]), _sigmoid(g[:, 3 * hidden:])
                    c = (f * c + i * cell).astype(ft)
                    h = (o * np.tanh(c)).astype(ft)
                out[:, s] = h
            outs.append(out)
        seq = np.concatenate(outs, axis=-1)
    return seq


def attention(x: np.ndarray, params: dict[str, Any], num_heads: int, use_bias: bool) -> np.ndarray:
    """d2l's multi-head self-attention on (N, T, D), no mask."""
    n, t, _ = x.shape

    def proj(name: str, v: np.ndarray) -> np.ndarray:
        y: np.ndarray = np.matmul(v, params[f"{name}_weight"].T)
        return y + params[f"{name}_bias"] if use_bias else y

    q, k, v = proj("q", x), proj("k", x), proj("v", x)
    h = q.shape[-1]
    d = h // num_heads

    def split(m: np.ndarray) -> np.ndarray:  # (N, T, H) -> (N, heads, T, d)
        return m.reshape(n, t, num_heads, d).transpose(0, 2, 1, 3)

    scores = np.matmul(split(q), split(k).transpose(0, 1, 3, 2)) / np.float32(math.sqrt(d))
    weights = softmax(scores, -1)
    heads = np.matmul(weights, split(v)).transpose(0, 2, 1, 3).reshape(n, t, h)
    return proj("out", heads).astype(float_type(x, *params.values()))


def sinusoidal(steps: int, dim: int) -> np.ndarray:
    """d2l's positional encoding table (steps, dim), computed as the book does, in float32."""
    pos = np.arange(steps, dtype=np.float32).reshape(-1, 1)
    div = np.power(np.float32(10000), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    angles = pos / div
    table = np.zeros((steps, dim), np.float32)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)
    return table
