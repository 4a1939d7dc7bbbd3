"""Honest reports on MXNet: every layer shape in the report is MXNet's own (its symbolic shape inference of the
graph traced in apply_init's dry run, or of the abstract trace), checked against the reference rules, and a wrong
native shape is caught with the layer named."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID, CASES
from deferinit import zoo
from deferinit.adapters import rules_cache
from deferinit.adapters.mxnet import graph


@pytest.fixture(autouse=True)
def _fresh_shared_cache() -> None:
    """MXNet's layer shapes are kept per equal spec and input (``_framework_once``): the tests below that break
    MXNet's answer need it asked afresh, not an equal spec's answer from an earlier test."""
    rules_cache._SHARED.clear()


def _native_and_equal(report: di.ShapeReport, spec: di.LazyModel, shape: tuple, dtype: str) -> None:
    ref = di.infer_shapes(spec, shape, dtype=dtype)
    assert report.diff(ref) == []
    assert set(report.layers) == set(ref.layers)
    assert {p: info.source for p, info in report.layers.items()} == {p: "native" for p in ref.layers}
    assert report.output_shape == ref.output_shape


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
@pytest.mark.parametrize("abstract", [False, True], ids=["concrete", "abstract"])
def test_contract_case_layer_shapes_are_native(case_id: str, abstract: bool) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), "mxnet")
    dummy = di.ShapeDtype(case.shape, case.dtype) if abstract else case.data()
    report = model.apply_init(dummy, abstract=abstract)
    _native_and_equal(report, case.make(), case.shape, case.dtype)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_zoo_layer_shapes_are_native(name: str) -> None:
    shape, dtype = zoo.BOOK_INPUTS[name], "int64" if name in zoo.INT_INPUTS else "float32"
    model = di.compile(zoo.MODELS[name](), "mxnet")
    report = model.apply_init(di.ShapeDtype(shape, dtype), abstract=True)
    _native_and_equal(report, zoo.MODELS[name](), shape, dtype)
    if name in ("lenet", "resnet18", "googlenet", "gru_lm", "bi_lstm_lm", "transformer_encoder"):  # the dry run too
        x = np.zeros(shape, dtype=dtype)
        _native_and_equal(di.compile(zoo.MODELS[name](), "mxnet").apply_init(x), zoo.MODELS[name](), shape, dtype)


def test_a_varying_dim_stays_none_and_the_others_are_native() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1), di.ReLU(), di.GlobalAvgPool2D(), di.Dense(3)])
    report = di.compile(spec, "mxnet").apply_init(di.ShapeDtype((None, 2, None, None)), abstract=True)
    assert report.layers["0"].output_shape == (None, 4, None, None) and report.layers["0"].source == "native"
    assert report.output_shape == (None, 3)


def _break(shapes: dict, path: str) -> dict:
    shapes = dict(shapes)
    shapes[path] = shapes[path][:-1] + (shapes[path][-1] + 1,)
    return shapes


def test_a_wrong_native_layer_shape_is_a_backend_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = graph.observed_shapes
    monkeypatch.setattr(graph, "observed_shapes", lambda observer, shape: _break(real(observer, shape), "1"))
    spec = di.LazyModel([di.Dense(8), di.ReLU(), di.Dense(3)])
    with pytest.raises(di.BackendError, match=r"layer '1' \(ReLU\)"):
        di.compile(spec, "mxnet").apply_init(np.zeros((2, 5), np.float32))


def test_a_wrong_abstract_shape_is_a_backend_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = graph.Observer.symbols
    # the symbol MXNet traced for position 0 is swapped for the one of position 1: 8 features where 3 are due
    monkeypatch.setattr(graph.Observer, "symbols",
                        lambda self: (lambda s: {**s, "2": s["0"]})(real(self)))
    spec = di.LazyModel([di.Dense(8), di.ReLU(), di.Dense(3)])
    with pytest.raises(di.BackendError, match=r"layer '2' \(Dense\)"):
        di.compile(spec, "mxnet").apply_init(di.ShapeDtype((2, 5)), abstract=True)


def test_equal_specs_ask_mxnet_once_per_input(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = graph.observed_shapes, []
    monkeypatch.setattr(graph, "observed_shapes", lambda observer, shape: calls.append(shape) or real(observer, shape))
    spec = lambda: di.LazyModel([di.Dense(8), di.ReLU(), di.Dense(3)])  # noqa: E731
    for shape in ((2, 5), (2, 5), (4, 5), (2, 5)):
        _native_and_equal(di.compile(spec(), "mxnet").apply_init(np.zeros(shape, np.float32)), spec(), shape, "float32")
    assert calls == [(2, 5), (4, 5)]


def test_a_dropped_output_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = graph.observed_shapes
    monkeypatch.setattr(graph, "observed_shapes",
                        lambda observer, shape: {k: v for k, v in real(observer, shape).items() if k != "0"})
    with pytest.raises(di.BackendError, match="'0'"):
        di.compile(di.LazyModel([di.Dense(8), di.Dense(3)]), "mxnet").apply_init(np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("abstract", [False, True], ids=["concrete", "abstract"])
def test_a_tied_container_at_two_shapes_reports_each_position_its_own(abstract: bool) -> None:
    def make() -> di.LazyModel:
        shared = di.Sequential([di.ReLU(), di.Identity()])  # no parameters: the same layers at two input sizes
        return di.LazyModel([di.Dense(6), shared, di.Dense(3), shared, di.Dense(2)])

    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    model = di.compile(make(), "mxnet")
    report = model.apply_init(di.ShapeDtype(x.shape) if abstract else x, abstract=abstract)
    _native_and_equal(report, make(), x.shape, "float32")
    assert report.layers["1.0"].output_shape == (2, 6) and report.layers["3"].output_shape == (2, 3)
