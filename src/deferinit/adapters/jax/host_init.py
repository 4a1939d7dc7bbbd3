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

__all__ = ["host_draw", "key_words"]

_MODULE = "jax._src.nn.initializers"
_TRUNC_STD = 0.87962566103423978  # the standard deviation of a standard normal truncated to (-2, 2)


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


def _truncated(gen: np.random.Generator, lower: float, upper: float, shape: tuple[int, ...]) -> np.ndarray:
    """A standard normal truncated to (lower, upper), by redrawing the values outside (float32 draws: NumPy's
    float32 ziggurat is about 2x faster than its float64 one, and the values end in float32 anyway)."""
    z = gen.standard_normal(shape, dtype=np.float32)
    out = ~((z > lower) & (z < upper))
    while out.any():
        z[out] = gen.standard_normal(int(out.sum()), dtype=np.float32)
        out = ~((z > lower) & (z < upper))
    return z


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
    gen = seed if isinstance(seed, np.random.Generator) else \
        np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed))))
    if kind[0] == "normal":
        return gen.standard_normal(shape, dtype=np.float32) * np.float32(kind[1])
    if kind[0] == "uniform":  # [0, scale)
        return gen.random(shape, dtype=np.float32) * np.float32(kind[1])
    if kind[0] == "truncated_normal":
        _, stddev, lower, upper = kind
        return (_truncated(gen, lower, upper, shape) * stddev).astype(np.float32)
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
        z = _truncated(gen, -2.0, 2.0, shape) * np.float32(math.sqrt(variance) / _TRUNC_STD)
    elif distribution == "normal":
        z = gen.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(variance))
    else:  # uniform on [-1, 1) times sqrt(3 variance)
        z = (gen.random(shape, dtype=np.float32) * np.float32(2) - np.float32(1)) * np.float32(math.sqrt(3 * variance))
    return z.astype(np.float32, copy=False)
