"""The reference's own gradients: finite differences of the NumPy forward, independent of every framework.

Parity compares each framework's gradients with the other frameworks' (pairwise), and here with something no
framework computed: one-sided finite differences of ``L(w) = sum(model(x))`` run by the numpy reference
backend. For a
parameter ``p`` and a unit direction ``d`` over its entries,

    (L(w) - L(w - h d)) / h  <=~  grad_p . d  <=~  (L(w + h d) - L(w)) / h    (or the other way round)

Directions: along each framework's own gradient of ``p`` (normalized), so its projection is its gradient's norm
and the finite difference is the true gradient's component along it: they agree only if the gradient is right
in size and direction (a scaled, transposed or permuted gradient fails). Frameworks whose gradients agree share
one direction and one pair of forwards. A single framework is thus compared with something independent. Only
the entries a parity artifact stores are moved (big parameters keep a fixed sample,
:data:`deferinit.parity_artifacts.GRAD_SAMPLE`), so the check works on artifacts from other processes.

Precision: the forward runs in float32, as the reference does everywhere, with the loss summed in float64.
The step moves the sampled entries by 1e-4 of their norm (``h = STEP * ||w_p||``, at least 1e-4): measured on
the parity matrix (every contract spec and zoo model, four frameworks), a central difference with a step of 1e-2
missed by up to 40% (NiN: ReLU kinks crossed), 1e-3 by up to 2.3%, 1e-4 by up to 12% on a zero bias feeding a
ReLU whose inputs are exactly 0 (a kink at w itself, where frameworks take relu'(0) = 0 and a central difference
takes the mean of the two sides). So the check uses both one-sided differences and asks the projection to lie
between them (see below): the largest miss on the matrix is then 6.1e-3 (ResNet-18, in ``nox -s parity`` on a clean
clone; docs/parity-summary.md), against a tolerance ``FD_RTOL`` of 3%, relative, with float32 rounding of the
outputs (about ``1e-7 * sum|y|`` per evaluation, divided by ``h``) as its floor. A gradient scaled by 1.1 on one
parameter, transposed or permuted fails.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .parity_artifacts import Artifact

__all__ = ["FD_RTOL", "MIN_TENSORS", "BUDGET", "FDCheck", "finite_difference_checks"]

#: relative tolerance of a projected gradient against the finite difference
FD_RTOL = 0.03
#: at least this many parameters are checked per spec (evenly spread in plan order, the first and last included),
#: more while their forwards fit in BUDGET: every parameter of a small net, 2 of VGG-11 at 224x224 (3 s a forward)
MIN_TENSORS = 2
#: the step, relative to the norm of the entries moved
STEP = 1e-4
#: seconds of reference forwards a spec may spend (two per parameter checked)
BUDGET = 3.0


class FDCheck:
    """One backend's gradients against the reference's finite differences."""

    __slots__ = ("worst", "error", "ok", "checked")

    def __init__(self) -> None:
        self.worst: str | None = None  # the parameter with the largest relative error
        self.error = 0.0               # how far the projection is outside the one-sided differences, relative
        self.ok = True
        self.checked = 0               # parameters compared


def _choose(names: Sequence[str], count: int) -> list[str]:
    if len(names) <= count:
        return list(names)
    step = (len(names) - 1) / (count - 1)
    return list(dict.fromkeys(names[round(i * step)] for i in range(count)))


def _support(name: str, size: int, sampled: np.ndarray) -> np.ndarray | None:
    """The flat indices of ``name`` that an artifact's (possibly sampled) gradient holds."""
    from .parity_artifacts import GRAD_SAMPLE

    if sampled.size == size:
        return None  # the whole tensor
    if sampled.size != GRAD_SAMPLE:
        return np.array([], dtype=np.int64)  # not a sample this version makes: nothing to compare on
    import zlib

    return np.sort(np.random.default_rng(zlib.crc32(name.encode())).choice(size, GRAD_SAMPLE, replace=False))


def _difference(loss: Any, weights: dict[str, np.ndarray], name: str, flat: np.ndarray, idx: np.ndarray | None,
                direction: np.ndarray, h: float, base: float) -> tuple[float, float, float]:
    """The one-sided differences of the loss along ``direction`` (over ``idx`` of parameter ``name``), backward
    and forward, and their float32 rounding bound."""
    values = []
    for sign in (1.0, -1.0):
        new = flat.copy()
        if idx is None:
            new += sign * h * direction
        else:
            new[idx] += sign * h * direction
        values.append(loss({**weights, name: new.astype(np.float32).reshape(weights[name].shape)}))
    (up, scale_up), (down, scale_down) = values
    return (base - down) / h, (up - base) / h, 1e-6 * (scale_up + scale_down) / h  # ~1e-7 relative each, margin


def finite_difference_checks(ref: Artifact, arts: Sequence[Artifact]) -> dict[str, FDCheck]:
    """For every artifact in ``arts`` with gradients: its gradients projected on directions of the chosen
    parameters, against central differences of the numpy reference run on ``ref``'s spec, weights and input."""
    from .registry import compile
    from .spec import LazyModel

    with_grads = [a for a in arts if a.gradients]
    if not with_grads or not ref.weights:
        return {}
    spec = LazyModel.from_dict(ref.spec)
    model = compile(spec, "numpy")
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in ref.weights.items()}
    # zeros, then the reference's weights (a graph spec's inputs fix its shapes; every output is summed): the
    # default initializer's draw, overwritten at once, took 6.5 of the parity comparison's 83 s
    model.apply_init(ref.input, init="zeros", key=0)
    model.load_weights(weights)
    # the reference's own parameter table (list specs): a moved parameter is swapped in and back, where
    # load_weights checked and copied every parameter for each of the ~1,700 forwards (12 s of the 83)
    table = getattr(model.native, "params", None)
    table = table if isinstance(table, dict) and set(table) == set(weights) else None

    def loss(w: dict[str, np.ndarray]) -> tuple[float, float]:
        if table is None:
            model.load_weights(w)
            out = model(ref.input)
        else:
            saved = {k: table[k] for k in w if w[k] is not weights[k]}
            table.update({k: w[k] for k in saved})
            try:
                out = model(ref.input)
            finally:
                table.update(saved)
        ys = [np.asarray(o, dtype=np.float32) for o in (out if isinstance(out, tuple) else (out,))]
        return (float(sum(np.sum(y, dtype=np.float64) for y in ys)),
                float(sum(np.sum(np.abs(y), dtype=np.float64) for y in ys)))

    trainable = [n for n, p in ref.report.params.items() if p.trainable and all(n in a.gradients for a in with_grads)]
    checks = {a.backend: FDCheck() for a in with_grads}
    import time

    start = time.perf_counter()
    base = loss(weights)[0]
    per_forward = time.perf_counter() - start
    count = max(MIN_TENSORS, int(BUDGET / max(2 * per_forward, 1e-9)))
    for name in _choose(trainable, count):
        w = weights[name]
        idx = _support(name, w.size, with_grads[0].gradients[name])
        grads = [np.asarray(a.gradients[name], dtype=np.float64).reshape(-1) for a in with_grads]
        if idx is not None and idx.size == 0 or any(g.size != grads[0].size for g in grads):
            continue
        flat = w.reshape(-1).astype(np.float64)
        moved = flat if idx is None else flat[idx]
        h = max(STEP * float(np.linalg.norm(moved)), 1e-4)
        done: list[tuple[np.ndarray, float, float, float]] = []  # (direction, backward, forward, rounding floor)
        for art, g in zip(with_grads, grads):
            norm = float(np.linalg.norm(g))
            if not math.isfinite(norm):
                direction, below, above, rounding = g, float("nan"), float("nan"), 0.0
            elif norm == 0.0:
                direction = None
            else:
                direction = g / norm
            if direction is None:  # a zero gradient: another framework's direction (or a random one) tells whether
                known = next(iter(done), None)  # it should be zero
                if known is None:
                    guess = np.random.default_rng(0).standard_normal(g.size)
                    guess /= float(np.linalg.norm(guess))
                    known = (guess, *_difference(loss, weights, name, flat, idx, guess, h, base))
                    done.append(known)
                direction, below, above, rounding = known
            elif math.isfinite(norm):
                # frameworks that agree share one direction (and one pair of forwards); one that does not gets its own
                known = next((k for k in done if float(np.linalg.norm(k[0] - direction)) < 1e-3), None)
                if known is None:
                    known = (direction, *_difference(loss, weights, name, flat, idx, direction, h, base))
                    done.append(known)
                direction, below, above, rounding = known
            projection = float(g @ direction)
            # A kink at w itself (a ReLU input or a max-pool tie exactly at 0, common after a ReLU with zero
            # biases) has no derivative: the frameworks use a one-sided one (relu'(0) = 0), which lies between the
            # backward and forward differences, where a central difference would be their mean. So the projection
            # must lie in [min, max] of the two one-sided differences (equal up to O(h) where the loss is smooth);
            # the error is its distance from there, relative, with the rounding bound as its floor.
            lo, hi = min(below, above), max(below, above)
            miss = max(lo - projection, projection - hi, 0.0)
            scale = max(abs(projection), abs(lo), abs(hi)) + rounding / FD_RTOL
            # a loss flat in this direction to the last bit (both differences, the rounding floor and the
            # projection all exactly 0) agrees; 0/0 is not an error
            err = miss / scale if scale > 0 else (0.0 if miss == 0 else float("inf"))
            if math.isnan(lo) or math.isnan(hi) or math.isnan(projection):
                err = float("nan")
            check = checks[art.backend]
            check.checked += 1
            if not err <= FD_RTOL:  # NaN included
                check.ok = False
            if err >= check.error or math.isnan(err):
                check.worst, check.error = name, err
    model.load_weights(weights)
    return checks
