"""The numpy reference's own gradients: float64 central finite differences along fixed random directions.

Parity compares each framework's gradient of ``sum(output)`` with these, so even a run with one framework is
checked against something independent of every framework. For each trainable parameter ``p`` and each of
:data:`DIRECTIONS` unit directions ``d`` (over ``p``'s entries, the same on every machine and NumPy version:
an integer hash, not a random stream), the reference records ``(L(w + h d) - L(w - h d)) / 2h`` with the
weights and input cast to float64, and a framework records ``<grad_p, d>`` of its own float32 gradient.

Step and tolerance (why these numbers):

* Rounding: the float64 loss is exact to about ``eps64 * C * sum|y|`` (``eps64`` 1.1e-16, ``C`` about 1e2
  for a few layers of dot products, ``sum|y|`` below 1e3 for the nets checked), so the difference quotient
  carries at most ``~1e-11 / 2h``; truncation is ``h**2 / 6`` times the third derivative. ``h = 1e-6`` keeps
  both below :data:`ATOL` (5e-6 and ~1e-13) and moves a max-pool input by about ``1e-6`` at most, so a max
  switching inside the step (where finite differences are wrong) is rare. Measured on the residual case
  before ReLU masks were frozen (below): ``h = 1e-5`` crossed a kink and erred by 1%; ``1e-6`` and ``1e-7``
  agree with torch to 1e-8. A crossing is never silent: the pair fails and names the parameter.
* Kinks: ReLU keeps the mask of the unperturbed pass (``NumpyNet.frozen``), i.e. the difference quotient of
  the function the frameworks differentiate, with their convention ``relu'(0) = 0``. Without it, zero biases
  put dead units exactly on the kink and central differences count them half (measured: 25% off on the
  ``concat`` case's biases); max-pool ties then only occur among frozen zeros, which do not move.
* A float32 gradient sums up to ~1e5..1e6 terms: its error is about ``sqrt(N) * eps32`` (6e-8) of its size,
  <= 6e-5; projected on a random unit direction that error shrinks like the gradient itself
  (by ``1/sqrt(n)``), so it is compared relative to the RMS of the projections: :data:`RTOL` 1e-3 leaves a
  16x margin, while a gradient that is wrong by a few per cent is caught. :data:`ATOL` (1e-5) covers the
  finite differences' own rounding on gradients that are (almost) zero.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Mapping

import numpy as np

__all__ = ["DIRECTIONS", "STEP", "RTOL", "ATOL", "BUDGET_S", "ALL", "directions", "project", "finite_differences",
           "close", "combined"]

DIRECTIONS = 3
STEP = 1e-6
RTOL = 1e-3
ATOL = 1e-5
# Per parameter costs 2 * DIRECTIONS float64 passes per trainable parameter: minutes on VGG-11 or ResNet-18
# (measured: a 4-20 s pass, 22-76 parameters). When that would exceed BUDGET_S at the measured speed of the
# first pass, the reference uses DIRECTIONS directions over all parameters together instead, stored under ALL:
# direction j is every parameter's own direction j scaled by 1/sqrt(P), so a framework's projection on it is
# derived from its per-parameter ones (:func:`combined`) and the framework side never changes. A wrong
# gradient is then still caught, and named by the pairwise framework comparison rather than by this one.
BUDGET_S = 30.0
ALL = "*"

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def directions(name: str, shape: tuple[int, ...], k: int = DIRECTIONS) -> np.ndarray:
    """``k`` float64 unit directions of ``shape`` (splitmix64 of the entry index: identical on every NumPy)."""
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty((k, n), np.float64)
    idx = np.arange(n, dtype=np.uint64)
    for j in range(k):
        seed = np.uint64((zlib.crc32(name.encode()) * 131 + j + 1) & 0xFFFFFFFF)
        with np.errstate(over="ignore"):
            z = idx * _GOLD + seed * _M1
            z ^= z >> np.uint64(30)
            z *= _M1
            z ^= z >> np.uint64(27)
            z *= _M2
            z ^= z >> np.uint64(31)
        u = (z >> np.uint64(11)).astype(np.float64) * (2.0 / 2 ** 53) - 1.0
        norm = float(np.sqrt(np.dot(u, u)))
        out[j] = u / norm if norm > 0 else 1.0 / np.sqrt(n)
    return out.reshape((k,) + tuple(shape))


def project(gradients: Mapping[str, np.ndarray], k: int = DIRECTIONS) -> dict[str, np.ndarray]:
    """A framework's side: its full gradients projected on the directions, shape ``(k,)`` float64 each."""
    out = {}
    for name, g in gradients.items():
        g64 = np.asarray(g, dtype=np.float64)
        d = directions(name, g64.shape, k)
        out[name] = d.reshape(k, -1) @ g64.reshape(-1)
    return out


def finite_differences(net: Any, x: np.ndarray, weights: Mapping[str, np.ndarray], trainable: list[str],
                       k: int = DIRECTIONS, step: float = STEP) -> dict[str, np.ndarray]:
    """The reference's side: ``(L(w + h d) - L(w - h d)) / 2h`` in float64, ``L = sum(net(x))`` in inference
    mode. ``net`` is a :class:`~deferinit.adapters.numpy.NumpyNet`; its weights are put back afterwards."""
    saved = net.params
    base = {n: np.asarray(w, dtype=np.float64) for n, w in weights.items()}
    x64 = x.astype(np.float64) if x.dtype.kind == "f" else x
    out: dict[str, np.ndarray] = {}

    def loss(params: dict[str, np.ndarray]) -> float:
        net.params, net.frozen_at = params, 0
        return float(np.sum(net(x64, False), dtype=np.float64))

    try:
        net.frozen = []
        t0 = time.perf_counter()
        loss(base)  # records the ReLU masks at w itself; every perturbed pass reuses them
        if 2 * k * len(trainable) * (time.perf_counter() - t0) > BUDGET_S and len(trainable) > 1:
            scale = 1.0 / np.sqrt(len(trainable))
            fd = np.empty(k, np.float64)
            for j in range(k):
                d = {n: directions(n, base[n].shape, k)[j] * scale for n in trainable}
                up, down = (loss(dict(base, **{n: base[n] + sign * step * d[n] for n in trainable}))
                            for sign in (1.0, -1.0))
                fd[j] = (up - down) / (2 * step)
            return {ALL: fd}
        for name in trainable:
            fd = np.empty(k, np.float64)
            for j, d in enumerate(directions(name, base[name].shape, k)):
                up, down = (loss(dict(base, **{name: base[name] + sign * step * d})) for sign in (1.0, -1.0))
                fd[j] = (up - down) / (2 * step)
            out[name] = fd
    finally:
        net.params, net.frozen = saved, None
    return out


def combined(projections: Mapping[str, np.ndarray]) -> np.ndarray:
    """A framework's projections on the :data:`ALL` directions, from its per-parameter ones."""
    total = np.sum([np.asarray(v, np.float64) for v in projections.values()], axis=0)
    return np.asarray(total / np.sqrt(len(projections)), dtype=np.float64)


def close(got: np.ndarray, fd: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> tuple[float, bool]:
    """Relative error of a framework's projections against the finite differences (scaled by their RMS), and
    whether every direction is within ``atol + rtol * RMS``."""
    got, fd = np.asarray(got, np.float64), np.asarray(fd, np.float64)
    if got.shape != fd.shape or not (np.isfinite(got).all() and np.isfinite(fd).all()):
        return float("nan"), False
    scale = float(np.sqrt(np.mean(fd ** 2))) if fd.size else 0.0
    diff = np.abs(got - fd)
    return float(diff.max() / (scale + atol / rtol)) if diff.size else 0.0, bool(np.all(diff <= atol + rtol * scale))
