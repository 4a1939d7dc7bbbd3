"""Honest reports: every shape a framework backend reports is its framework's own, and the checks that compare
them with the reference rules can fail.

(a) On every selected framework backend, for every spec of ``cases.py`` and every zoo model (at its book
    input, batch 2; abstract init where the model is big), each layer's output shape is ``source="native"``,
    the output shape is what the framework's own forward returns, and the report equals the reference rules'
    (:func:`deferinit.infer_shapes`). On numpy, the reference itself, every source is ``"reference"``.
(b) A deliberately broken backend is caught with the layer named: one that reports another shape for a layer,
    one that leaves a layer out, and one whose ``_set_weights`` transposes a kernel (parity, or the layer-by-layer
    comparison with the numpy reference, names that layer as the first divergent one).

The truth is independent of the adapter under test: the reference rules, and the numpy reference's forward.
These tests fail on a framework backend that does not implement ``_native_layer_shapes`` yet (its report's
layer shapes then come from the rules): that is what they are for. ``_ObservingNumpy`` below is a numpy
backend that observes its own forward as a framework backend must, so the test logic runs on numpy too.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pytest

import deferinit as di
from cases import CASES
from deferinit import registry, zoo
from deferinit.adapters.compiled import CompiledModel, ShapeDtype
from deferinit.errors import BackendError, fmt_shape
from deferinit.shapes import Inference

IDS = [c.id for c in CASES]
ZOO = zoo.parity_specs(vision=False)  # name -> (spec, book input with batch 2, dtype); the vision zoo has its own tests
BIG_PARAM_BYTES = 4 << 20  # above this (or a 224x224 input) a zoo model is initialized abstractly
BIG_INPUT = 100_000


def _backend_class(backend: str) -> type:
    return registry.load_backend(backend)


def _is_big(spec: di.LazyModel, shape: tuple, dtype: str) -> bool:
    ref = di.infer_shapes(spec, shape, dtype=dtype)
    return ref.param_bytes > BIG_PARAM_BYTES or int(np.prod(shape)) > BIG_INPUT


def _data(shape: tuple, dtype: str, seed: int = 0) -> np.ndarray:
    if dtype.startswith("int"):
        return np.random.default_rng(seed).integers(0, 20, size=shape).astype(dtype)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _observed(native: Any, x: Any, inference: Inference) -> dict[str, tuple]:
    """What the numpy reference's own forward computes at each layer position (and ``""``, the output)."""
    record: dict[str, np.ndarray] = {}
    y = native(np.asarray(x), False, record)
    shapes = {path: tuple(v.shape) for path, v in record.items()}
    shapes[""] = tuple(y.shape)
    return shapes


class _ObservingNumpy(registry.load_backend("numpy")):  # type: ignore[misc]
    """The numpy backend with ``_native_layer_shapes`` implemented as a framework backend must: by observing
    its own forward on the dummy input (concrete init only), never by copying the rules."""

    def _native_layer_shapes(self, native: Any, x: Any, inference: Inference,
                             abstract: bool) -> Mapping[str, tuple] | None:
        assert not abstract, "the numpy reference has no abstract forward to observe"
        return _observed(native, x, inference)


def _honest_class(backend: str) -> type:
    """The backend under test, or on numpy the observing stand-in for a framework backend."""
    if backend == "numpy":
        return _ObservingNumpy
    cls = _backend_class(backend)
    if cls._native_layer_shapes is CompiledModel._native_layer_shapes:
        pytest.fail(f"backend {backend} does not implement _native_layer_shapes: its report copies the reference "
                    f"rules' layer shapes (source='reference'), which no comparison can fault")
    return cls


def _check_native(model: CompiledModel, report: di.ShapeReport, spec: di.LazyModel, shape: tuple, dtype: str,
                  x: np.ndarray | None) -> None:
    ref = di.infer_shapes(spec, shape, dtype=dtype)
    assert report.diff(ref) == []
    assert list(report.layers) == list(ref.layers)
    wrong = {p: i.source for p, i in report.layers.items() if i.source != "native"}
    assert wrong == {}, f"layer shapes not from the framework: {wrong}"
    if model.backend != "numpy":  # the numpy stand-in above observes layers; its parameters are the rules'
        wrong = {n: p.source for n, p in report.params.items() if p.source != "native"}
        assert wrong == {}, f"parameter shapes not from the framework: {wrong}"
    if x is not None:  # the output shape is what the framework's own forward returns
        assert tuple(model.to_numpy(model(x)).shape) == report.output_shape


# ------------------------------------------------------------------------------------------ (a) honest reports
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_layer_shape_of_a_case_is_the_frameworks_own(backend: str, case: Any) -> None:
    spec, x = case.make(), case.data()
    if backend == "numpy":
        report = di.compile(spec, "numpy").apply_init(x)
        assert report.diff(di.infer_shapes(spec, case.shape, dtype=case.dtype)) == []
        assert {i.source for i in report.layers.values()} == {"reference"}
        assert {p.source for p in report.params.values()} <= {"reference"}
        backend_cls: type = _ObservingNumpy  # and the test logic, on a numpy backend that observes its forward
    else:
        backend_cls = _honest_class(backend)
    model = backend_cls(case.make())
    report = model.apply_init(x, init="xavier_uniform", key=0)
    _check_native(model, report, spec, case.shape, case.dtype, x)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_layer_shape_of_a_zoo_model_is_the_frameworks_own(backend: str, name: str) -> None:
    spec, shape, dtype = ZOO[name]
    big = _is_big(spec, shape, dtype)
    if backend == "numpy":
        report = di.compile(spec, "numpy").apply_init(ShapeDtype(shape, dtype), abstract=True)
        assert report.diff(di.infer_shapes(spec, shape, dtype=dtype)) == []
        assert {i.source for i in report.layers.values()} == {"reference"}
        if big:  # the observing stand-in runs the reference forward: small models only
            return
        model: CompiledModel = _ObservingNumpy(spec)
    else:
        model = _honest_class(backend)(spec)
    x = None if big else _data(shape, dtype)
    report = model.apply_init(ShapeDtype(shape, dtype), abstract=True) if big else model.apply_init(x)
    _check_native(model, report, spec, shape, dtype, x)


# ------------------------------------------------------------------------------------ (b) broken backends caught
BROKEN_SPEC = di.LazyModel([di.Conv2D(4, 3, padding=1), di.ReLU(), di.MaxPool2D(2), di.Flatten(), di.Dense(8),
                            di.Dense(3)])
BROKEN_INPUT = (2, 3, 8, 8)


def _breaking(backend: str, change: Any) -> type:
    """The backend under test with ``change(shapes)`` applied to its own layer shapes."""
    base = _honest_class(backend)

    class Broken(base):  # type: ignore[misc, valid-type]
        def _native_layer_shapes(self, native: Any, x: Any, inference: Inference,
                                 abstract: bool) -> Mapping[str, tuple] | None:
            shapes = super()._native_layer_shapes(native, x, inference, abstract)
            assert shapes is not None
            return change(dict(shapes))

    return Broken


def _grown(shapes: dict[str, tuple], path: str) -> dict[str, tuple]:
    shape = shapes[path]
    shapes[path] = shape[:1] + (shape[1] + 1,) + shape[2:]
    return shapes


@pytest.mark.parametrize(("path", "kind"), [("0", "Conv2D"), ("2", "MaxPool2D"), ("4", "Dense")])
def test_a_backend_reporting_another_layer_shape_is_caught_with_the_layer_named(backend: str, path: str,
                                                                                kind: str) -> None:
    model = _breaking(backend, lambda s: _grown(s, path))(BROKEN_SPEC)
    with pytest.raises(BackendError, match=rf"layer '{path}' \({kind}\)") as caught:
        model.apply_init(_data(BROKEN_INPUT, "float32"))
    ref = di.infer_shapes(BROKEN_SPEC, BROKEN_INPUT).layers[path].output_shape
    assert fmt_shape(ref) in str(caught.value)  # the reference's shape, as expected
    assert not model.initialized  # nothing was swapped in


def test_a_backend_dropping_a_layer_is_caught_with_the_layer_named(backend: str) -> None:
    model = _breaking(backend, lambda s: {p: v for p, v in s.items() if p != "4"})(BROKEN_SPEC)
    with pytest.raises(BackendError, match=r"no output shape for layer '4' \(Dense\)"):
        model.apply_init(_data(BROKEN_INPUT, "float32"))
    assert not model.initialized


def test_a_backend_reporting_another_output_shape_is_caught(backend: str) -> None:
    model = _breaking(backend, lambda s: _grown(s, ""))(BROKEN_SPEC)
    with pytest.raises(BackendError, match=r"at the model's output where the reference rules give \(2, 3\)"):
        model.apply_init(_data(BROKEN_INPUT, "float32"))


TRANSPOSE_SPEC = di.LazyModel([di.Dense(8, activation="tanh"), di.Dense(8, activation="tanh"), di.Dense(8),
                               di.Dense(3)])


def _transposing(backend: str, name: str) -> type:
    """The backend under test with one (square) kernel written transposed: shapes all agree, values do not."""
    base = _backend_class(backend)

    class Transposing(base):  # type: ignore[misc, valid-type]
        def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
            bad = dict(weights)
            bad[name] = np.ascontiguousarray(bad[name].T)
            super()._set_weights(bad)

    return Transposing


def _first_divergent(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> str | None:
    for path, want in ref.items():  # the reference's execution order
        if not np.allclose(got[path], want, atol=1e-5, rtol=1e-4):
            return path
    return None


def test_a_transposed_kernel_is_caught_at_its_layer(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _data((2, 8), "float32")
    reference = di.compile(TRANSPOSE_SPEC, "numpy")
    reference.apply_init(x, init="xavier_uniform", key=3)
    weights = reference.export_weights()
    assert not np.allclose(weights["1.weight"], weights["1.weight"].T)  # the transposition changes something
    broken = _transposing(backend, "1.weight")(TRANSPOSE_SPEC)
    broken.load_weights(weights, input_shape=x.shape)
    assert _first_divergent(reference.intermediates(x), broken.intermediates(x)) == "1"
    honest = _backend_class(backend)(TRANSPOSE_SPEC)  # the comparison passes without the fault
    honest.load_weights(weights, input_shape=x.shape)
    assert _first_divergent(reference.intermediates(x), honest.intermediates(x)) is None
    if backend == "numpy":
        return
    real, broken_cls = registry.load_backend, _transposing(backend, "1.weight")
    monkeypatch.setattr(registry, "load_backend",
                        lambda name: broken_cls if registry.resolve(name) == backend else real(name))
    result = di.parity(TRANSPOSE_SPEC, x, [backend], training=False, gradients=False)
    assert not result.passed
    assert result.results[backend].first_divergence == "1"
    assert any("first at layer '1'" in line for line in result.failures())


def test_varying_dims_stay_none(backend: str) -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1, activation="relu"), di.GlobalAvgPool2D(), di.Dense(3)])
    report = di.compile(spec, backend).apply_init(di.ShapeDtype((None, 2, None, None), "float32"), abstract=True)
    assert report.layers["0"].output_shape == (None, 4, None, None) and report.output_shape == (None, 3)
    assert report.diff(di.infer_shapes(spec, (None, 2, None, None))) == []
