"""Canonical <-> native parameter layouts, once, framework-free (NumPy arrays and shape tuples only).

Canonical layouts are ONNX's and PyTorch's: a Dense weight ``(out, in)``, a convolution weight
``(out, in // groups, *kernel)``, recurrent weights with the gates stacked on axis 0. Frameworks that compute
channels-last (Keras, Flax) keep kernels the other way round; Flax's attention keeps per-head kernels. Each
way a native variable can hold a canonical parameter is a *kind*:

=============  ==================================  ======================================
kind           native                              canonical
=============  ==================================  ======================================
``same``       any                                 the same array
``dense``      ``(in, out)``                       ``(out, in)``
``conv``       ``(*kernel, in // groups, out)``    ``(out, in // groups, *kernel)``
``heads_in``   ``(D, heads, head_dim)``            ``(heads * head_dim, D)``
``heads_out``  ``(heads, head_dim, H)``            ``(H, heads * head_dim)``
``heads_bias`` ``(heads, head_dim)``               ``(heads * head_dim,)``
=============  ==================================  ======================================

Gates (recurrent cells) are blocks of the first canonical axis: :func:`regate` reorders them between
PyTorch's order and a framework's, :func:`split_gates`/:func:`join_gates` move between one stacked array and
one array per gate.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["KINDS", "to_canonical", "to_native", "canonical_shape", "native_shape", "regate", "split_gates",
           "join_gates", "RECURRENT_GATES", "recurrent_names", "contiguous"]

KINDS = ("same", "dense", "conv", "heads_in", "heads_out", "heads_bias")

#: gates per recurrent cell in PyTorch's (canonical) order
RECURRENT_GATES = {"RNN": ("h",), "GRU": ("r", "z", "n"), "LSTM": ("i", "f", "g", "o")}


#: a transposed matrix of at least this many values is copied in tiles (``contiguous``)
_TILED = 1 << 20
_TILE = 128


def contiguous(a: Any) -> Any:
    """``np.ascontiguousarray(a, dtype=np.float32)``, always a new C-ordered array when ``a`` is a view: the
    transposes above make views, and the adapters copy them once, here. A big transposed matrix (a Dense
    kernel's ``.T``) is copied in 128 x 128 tiles, which stay in cache, by bands of rows on every core (NumPy
    copies with the GIL released): NumPy's element-by-element copy of a 4096 x 25088 transpose took 0.59 s on the
    2-core CI machine, the tiles 0.28 s in one thread and 0.14 s in two; the same values."""
    import numpy as np

    a = np.asarray(a)
    if a.dtype != np.float32 or a.ndim != 2 or a.size < _TILED or a.flags.c_contiguous or not a.flags.f_contiguous:
        return np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty(a.shape, np.float32)
    rows, cols = a.shape

    def band(lo: int, hi: int) -> None:
        for i in range(lo, hi, _TILE):
            for j in range(0, cols, _TILE):
                out[i:i + _TILE, j:j + _TILE] = a[i:i + _TILE, j:j + _TILE]

    from . import _threads

    step = -(-rows // (_threads.workers() * _TILE)) * _TILE  # whole tiles per band, one band per worker
    bands = [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]
    list(_threads.pool().map(lambda b: band(*b), bands))
    return out


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"layout kind: expected one of {', '.join(KINDS)}, received {kind!r}")


def to_canonical(kind: str, a: Any) -> Any:
    """A native array (numpy) -> the canonical array."""
    _check(kind)
    if kind == "dense":
        return a.T
    if kind == "conv":
        n = a.ndim - 2
        return a.transpose((n + 1, n) + tuple(range(n)))
    if kind == "heads_in":
        return a.reshape(a.shape[0], -1).T
    if kind == "heads_out":
        return a.reshape(-1, a.shape[-1]).T
    if kind == "heads_bias":
        return a.reshape(-1)
    return a


def to_native(kind: str, w: Any, shape: Sequence[int] | None = None) -> Any:
    """A canonical array -> the native array (of native ``shape``, needed for the per-head kinds)."""
    _check(kind)
    if kind == "dense":
        return w.T
    if kind == "conv":
        return w.transpose(tuple(range(2, w.ndim)) + (1, 0))
    if kind in ("heads_in", "heads_out", "heads_bias"):
        if shape is None:
            raise ValueError(f"layout kind {kind!r}: the native shape is needed to split the heads")
        return (w.T if kind != "heads_bias" else w).reshape(tuple(shape))
    return w


def canonical_shape(kind: str, shape: Sequence[int]) -> tuple[Any, ...]:
    """The canonical shape of a native variable of ``shape``."""
    _check(kind)
    s = tuple(shape)
    if kind == "dense":
        return s[::-1]
    if kind == "conv":
        return (s[-1], s[-2]) + s[:-2]
    if kind == "heads_in":
        return (s[1] * s[2], s[0])
    if kind == "heads_out":
        return (s[2], s[0] * s[1])
    if kind == "heads_bias":
        return (s[0] * s[1],)
    return s


def native_shape(kind: str, shape: Sequence[int], heads: int | None = None) -> tuple[Any, ...]:
    """The native shape of a canonical parameter of ``shape`` (``heads`` for the per-head kinds)."""
    _check(kind)
    s = tuple(shape)
    if kind == "dense":
        return s[::-1]
    if kind == "conv":
        return s[2:] + (s[1], s[0])
    if kind in ("heads_in", "heads_out", "heads_bias"):
        if not heads:
            raise ValueError(f"layout kind {kind!r}: the number of heads is needed")
        if kind == "heads_in":
            return (s[1], heads, s[0] // heads)
        if kind == "heads_out":
            return (heads, s[1] // heads, s[0])
        return (heads, s[0] // heads)
    return s


def regate(a: Any, order: Sequence[int]) -> Any:
    """Blocks of the first axis reordered: block ``i`` of the result is block ``order[i]`` of ``a``."""
    import numpy as np

    order = tuple(order)
    if order == tuple(range(len(order))):
        return a
    blocks = np.split(a, len(order), axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def split_gates(w: Any, gates: int) -> list[Any]:
    """A canonical gate-stacked array -> one array per gate (blocks of the first axis)."""
    import numpy as np

    return list(np.split(w, gates, axis=0))


def join_gates(blocks: Sequence[Any]) -> Any:
    import numpy as np

    return np.concatenate(list(blocks), axis=0)


def recurrent_names(layer_type: str, num_layers: int, bidirectional: bool, use_bias: bool = True) -> list[str]:
    """PyTorch's (canonical) parameter names of a recurrent layer, in PyTorch's order: per layer ``l`` and
    direction (``""``, ``"_reverse"``), ``weight_ih_l{l}``, ``weight_hh_l{l}``, then the two biases."""
    if layer_type not in RECURRENT_GATES:
        raise ValueError(f"recurrent layer type: expected one of {', '.join(RECURRENT_GATES)}, received {layer_type!r}")
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if use_bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
    return names
