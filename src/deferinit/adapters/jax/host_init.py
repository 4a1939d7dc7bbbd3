"""JAX's own initializers drawn on the host, in NumPy: no XLA compilation for a model's first draw.

``jax.nn.initializers`` (which Flax's defaults are: ``lecun_normal`` kernels, zero biases, unit scales, the
``variance_scaling`` embeddings) are functions of a key, a shape and a dtype. Jitting them for every variable of a
model costs seconds on CPU: d2l's ResNet-18 (21 kernels, 89 scales and shifts) took 2.8-4.4 s cold in one jitted
draw. The same distributions drawn here with NumPy's generator cost about 0.1 s and compile nothing. The values
are not ``jax.random``'s (nor were the one jitted draw's: each variable had its own ``fold_in`` key), they are
deterministic per key: each variable's generator is seeded by the key's words and the variable's salt.

:func:`host_draw` recognizes the initializers by their function object (``zeros``, ``ones``) or by the closure
JAX builds (``variance_scaling``, with every named variant of it, ``constant``, ``normal``, ``uniform``,
``truncated_normal``) and reads their parameters from it; anything else (``orthogonal``, a user's function)
returns None and is drawn by JAX as before. The formulas are JAX's (``jax/_src/nn/initializers.py``, 0.10).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from ... import _threads

__all__ = ["host_draw", "key_words", "threefry_fold_in"]

_MODULE = "jax._src.nn.initializers"
_TRUNC_STD = 0.87962566103423978  # the standard deviation of a standard normal truncated to (-2, 2)


_M32 = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry_fold_in(key: Sequence[int], data: int) -> tuple[int, int]:
    """``jax.random.fold_in`` of a threefry key (its two uint32 words) and a uint32 ``data``, in Python integers:
    the Threefry-2x32 hash of the counter ``[0, data]`` (``jax._src.random.threefry2x32``: ``threefry_seed`` of a
    32-bit value is ``[0, value]``; five groups of four rounds, the key schedule injected after each). About 20 us,
    where ``fold_in`` compiles ~90 ms in a fresh process (tests compare the two on random keys)."""
    k1, k2 = int(key[0]) & _M32, int(key[1]) & _M32
    ks = (k1, k2, k1 ^ k2 ^ 0x1BD11BDA)
    x0, x1 = ks[0], (int(data) + ks[1]) & _M32
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = (x0 + x1) & _M32
            x1 = ((x1 << r) | (x1 >> (32 - r))) & _M32
            x1 ^= x0
        x0 = (x0 + ks[(group + 1) % 3]) & _M32
        x1 = (x1 + ks[(group + 2) % 3] + group + 1) & _M32
    return x0, x1


def key_words(key: Any) -> list[int]:
    """The words of a JAX key (typed or raw uint32), as the seed of the host generators."""
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return [int(w) for w in np.asarray(data).reshape(-1)]


def _closure(fn: Any) -> dict[str, Any]:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not cells:
        return {}
    return dict(zip(code.co_freevars, (c.cell_contents for c in cells)))


def _axis_size(shape: tuple[int, ...], axis: int | Sequence[int]) -> int:
    return shape[axis] if isinstance(axis, int) else math.prod(shape[a] for a in axis)


def _fans(shape: tuple[int, ...], in_axis: Any, out_axis: Any, batch_axis: Any) -> tuple[float, float] | None:
    if isinstance(in_axis, int) and in_axis == -2 and len(shape) <= 1:
        return None  # JAX raises here: let it say so
    in_size, out_size = _axis_size(shape, in_axis), _axis_size(shape, out_axis)
    receptive = math.prod(shape) / in_size / out_size / _axis_size(shape, batch_axis)
    return in_size * receptive, out_size * receptive


#: values per chunk of a big draw: each chunk has its own generator (spawned from the variable's seed, so the values
#: depend on the seed and the shape only, never on the thread count) and the chunks are drawn on every core
#: (NumPy releases the GIL while it fills an array): on 2 cores a 2.4 M-value kernel took 14 ms, 25 in one thread
CHUNK = 1 << 16


def _fill(gen: np.random.Generator, kind: tuple, out: np.ndarray) -> None:
    """``out`` (flat float32) filled with ``kind``'s values: ("normal", scale), ("uniform", low, high) or
    ("truncated", lower, upper, scale): a standard normal truncated to (lower, upper), by redrawing the values
    outside (float32 draws throughout: NumPy's float32 ziggurat is about 2x faster than its float64 one)."""
    if kind[0] == "uniform":
        gen.random(out=out, dtype=np.float32)
        out *= np.float32(kind[2] - kind[1])
        out += np.float32(kind[1])
        return
    gen.standard_normal(out=out, dtype=np.float32)
    if kind[0] == "truncated":
        lower, upper = np.float32(kind[1]), np.float32(kind[2])
        bad = np.flatnonzero((out <= lower) | (out >= upper))
        while bad.size:
            new = gen.standard_normal(bad.size, dtype=np.float32)
            out[bad] = new
            bad = bad[(new <= lower) | (new >= upper)]
    out *= np.float32(kind[-1])


def _draw(seed: Sequence[int] | np.random.Generator, kind: tuple, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(math.prod(shape), np.float32)
    if out.size <= CHUNK:
        gen = seed if isinstance(seed, np.random.Generator) else \
            np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed))))
        _fill(gen, kind, out)
    else:
        words = seed.integers(0, 2**32, size=4).tolist() if isinstance(seed, np.random.Generator) else list(seed)
        children = np.random.SeedSequence(words).spawn(-(-out.size // CHUNK))
        parts = [(np.random.Generator(np.random.PCG64(c)), out[i * CHUNK:(i + 1) * CHUNK])
                 for i, c in enumerate(children)]
        list(_threads.pool().map(lambda p: _fill(p[0], kind, p[1]), parts))
    return out.reshape(shape)


def _recognize(fn: Any) -> tuple | None:
    """The initializer as (kind, parameters), or None where it is not one of JAX's that this module draws."""
    if fn is jax.nn.initializers.zeros:
        return ("constant", 0.0)
    if fn is jax.nn.initializers.ones:
        return ("constant", 1.0)
    if getattr(fn, "__module__", None) != _MODULE:
        return None
    name, cells = getattr(fn, "__qualname__", ""), _closure(fn)
    try:
        if name == "variance_scaling.<locals>.init":
            mode, distribution = cells["mode"], cells["distribution"]
            if mode not in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg") or \
                    distribution not in ("truncated_normal", "normal", "uniform"):
                return None
            return ("variance_scaling", float(cells["scale"]), mode, distribution, cells["in_axis"],
                    cells["out_axis"], cells["batch_axis"])
        if name == "constant.<locals>.init":
            value = np.asarray(cells["value"])
            return ("constant", float(value)) if value.ndim == 0 and value.dtype.kind in "biuf" else None
        if name == "normal.<locals>.init":
            return ("normal", float(cells["stddev"]))
        if name == "uniform.<locals>.init":
            return ("uniform", float(cells["scale"]))
        if name == "truncated_normal.<locals>.init":
            return ("truncated_normal", float(cells["stddev"]), float(cells["lower"]), float(cells["upper"]))
    except (KeyError, TypeError, ValueError):  # another JAX version's closure: JAX draws it
        return None
    return None


def host_draw(fn: Any, shape: tuple[int, ...], seed: Sequence[int] | np.random.Generator) -> np.ndarray | None:
    """``fn(key, shape, float32)``'s distribution drawn in NumPy with a generator seeded by ``seed`` (or with
    ``seed`` itself, a generator shared by several draws); None where ``fn`` is not recognized (the caller draws
    it with JAX)."""
    kind = _recognize(fn)
    if kind is None:
        return None
    shape = tuple(int(d) for d in shape)
    if kind[0] == "constant":
        return np.full(shape, kind[1], np.float32)
    if kind[0] == "normal":
        return _draw(seed, ("normal", kind[1]), shape)
    if kind[0] == "uniform":  # [0, scale)
        return _draw(seed, ("uniform", 0.0, kind[1]), shape)
    if kind[0] == "truncated_normal":
        _, stddev, lower, upper = kind
        return _draw(seed, ("truncated", lower, upper, stddev), shape)
    _, scale, mode, distribution, in_axis, out_axis, batch_axis = kind
    try:
        fans = _fans(shape, in_axis, out_axis, batch_axis)
    except (IndexError, TypeError, ZeroDivisionError):
        return None
    if fans is None:
        return None
    fan_in, fan_out = fans
    denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
                   "fan_geo_avg": (fan_in * fan_out) ** 0.5}[mode]
    if denominator <= 0:
        return None
    variance = scale / denominator
    if distribution == "truncated_normal":
        return _draw(seed, ("truncated", -2.0, 2.0, math.sqrt(variance) / _TRUNC_STD), shape)
    if distribution == "normal":
        return _draw(seed, ("normal", math.sqrt(variance)), shape)
    bound = math.sqrt(3 * variance)  # uniform on [-bound, bound)
    return _draw(seed, ("uniform", -bound, bound), shape)
