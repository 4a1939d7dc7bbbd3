"""Cross-framework parity: same weights in, same numbers out, checked layer by layer.

Two ways to use it:

* In one process: :func:`parity` compiles the spec on each backend, gives every backend the reference's
  canonical weights, and compares outputs, intermediate outputs, initial weights, a training-mode step
  (BatchNorm statistics) and gradients.
* Across processes (MXNet cannot share a virtualenv with TensorFlow or JAX): :func:`make_artifact` writes one
  ``.npz`` per backend (report, initial and loaded weights, input, outputs, intermediates, gradients,
  training-mode statistics; see :mod:`deferinit.parity_files`), and :func:`compare_artifacts` compares
  artifacts made anywhere. Artifacts made from a reference artifact (``source=``) reuse its input and
  weights (a portable initializer's draw is not stored: it is drawn again and checked against the reference's
  digests, see :mod:`deferinit.parity_files`), so nothing silently depends on random streams agreeing
  across NumPy versions; the portable initializers' own bit-identity is checked separately (``init_identical``).

A comparison that compared nothing (only the reference) fails, and a column not compared shows ``-``.
Gradients are compared pairwise between the frameworks (each against every other, the worst pair reported) and
each against the reference's own finite differences (:mod:`deferinit.parity_fd`), so even a single framework's
gradients are checked against something it did not compute.

Errors are measured as ``max |a - b|`` and ``max |a - b| / (atol/rtol + |b|)``; a value passes when
``|a - b| <= atol + rtol * |b|`` (numpy's ``allclose``). Defaults (atol 1e-5, rtol 1e-4) suit float32 nets of
a few layers; deep convolutional nets accumulate rounding differences between BLAS/oneDNN/XLA kernels, see
the README for measured values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import SpecError
from .parity_artifacts import GRAD_SAMPLE, Artifact, make_artifact, sample_like
from .parity_branches import branches_of, crossings, kink_inputs
from .parity_fd import FD_RTOL, finite_difference_checks
from .parity_files import FORMAT, load_artifact, save_artifact
from .spec import LazyModel

__all__ = ["parity", "make_artifact", "save_artifact", "load_artifact", "compare_artifacts", "ParityReport", "BackendParity",
           "Artifact", "DEFAULT_ATOL", "DEFAULT_RTOL", "FORMAT", "GRAD_SAMPLE"]

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


# ------------------------------------------------------------------------------------------------ comparison
def _errors(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
        return float("inf"), float("inf"), False  # complex would be cast to its real part: equal by accident
    if a.size == 0:
        return 0.0, 0.0, True
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return float("nan"), float("nan"), False  # NaN == NaN is no agreement
    diff = np.abs(a64 - b64)
    rel = diff / (np.abs(b64) + atol / max(rtol, 1e-30))
    ok = bool(np.all(diff <= atol + rtol * np.abs(b64)))
    return float(diff.max()), float(rel.max()), ok


def _worst_ratio(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[float, float]:
    """The largest ``|a - b| / (atol + rtol |b|)`` over the entries (above 1: out of tolerance) and that entry's
    absolute gap; NaN where the shapes differ or a value is not finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan"), float("nan")
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - b)
    ratio = diff / (atol + rtol * np.abs(b))
    i = int(np.argmax(ratio))
    return float(ratio.flat[i]), float(diff.flat[i])


def _errors_of(a: Any, b: Any, atol: float, rtol: float) -> tuple[float, float, bool]:
    """As :func:`_errors`, over a tuple of outputs (a graph spec's) too: the worst of each, all within tolerance."""
    if not isinstance(b, tuple):
        return _errors(a, b, atol, rtol) if not isinstance(a, tuple) else (float("inf"), float("inf"), False)
    if not isinstance(a, tuple) or len(a) != len(b):
        return float("inf"), float("inf"), False
    errs = [_errors(x, y, atol, rtol) for x, y in zip(a, b)]
    worst = max(range(len(errs)), key=lambda i: math.inf if math.isnan(errs[i][0]) else errs[i][0])
    return errs[worst][0], max(e[1] for e in errs), all(e[2] for e in errs)


def _same_input(a: Any, b: Any) -> bool:
    xs, ys = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return len(xs) == len(ys) and isinstance(a, tuple) == isinstance(b, tuple) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(xs, ys))


@dataclass
class BackendParity:
    """One backend against the reference (and, for gradients, against the other frameworks)."""

    backend: str
    max_abs: float
    max_rel: float
    ok: bool
    first_divergence: str | None = None   # first layer (in execution order) out of tolerance
    first_divergence_error: float = 0.0
    init_identical: bool | None = None     # portable init gave the reference's bits
    shapes_equal: bool = True
    shape_diff: list[str] = field(default_factory=list)
    train_max_abs: float | None = None     # training-mode output and updated statistics
    train_ok: bool | None = None
    grad_max_abs: float | None = None      # gradients vs every other framework's (the worst pair)
    grad_ok: bool | None = None
    grad_worst: str | None = None
    grad_partner: str | None = None        # the framework of that worst pair
    grad_worst_error: float | None = None  # the absolute gap at grad_worst's entry furthest out of tolerance
    # frameworks whose forward took another branch of a non-smooth op (a ReLU input on the other side of its kink,
    # another entry of a max-pool window): their gradients differ from this one's for that reason and are not
    # compared with it ("torch (1 value, first at 'layer')")
    grad_kink_crossings: list[str] = field(default_factory=list)
    grad_fd_error: float | None = None     # projected gradients vs the reference's finite differences (relative)
    grad_fd_ok: bool | None = None
    grad_fd_worst: str | None = None

    @property
    def passed(self) -> bool:
        return (self.ok and self.shapes_equal and self.init_identical is not False and self.train_ok is not False
                and self.grad_ok is not False and self.grad_fd_ok is not False)


@dataclass
class ParityReport:
    reference: str
    atol: float
    rtol: float
    results: dict[str, BackendParity]
    grad_anchor: str | None = None
    note: str = ""  # why nothing was compared, when nothing was

    @property
    def passed(self) -> bool:
        """Every backend agrees with the reference, and there was at least one to compare: a comparison that
        compared nothing proves nothing."""
        return bool(self.results) and all(r.passed for r in self.results.values())

    @property
    def grads_compared(self) -> bool:
        return any(r.grad_ok is not None or r.grad_fd_ok is not None for r in self.results.values())

    def failures(self) -> list[str]:
        if not self.results:
            return [f"nothing was compared with the {self.reference} reference: "
                    + (self.note or "no other backend's result was given")]
        lines = []
        for name, r in self.results.items():
            if not r.shapes_equal:
                lines.append(f"{name}: shape report differs: {'; '.join(r.shape_diff)}")
            if not r.ok:
                where = f" first at layer '{r.first_divergence}'" if r.first_divergence else ""
                how = "holds NaN/inf values (this backend's or the reference's)" if math.isnan(r.max_abs) else \
                    f"differs from {self.reference} by {r.max_abs:.3g}"
                lines.append(f"{name}: output {how}{where}")
            if r.init_identical is False:
                lines.append(f"{name}: portable initialization is not bit-identical to {self.reference}")
            if r.train_ok is False:
                lines.append(f"{name}: training-mode step differs by {r.train_max_abs:.3g}")
            if r.grad_ok is False:
                gap = r.grad_worst_error if r.grad_worst_error is not None else r.grad_max_abs
                lines.append(f"{name}: gradient of '{r.grad_worst}' differs from {r.grad_partner}'s by {gap:.3g}"
                             + (f" (largest gap of any gradient: {r.grad_max_abs:.3g})"
                                if r.grad_max_abs is not None and gap is not None and r.grad_max_abs > gap else ""))
            if r.grad_fd_ok is False:
                lines.append(f"{name}: gradient of '{r.grad_fd_worst}' differs from the {self.reference} reference's "
                             f"finite differences by {r.grad_fd_error:.3g} (relative; tolerance {FD_RTOL:g})")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "atol": self.atol, "rtol": self.rtol, "grad_anchor": self.grad_anchor,
                "passed": self.passed, "failures": self.failures(),
                "results": {k: vars(v) | {"passed": v.passed} for k, v in self.results.items()}}

    def __str__(self) -> str:
        head = ["backend", "max abs err", "max rel err", "first divergent layer", "init bits", "train step",
                "grad err", "grad vs fd", "result"]
        rows = [head]
        for name, r in self.results.items():
            rows.append([name, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", r.first_divergence or "-",
                         {True: "identical", False: "DIFFER", None: "-"}[r.init_identical],
                         "-" if r.train_max_abs is None else f"{r.train_max_abs:.2e}",
                         "-" if r.grad_max_abs is None else f"{r.grad_max_abs:.2e}",
                         "-" if r.grad_fd_error is None else f"{r.grad_fd_error:.2e}",
                         "ok" if r.passed else "FAIL"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        grads = "" if not self.grads_compared else \
            "; gradients pairwise between frameworks and against the reference's finite differences"
        lines = [f"Parity against {self.reference} (atol {self.atol:g}, rtol {self.rtol:g}{grads})"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        if not self.results:
            lines.append("(nothing compared: " + (self.note or "no other backend's result was given") + ")")
        lines += [f"{name}: gradients not compared with {', '.join(r.grad_kink_crossings)}: their forwards took another "
                  f"branch at a ReLU kink or max-pool window" for name, r in self.results.items() if r.grad_kink_crossings]
        return "\n".join(lines)


def compare_artifacts(artifacts: Iterable[Artifact | str | Path], *, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL, grad_atol: float | None = None,
                      train_atol: float | None = None) -> ParityReport:
    """Compare artifacts (from any processes) with the numpy reference among them. ``grad_atol`` (default
    ``10 * atol``) and ``train_atol`` (default ``atol``) loosen only the gradients or only the training-mode step."""
    arts = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]
    refs = [a for a in arts if a.backend == "numpy"]
    if not refs:
        raise SpecError("parity: expected one artifact from the numpy reference backend, received "
                        + ", ".join(a.backend for a in arts))
    ref = refs[0]
    for a in arts:
        if a.spec != ref.spec:
            raise SpecError(f"parity: artifacts of different specs ({a.backend} vs numpy)")
    grad_arts = [a for a in arts if a.gradients and a is not ref]
    gtol = grad_atol if grad_atol is not None else atol * 10
    fd = finite_difference_checks(ref, grad_arts)
    kinks = kink_inputs(ref.intermediates)
    channels_last = getattr(ref.report, "data_format", "channels_first") == "channels_last"
    # recorded by the producer from its full intermediates (a file may hold a sample of them), else read here
    branches = {a.backend: a.branches if a.meta.get("branches") else branches_of(a, kinks, channels_last)
                for a in grad_arts}
    results = {}
    for a in arts:
        if a is ref:
            continue
        if not _same_input(a.input, ref.input):
            raise SpecError(f"parity: the {a.backend} artifact ran on another input than the reference; make it "
                            f"from the reference artifact")
        max_abs, max_rel, ok = _errors_of(a.output, ref.output, atol, rtol)
        first, first_err = None, 0.0
        for path, want in ref.intermediates.items():
            got = a.intermediates.get(path)
            if got is None:
                continue
            err, _, layer_ok = _errors(got, sample_like(path, want, got), atol, rtol)
            if not layer_ok:
                first, first_err = path, err
                break
        diff = a.report.diff(ref.report)
        init_same = None
        if a.meta.get("init") not in (None, "None") and a.init and ref.init:
            init_same = a.init == ref.init and list(a.init) == list(ref.init)
        res = BackendParity(a.backend, max_abs, max_rel, ok, first, first_err, init_same, not diff, diff)
        if a.train_output is not None and ref.train_output is not None:
            ttol = train_atol if train_atol is not None else atol
            errs = [_errors_of(a.train_output, ref.train_output, ttol, rtol)]
            errs += [_errors(a.train_state[k], ref.train_state[k], ttol, rtol) for k in ref.train_state
                     if k in a.train_state]
            res.train_max_abs = max((e[0] for e in errs), key=lambda v: math.inf if math.isnan(v) else v)
            res.train_ok = all(e[2] for e in errs) and set(a.train_state) == set(ref.train_state)
        partners = [b for b in grad_arts if b is not a] if a.gradients else []
        # Two frameworks whose float32 forwards took different branches of a non-smooth op (an activation input
        # within ~1e-7 of a ReLU's kink, two entries of a max-pool window within ~1e-7 of each other) have
        # different gradients, each right for the values it computed: such a pair is reported, not compared;
        # the finite differences still check both.
        crossed = [(b.backend, *crossings(branches[a.backend], branches[b.backend])) for b in partners]
        res.grad_kink_crossings = [f"{name} ({n} value{'s' if n > 1 else ''}, first at '{layer}')"
                                   for name, n, layer in crossed if n]
        partners = [b for b, (_, n, _) in zip(partners, crossed) if not n]
        if partners:  # pairwise: every other framework's gradients, the worst pair reported
            worst, worst_err, all_ok, partner, max_abs = None, 0.0, True, None, 0.0
            worst_ratio = -1.0
            for b in partners:
                all_ok &= set(a.gradients) == set(b.gradients)
                for k, g in b.gradients.items():
                    got = a.gradients.get(k, np.full_like(g, np.inf))
                    err, _, g_ok = _errors(got, g, gtol, rtol * 10)
                    all_ok &= g_ok
                    max_abs = err if math.isnan(err) or err > max_abs else max_abs
                    # the entry furthest out of tolerance names the failure (not the largest absolute gap,
                    # which on a gradient of 900 is a rounding gap well inside its relative tolerance)
                    ratio, ratio_err = _worst_ratio(got, g, gtol, rtol * 10)
                    if ratio >= worst_ratio or math.isnan(ratio):
                        worst, worst_err, partner, worst_ratio = k, ratio_err, b.backend, ratio
            res.grad_max_abs, res.grad_ok, res.grad_worst, res.grad_partner = max_abs, all_ok, worst, partner
            res.grad_worst_error = worst_err
        check = fd.get(a.backend)
        if check is not None and check.checked:
            res.grad_fd_error, res.grad_fd_ok, res.grad_fd_worst = check.error, check.ok, check.worst
        elif a.gradients:  # gradients recorded, but no parameter could be compared: that is no pass
            res.grad_fd_ok, res.grad_fd_worst = False, "(none compared)"
            res.grad_fd_error = float("nan")
        results[a.backend] = res
    note = "" if results else f"only the {ref.backend} reference artifact was given; add artifacts of other " \
                              f"backends (deferinit parity run SPEC --backend NAME --from REFERENCE.npz)"
    return ParityReport("numpy", atol, rtol, results, None, note)


def parity(spec: LazyModel, dummy_input: Any, backends: Sequence[str] | None = None, *, key: int = 0,
           init: Any = "xavier_uniform", atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           training: bool = True, gradients: bool = True) -> ParityReport:
    """Run ``spec`` on each backend (default: every installed one) with the reference's weights and compare
    with the framework-free reference, layer by layer. ``dummy_input`` is an array or an input shape; for a graph
    spec (``LazyModel(inputs=, outputs=)``), a tuple of arrays, one per input (outputs may be a tuple too)."""
    from .registry import available_backends, resolve

    if not isinstance(spec, LazyModel):
        raise SpecError(f"parity: expected a deferinit.LazyModel, received {type(spec).__name__}")
    names = [resolve(b) for b in (backends if backends is not None else available_backends())]
    names = [n for n in dict.fromkeys(names) if n != "numpy"]
    if isinstance(dummy_input, tuple) and dummy_input and all(isinstance(d, int) for d in dummy_input) and \
            not hasattr(spec, "input_names"):
        ref = make_artifact(spec, "numpy", input_shape=dummy_input, init=init, key=key, training=training)
    else:
        ref = make_artifact(spec, "numpy", dummy_input, init=init, key=key, training=training)
    arts = [ref] + [make_artifact(spec, n, source=ref, init=init, key=key, training=training, gradients=gradients)
                    for n in names]
    result = compare_artifacts(arts, atol=atol, rtol=rtol)
    if not names:
        from .registry import framework_backends

        result.note = (f"backends={list(backends)!r} names no framework backend" if backends is not None else
                       f"no framework backend is installed here (of {', '.join(framework_backends())}); install "
                       f"one, e.g. pip install 'deferinit[torch]'")
    return result
