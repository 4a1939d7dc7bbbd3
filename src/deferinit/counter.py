"""Counter-based random numbers: every value is a function of (key, name, flat index) alone.

The portable initializers draw through :class:`CounterRNG`, so any part of a parameter (one shard of a
sharded model, one chunk of a parameter too large to hold twice) is drawn alone and equals, bit for bit, the
same part of the whole parameter drawn at once.

The bits come from Philox-4x64-10 (NumPy's ``np.random.Philox``, a counter-based generator whose raw stream
NumPy keeps stable across releases), keyed by ``(key, crc32(name))``: 64-bit lane ``i`` of block ``b`` is lane
``4 * b + i`` of the stream. Uniform value ``n`` is lane ``n``: its top 53 bits times ``2**-53``, in [0, 1).
Normal values come in pairs by Box-Muller: pair ``p`` (values ``2p`` and ``2p + 1``) uses lanes ``2p`` and
``2p + 1``. The logarithm, sine and cosine are NumPy arithmetic only (``frexp``, ``+ - * /``, ``sqrt``, all
exact or correctly rounded in IEEE 754), not ``np.log``/``np.cos``, whose last bit differs between NumPy
builds and SIMD paths; so the values are the same bits with NumPy 1.23 and 2.x, on every machine.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable, Sequence

import numpy as np

__all__ = ["CounterRNG", "flat_runs", "CHUNK"]

#: values drawn at once; a larger parameter or shard is drawn chunk by chunk (bounds the scratch memory)
CHUNK = 1 << 20

_SHIFT = np.uint64(11)
_ULP = 1.0 / 9007199254740992.0  # 2**-53
_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_TWO_PI = 2.0 * math.pi
_ATANH = [1.0 / (2 * k + 1) for k in range(12)]  # log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), |s| <= 0.172
_SIN = [(-1.0) ** k / math.factorial(2 * k + 1) for k in range(9)]  # |x| <= pi/4: error below 1e-19
_COS = [(-1.0) ** k / math.factorial(2 * k) for k in range(10)]


def _horner(coeffs: Sequence[float], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out *= x
        out += c
    return out


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of x in (0, 1] from frexp and a series: the same bits everywhere."""
    m, e = np.frexp(x)
    small = m < _SQRT_HALF
    m[small] *= 2.0  # m in [sqrt(1/2), sqrt(2))
    e -= small
    s = m - 1.0
    m += 1.0
    s /= m
    out = _horner(_ATANH, s * s)
    out *= s
    out *= 2.0  # 2 s (1 + s^2/3 + ...): the same products as 2.0 * s * poly, in place
    out += e * _LN2
    return out


def _sincos_2pi(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos(2 pi u), sin(2 pi u)) for u in [0, 1): exact reduction to a quarter turn, then Taylor polynomials."""
    n = np.rint(u * 4.0)  # 0..4, exact
    x = n * -0.25
    x += u
    x *= _TWO_PI  # u - n/4 is exact; |x| <= pi/4
    x2 = x * x
    s = _horner(_SIN, x2)
    s *= x
    c = _horner(_COS, x2)
    q = n.astype(np.int64) & 3  # the quarter turn: cos, sin = (c, s), (-s, c), (-c, -s), (s, -c)
    odd = (q & 1).astype(bool)
    cos = np.where(odd, s, c)
    sin = np.where(odd, c, s)
    cos *= 1.0 - 2.0 * ((q == 1) | (q == 2))  # times +-1: exact
    sin *= 1.0 - 2.0 * (q >= 2)
    return cos, sin


def flat_runs(shape: Sequence[int], index: Sequence[slice] | None = None) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """The region ``index`` (one unit-step slice per dim, or None for everything) of a C-ordered array of
    ``shape``: its shape and the [start, stop) ranges of flat indices it covers, in C order."""
    shape = tuple(int(d) for d in shape)
    if index is None:
        return shape, [(0, math.prod(shape))] if math.prod(shape) else []
    bounds = []
    for d, s in zip(shape, index):
        start, stop, step = s.indices(d)
        if step != 1:
            raise ValueError(f"flat_runs: expected unit-step slices, received {s}")
        bounds.append((start, max(start, stop)))
    bounds += [(0, d) for d in shape[len(bounds):]]
    region = tuple(b - a for a, b in bounds)
    if math.prod(region) == 0:
        return region, []
    k = max((i for i, (a, b) in enumerate(bounds) if (a, b) != (0, shape[i])), default=-1)
    if k < 0:
        return region, [(0, math.prod(shape))]
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    run = region[k] * strides[k]
    starts = np.zeros((), dtype=np.int64)
    for i in range(k):
        starts = np.add.outer(starts, np.arange(bounds[i][0], bounds[i][1], dtype=np.int64) * strides[i])
    first = bounds[k][0] * strides[k]
    return region, [(int(s) + first, int(s) + first + run) for s in np.ravel(starts)]


def chunks(runs: Iterable[tuple[int, int]], size: int = CHUNK) -> Iterable[list[tuple[int, int]]]:
    """``runs`` regrouped into lists of at most ``size`` values (a long run is split)."""
    group: list[tuple[int, int]] = []
    held = 0
    for a, b in runs:
        while a < b:
            take = min(b - a, size - held)
            group.append((a, a + take))
            held += take
            a += take
            if held == size:
                yield group
                group, held = [], 0
    if group:
        yield group


class CounterRNG:
    """Random values for the flat indices ``runs`` ([start, stop) ranges) of one parameter: each value depends
    only on (key, name, its flat index). ``random`` and ``standard_normal`` take the total length as shape,
    like ``np.random.Generator``'s methods, so initializers written against a Generator run unchanged."""

    def __init__(self, key: int, name: str, runs: Sequence[tuple[int, int]]) -> None:
        self.key = ((int(key) & 0xFFFFFFFF) << 32) | zlib.crc32(name.encode())
        self.runs = list(runs)
        self.size = sum(b - a for a, b in self.runs)

    def _lanes(self, first: int, n: int) -> np.ndarray:
        block, skip = divmod(first, 4)
        return np.random.Philox(counter=block, key=self.key).random_raw(n + skip)[skip:]

    def _check(self, shape: Sequence[int] | int) -> tuple[int, ...]:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"CounterRNG: expected a shape of {self.size} values, received {shape}")
        return shape

    def _raw(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        parts = [self._lanes(a, n) for a, n in spans]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def random(self, shape: Sequence[int] | int) -> np.ndarray:
        """Uniform float64 in [0, 1)."""
        shape = self._check(shape)
        if not self.runs:
            return np.zeros(shape)
        raw = self._raw([(a, b - a) for a, b in self.runs])
        raw >>= _SHIFT
        u = raw.astype(np.float64)
        u *= _ULP
        return u.reshape(shape)

    def standard_normal(self, shape: Sequence[int] | int) -> np.ndarray:
        """Standard normal float64 (Box-Muller over pairs of values)."""
        shape = self._check(shape)
        if not self.runs:
            return np.zeros(shape)
        pairs = [(a // 2, (b - 1) // 2 + 1) for a, b in self.runs]
        raw = self._raw([(2 * p0, 2 * (p1 - p0)) for p0, p1 in pairs])
        raw >>= _SHIFT
        u1 = raw[0::2].astype(np.float64)
        u1 += 1.0
        u1 *= _ULP  # (0, 1]
        u2 = raw[1::2].astype(np.float64)
        u2 *= _ULP  # [0, 1)
        del raw
        r = _log(u1)
        r *= -2.0
        np.sqrt(r, out=r)
        cos, sin = _sincos_2pi(u2)
        both = np.empty(2 * len(u1))
        np.multiply(r, cos, out=both[0::2])
        np.multiply(r, sin, out=both[1::2])
        if len(self.runs) == 1 and both.size == self.size:
            return both.reshape(shape)
        out, at = [], 0
        for (a, b), (p0, p1) in zip(self.runs, pairs):
            off = at + a - 2 * p0
            out.append(both[off:off + b - a])
            at += 2 * (p1 - p0)
        return np.concatenate(out).reshape(shape)
