"""A framework backend's report holds the framework's own shapes, and the check of them can fail.

Every parameter shape and every layer's output shape in a framework backend's ``ShapeReport`` comes from that
framework's own inference (its dry run, trace or symbolic shape functions: ``source == "native"``), and the
compiled model compares each with the reference rules. So ``report.diff(infer_shapes(...)) == []`` below is a
comparison of two independent answers, and a backend that computes another shape at one layer, or skips one,
is caught with that layer named (the deliberately broken backends at the end).
"""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from cases import CASES
from deferinit import zoo
from deferinit.registry import load_backend


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer_shapes_are_the_frameworks_own(backend: str, case: object) -> None:
    spec, shape, dtype = case.make(), case.shape, case.dtype  # type: ignore[attr-defined]
    for abstract in (False, True):
        model = di.compile(spec, backend)
        x = di.ShapeDtype(shape, dtype) if abstract else case.data()  # type: ignore[attr-defined]
        report = model.apply_init(x, abstract=abstract)
        want = "reference" if backend == "numpy" else "native"
        assert {p: i.source for p, i in report.layers.items() if i.source != want} == {}
        assert report.diff(di.infer_shapes(spec, shape, dtype=dtype)) == []


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_zoo_layer_shapes_are_the_frameworks_own(backend: str, name: str) -> None:
    spec, shape = zoo.MODELS[name](), (2, *zoo.BOOK_INPUTS[name][1:])
    reference = di.infer_shapes(spec, shape)
    report = di.compile(spec, backend).apply_init(di.ShapeDtype(shape, reference.input_dtype), abstract=True)
    want = "reference" if backend == "numpy" else "native"
    assert {p: i.source for p, i in report.layers.items() if i.source != want} == {}
    assert report.diff(reference) == []


def test_varying_dims_stay_none(backend: str) -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1, activation="relu"), di.GlobalAvgPool2D(), di.Dense(3)])
    report = di.compile(spec, backend).apply_init(di.ShapeDtype((None, 2, None, None), "float32"), abstract=True)
    assert report.layers["0"].output_shape == (None, 4, None, None) and report.output_shape == (None, 3)
    assert report.diff(di.infer_shapes(spec, (None, 2, None, None))) == []


# ------------------------------------------------------------------------------------------ broken backends
SPEC = di.LazyModel([di.Dense(8, activation="relu"), di.Dense(8), di.Dense(3)])


def _broken(backend: str, **overrides: object) -> type:
    return type(f"Broken{backend}", (load_backend(backend),), dict(overrides))


def test_a_backend_that_computes_another_shape_is_caught_by_layer(backend: str) -> None:
    base = load_backend(backend)
    if backend == "numpy":  # the reference has no framework to ask: its layer shapes are the rules' own
        assert base._native_layer_shapes(base(SPEC), None, None, None, False) is None  # type: ignore[arg-type]
        return

    def wrong(self, native, x, inference, abstract):  # type: ignore[no-untyped-def]
        shapes = dict(base._native_layer_shapes(self, native, x, inference, abstract))
        shapes["1"] = (2, 7)  # what an adapter that dropped an output unit would observe
        return shapes

    model = _broken(backend, _native_layer_shapes=wrong)(SPEC)
    with pytest.raises(di.BackendError, match=r"computed \(2, 7\) at layer '1' \(Dense\) where the reference rules "
                                              r"give \(2, 8\)"):
        model.apply_init(np.zeros((2, 5), np.float32))
    assert not model.initialized  # nothing half-initialized


def test_a_backend_that_skips_a_layer_is_caught_by_layer(backend: str) -> None:
    base = load_backend(backend)
    if backend == "numpy":
        assert di.compile(SPEC, "numpy").apply_init(np.zeros((2, 5), np.float32)).layers["2"].source == "reference"
        return

    def skipping(self, native, x, inference, abstract):  # type: ignore[no-untyped-def]
        shapes = dict(base._native_layer_shapes(self, native, x, inference, abstract))
        del shapes["2"]
        return shapes

    model = _broken(backend, _native_layer_shapes=skipping)(SPEC)
    with pytest.raises(di.BackendError, match=r"gave no output shape for layer '2' \(Dense\)"):
        model.apply_init(di.ShapeDtype((2, 5), "float32"), abstract=True)


def test_a_transposed_kernel_is_found_at_its_layer(backend: str) -> None:
    """A backend that loads one square kernel transposed: its report is right, its numbers are not, and the
    layer-by-layer comparison with the reference names that layer first."""
    base = load_backend(backend)

    def transposing(self, weights):  # type: ignore[no-untyped-def]
        return base._set_weights(self, {**weights, "1.weight": np.ascontiguousarray(weights["1.weight"].T)})

    model = _broken(backend, _set_weights=transposing)(SPEC)
    reference = di.compile(SPEC, "numpy")
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal(p.shape).astype(np.float32)
               for n, p in di.infer_shapes(SPEC, (2, 5)).params.items()}
    model.load_weights(weights, input_shape=(2, 5))
    reference.load_weights(weights, input_shape=(2, 5))
    x = rng.standard_normal((2, 5)).astype(np.float32)
    got, want = model.intermediates(x), reference.intermediates(x)
    first = next(p for p in want if not np.allclose(got[p], want[p], rtol=1e-4, atol=1e-5))
    assert first == "1"
