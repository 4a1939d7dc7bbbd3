"""examples/custom_layer.py's GatedDense on MXNet, built by the example's own builder (a user's, through
``di.register_builder``) and checked against the example's NumPy kernel, computed here by hand."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import deferinit as di

_PATH = pathlib.Path(__file__).resolve().parents[3] / "examples" / "custom_layer.py"


@pytest.fixture(scope="module")
def example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("custom_layer_example", _PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["custom_layer_example"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_example_registers_an_mxnet_builder(example) -> None:  # type: ignore[no-untyped-def]
    from deferinit.extend import builder_for

    assert builder_for("mxnet", example.GatedDense) is not None


@pytest.mark.parametrize("abstract", [False, True], ids=["concrete", "abstract"])
def test_gated_dense_on_mxnet_matches_the_kernel_by_hand(example, abstract: bool) -> None:  # type: ignore[no-untyped-def]
    spec = di.LazyModel([di.Dense(16, activation="relu"), example.GatedDense(8), di.Dense(3)])
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    ref = di.infer_shapes(spec, x.shape)
    model = di.compile(spec, "mxnet")
    report = model.apply_init(di.ShapeDtype(x.shape) if abstract else x, abstract=abstract)
    assert report.diff(ref) == []
    assert report.params["1.weight"].shape == (16, 16) and report.params["1.weight"].source == "native"
    assert report.layers["1"].output_shape == (4, 8) and report.layers["1"].source == "native"
    rng = np.random.default_rng(1)
    weights = {n: rng.standard_normal(p.shape).astype(np.float32) * 0.5 for n, p in ref.params.items()}
    if abstract:
        model.materialize()
    model.load_weights(weights)
    h = np.maximum(x @ weights["0.weight"].T + weights["0.bias"], 0)
    g = example.gated_dense(h, weights["1.weight"], weights["1.bias"], 8)
    want = g @ weights["2.weight"].T + weights["2.bias"]
    np.testing.assert_allclose(model.to_numpy(model(x)), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.intermediates(x)["1"], g, rtol=1e-4, atol=1e-5)
    exported = model.export_weights()
    assert {n: w.shape for n, w in exported.items()} == {n: p.shape for n, p in ref.params.items()}
    np.testing.assert_array_equal(exported["1.weight"], weights["1.weight"])
