"""Cross-framework parity: same weights in, same numbers out, checked layer by layer.

Two ways to use it:

* In one process: :func:`parity` compiles the spec on each backend, gives every backend the reference's
  canonical weights, and compares outputs, intermediate outputs, initial weights, a training-mode step
  (BatchNorm statistics) and gradients.
* Across processes (MXNet cannot share a virtualenv with TensorFlow or JAX): :func:`make_artifact` writes one
  ``.npz`` per backend (report, initial and loaded weights, input, outputs, intermediates, gradients,
  training-mode statistics), and :func:`compare_artifacts` compares artifacts made anywhere. Artifacts made
  from a reference artifact (``source=``) reuse its input and weights, so nothing depends on random streams
  agreeing across NumPy versions; the portable initializers' own bit-identity is checked separately
  (``init_identical``).

Errors are measured as ``max |a - b|`` and ``max |a - b| / (atol/rtol + |b|)``; a value passes when
``|a - b| <= atol + rtol * |b|`` (numpy's ``allclose``). Defaults (atol 1e-5, rtol 1e-4) suit float32 nets of
a few layers; deep convolutional nets accumulate rounding differences between BLAS/oneDNN/XLA kernels, see
the README for measured values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ShapeMismatchError, SpecError, WeightsError
from .report import ShapeReport
from .spec import LazyModel

__all__ = ["parity", "make_artifact", "save_artifact", "load_artifact", "compare_artifacts", "ParityReport", "BackendParity",
           "Artifact", "DEFAULT_ATOL", "DEFAULT_RTOL"]

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
FORMAT = "deferinit.parity"


# ------------------------------------------------------------------------------------------------ artifacts
@dataclass
class Artifact:
    """Everything one backend produced for one spec and input."""

    backend: str
    spec: dict
    report: ShapeReport
    input: np.ndarray
    init: dict[str, str]                 # sha256 of each weight after apply_init(init, key) on this backend
    weights: dict[str, np.ndarray]       # the weights every backend ran with (stored by the reference only)
    output: np.ndarray
    intermediates: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    train_output: np.ndarray | None = None
    train_state: dict[str, np.ndarray] = field(default_factory=dict)  # non-trainable params after one step
    meta: dict = field(default_factory=dict)


def _input_for(spec: LazyModel, shape: Sequence[int], seed: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        from .shapes import plan

        first = next(plan(spec).leaves())
        high = getattr(first.layer, "num_embeddings", 10)
        return rng.integers(0, high, size=tuple(shape)).astype(dtype)
    return rng.standard_normal(tuple(shape)).astype(np.float32)


def make_artifact(spec: LazyModel, backend: str, x: Any = None, *, input_shape: Sequence[int] | None = None,
                  seed: int = 0, dtype: str = "float32", init: Any = "xavier_uniform", key: int = 0,
                  source: Artifact | None = None, training: bool = True, gradients: bool = True) -> Artifact:
    """Run ``spec`` on ``backend`` and record what the parity check compares.

    With ``source`` (usually the numpy reference's artifact), its input and weights are used; otherwise the
    input is ``x`` or drawn from ``seed``, and the weights are this backend's own portable initialization.
    """
    from .registry import compile, resolve

    backend = resolve(backend)
    if source is not None:
        x = source.input
    elif x is None:
        if input_shape is None:
            raise SpecError("parity: expected an input array or input_shape, received neither")
        x = _input_for(spec, input_shape, seed, dtype)
    x = np.asarray(x)
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ShapeMismatchError("parity: the input expected finite values, received NaN/inf "
                                     "(comparisons of non-finite outputs are meaningless)")
    model = compile(spec, backend)
    report = model.apply_init(x, init=init, key=key)
    initial = model.export_weights()
    digests = {name: _digest(arr) for name, arr in initial.items()}
    weights = source.weights if source is not None else initial
    del initial
    model.load_weights(weights)
    out = np.asarray(model.to_numpy(model(x)), dtype=np.float32)
    inter = {k: np.asarray(v, dtype=np.float32) for k, v in model.intermediates(x).items()}
    grads: dict[str, np.ndarray] = {}
    if gradients and backend != "numpy":
        grads = {k: _sample(k, np.asarray(v, dtype=np.float32)) for k, v in model.gradients(x).items()}
    train_out, train_state = None, {}
    from .layers import Dropout
    from .shapes import plan

    if any(isinstance(n.layer, Dropout) and n.layer.rate > 0 for n in plan(spec).walk()):
        training = False  # dropout masks come from each framework's own random stream: not comparable
    if training:
        model.load_weights(weights)
        train_out = np.asarray(model.to_numpy(model(x, training=True)), dtype=np.float32)
        after = model.export_weights()
        train_state = {n: after[n] for n, p in report.params.items() if not p.trainable}
    return Artifact(backend, spec.to_dict(), report, x, digests, dict(weights) if source is None else {}, out, inter,
                    grads, train_out, train_state, {"init": str(init), "key": key, "seed": seed})


GRAD_SAMPLE = 65536


def _digest(arr: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(arr, dtype=np.float32)
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()


def _sample(name: str, grad: np.ndarray) -> np.ndarray:
    """Gradients of big parameters are compared on a fixed sample of entries (the same on every backend),
    so artifacts of VGG-sized models stay small."""
    flat = grad.reshape(-1)
    if flat.size <= GRAD_SAMPLE:
        return grad
    import zlib

    idx = np.random.default_rng(zlib.crc32(name.encode())).choice(flat.size, GRAD_SAMPLE, replace=False)
    return flat[np.sort(idx)]


def save_artifact(art: Artifact, path: str | Path) -> Path:
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"input": art.input, "output": art.output}
    for prefix, group in (("weights", art.weights), ("inter", art.intermediates),
                          ("grad", art.gradients), ("train_state", art.train_state)):
        for name, arr in group.items():
            arrays[f"{prefix}/{name}"] = np.asarray(arr)
    if art.train_output is not None:
        arrays["train_output"] = art.train_output
    meta = {"format": FORMAT, "version": 1, "backend": art.backend, "spec": art.spec,
            "report": art.report.to_dict(), "inter_order": list(art.intermediates), "meta": art.meta,
            "init": art.init}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_artifact(path: str | Path) -> Artifact:
    from .weights import _read_npz

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: expected a parity artifact (.npz), received a path that does not exist")
    data = _read_npz(path)
    try:
        meta = json.loads(bytes(data.pop("__meta__")).decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{path}: expected a deferinit parity artifact, received an .npz without its header") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: expected format {FORMAT!r}, received {meta.get('format')!r}")
    groups: dict[str, dict[str, np.ndarray]] = {"weights": {}, "inter": {}, "grad": {}, "train_state": {}}
    for key, arr in data.items():
        prefix, _, name = key.partition("/")
        if prefix in groups and name:
            groups[prefix][name] = arr
    inter = {k: groups["inter"][k] for k in meta["inter_order"] if k in groups["inter"]}
    return Artifact(meta["backend"], meta["spec"], ShapeReport.from_dict(meta["report"]), data["input"],
                    dict(meta.get("init", {})), groups["weights"], data["output"], inter, groups["grad"],
                    data.get("train_output"), groups["train_state"], meta.get("meta", {}))


# ------------------------------------------------------------------------------------------------ comparison
def _errors(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf"), float("inf"), False
    if a64.size == 0:
        return 0.0, 0.0, True
    diff = np.abs(a64 - b64)
    rel = diff / (np.abs(b64) + atol / max(rtol, 1e-30))
    ok = bool(np.all(diff <= atol + rtol * np.abs(b64)))
    return float(diff.max()), float(rel.max()), ok


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
    grad_max_abs: float | None = None      # gradients vs the gradient anchor backend
    grad_ok: bool | None = None
    grad_worst: str | None = None

    @property
    def passed(self) -> bool:
        return (self.ok and self.shapes_equal and self.init_identical is not False and self.train_ok is not False
                and self.grad_ok is not False)


@dataclass
class ParityReport:
    reference: str
    atol: float
    rtol: float
    results: dict[str, BackendParity]
    grad_anchor: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results.values())

    def failures(self) -> list[str]:
        lines = []
        for name, r in self.results.items():
            if not r.shapes_equal:
                lines.append(f"{name}: shape report differs: {'; '.join(r.shape_diff)}")
            if not r.ok:
                where = f" first at layer '{r.first_divergence}'" if r.first_divergence else ""
                lines.append(f"{name}: output differs from {self.reference} by {r.max_abs:.3g}{where}")
            if r.init_identical is False:
                lines.append(f"{name}: portable initialization is not bit-identical to {self.reference}")
            if r.train_ok is False:
                lines.append(f"{name}: training-mode step differs by {r.train_max_abs:.3g}")
            if r.grad_ok is False:
                lines.append(f"{name}: gradient of '{r.grad_worst}' differs from {self.grad_anchor} by "
                             f"{r.grad_max_abs:.3g}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "atol": self.atol, "rtol": self.rtol, "grad_anchor": self.grad_anchor,
                "passed": self.passed, "results": {k: vars(v) | {"passed": v.passed} for k, v in self.results.items()}}

    def __str__(self) -> str:
        head = ["backend", "max abs err", "max rel err", "first divergent layer", "init bits", "train step",
                "grad err", "result"]
        rows = [head]
        for name, r in self.results.items():
            rows.append([name, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", r.first_divergence or "-",
                         {True: "identical", False: "DIFFER", None: "-"}[r.init_identical],
                         "-" if r.train_max_abs is None else f"{r.train_max_abs:.2e}",
                         "-" if r.grad_max_abs is None else f"{r.grad_max_abs:.2e}",
                         "ok" if r.passed else "FAIL"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"Parity against {self.reference} (atol {self.atol:g}, rtol {self.rtol:g}"
                 + (f"; gradients against {self.grad_anchor}" if self.grad_anchor else "") + ")"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)


def compare_artifacts(artifacts: Iterable[Artifact | str | Path], *, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL, grad_atol: float | None = None) -> ParityReport:
    """Compare artifacts (from any processes) with the numpy reference among them."""
    arts = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]
    refs = [a for a in arts if a.backend == "numpy"]
    if not refs:
        raise SpecError("parity: expected one artifact from the numpy reference backend, received "
                        + ", ".join(a.backend for a in arts))
    ref = refs[0]
    for a in arts:
        if a.spec != ref.spec:
            raise SpecError(f"parity: artifacts of different specs ({a.backend} vs numpy)")
    grad_arts = [a for a in arts if a.gradients]
    anchor = grad_arts[0] if grad_arts else None
    gtol = grad_atol if grad_atol is not None else atol * 10
    results = {}
    for a in arts:
        if a is ref:
            continue
        if a.input.shape != ref.input.shape or not np.array_equal(a.input, ref.input):
            raise SpecError(f"parity: the {a.backend} artifact ran on another input than the reference; make it "
                            f"from the reference artifact")
        max_abs, max_rel, ok = _errors(a.output, ref.output, atol, rtol)
        first, first_err = None, 0.0
        for path, want in ref.intermediates.items():
            got = a.intermediates.get(path)
            if got is None:
                continue
            err, _, layer_ok = _errors(got, want, atol, rtol)
            if not layer_ok:
                first, first_err = path, err
                break
        diff = a.report.diff(ref.report)
        init_same = None
        if a.meta.get("init") not in (None, "None") and a.init and ref.init:
            init_same = a.init == ref.init and list(a.init) == list(ref.init)
        res = BackendParity(a.backend, max_abs, max_rel, ok, first, first_err, init_same, not diff, diff)
        if a.train_output is not None and ref.train_output is not None:
            errs = [_errors(a.train_output, ref.train_output, atol, rtol)]
            errs += [_errors(a.train_state[k], ref.train_state[k], atol, rtol) for k in ref.train_state
                     if k in a.train_state]
            res.train_max_abs = max(e[0] for e in errs)
            res.train_ok = all(e[2] for e in errs) and set(a.train_state) == set(ref.train_state)
        if anchor is not None and a.gradients and a is not anchor:
            worst, worst_err, all_ok = None, 0.0, set(a.gradients) == set(anchor.gradients)
            for k, g in anchor.gradients.items():
                err, _, g_ok = _errors(a.gradients.get(k, np.full_like(g, np.inf)), g, gtol, rtol * 10)
                all_ok &= g_ok
                if err >= worst_err:
                    worst, worst_err = k, err
            res.grad_max_abs, res.grad_ok, res.grad_worst = worst_err, all_ok, worst
        elif a is anchor:
            res.grad_max_abs, res.grad_ok = 0.0, True
        results[a.backend] = res
    return ParityReport("numpy", atol, rtol, results, anchor.backend if anchor else None)


def parity(spec: LazyModel, dummy_input: Any, backends: Sequence[str] | None = None, *, key: int = 0,
           init: Any = "xavier_uniform", atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           training: bool = True, gradients: bool = True) -> ParityReport:
    """Run ``spec`` on each backend (default: every installed one) with the reference's weights and compare
    with the framework-free reference, layer by layer. ``dummy_input`` is an array or an input shape."""
    from .registry import available_backends, resolve

    if not isinstance(spec, LazyModel):
        raise SpecError(f"parity: expected a deferinit.LazyModel, received {type(spec).__name__}")
    names = [resolve(b) for b in (backends if backends is not None else available_backends())]
    names = [n for n in dict.fromkeys(names) if n != "numpy"]
    if isinstance(dummy_input, tuple) and all(isinstance(d, int) for d in dummy_input):
        ref = make_artifact(spec, "numpy", input_shape=dummy_input, init=init, key=key, training=training)
    else:
        ref = make_artifact(spec, "numpy", dummy_input, init=init, key=key, training=training)
    arts = [ref] + [make_artifact(spec, n, source=ref, init=init, key=key, training=training, gradients=gradients)
                    for n in names]
    return compare_artifacts(arts, atol=atol, rtol=rtol)
