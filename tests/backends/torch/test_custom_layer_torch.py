"""examples/custom_layer.py's GatedDense on torch, through the builder a user registers there: torch's own dry
run finds its input dim, the report is torch's, and the forward equals the example's NumPy kernel by hand."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import numpy as np
import pytest
from torch import nn

import deferinit as di
from deferinit.errors import UnsupportedLayerError
from deferinit.extend import builder_for

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "custom_layer.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    name = "deferinit_example_custom_layer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _spec(ex: ModuleType) -> di.LazyModel:
    return di.LazyModel([di.Dense(16, activation="relu"), ex.GatedDense(8), di.Dense(3)])


@pytest.mark.parametrize("abstract", [False, True], ids=["concrete", "abstract"])
def test_the_example_builder_is_registered_and_torch_infers_its_shapes(example: ModuleType, abstract: bool) -> None:
    assert builder_for("torch", example.GatedDense) is example.gated_dense_torch
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    model = di.compile(_spec(example), "torch")
    report = model.apply_init(di.ShapeDtype(x.shape) if abstract else x, abstract=abstract)
    assert report.diff(di.infer_shapes(_spec(example), x.shape)) == []
    assert report.params["1.weight"].shape == (16, 16) and report.params["1.bias"].shape == (16,)
    assert all(p.source == "native" for p in report.params.values())
    assert all(info.source == "native" for info in report.layers.values())
    assert report.layers["1"].output_shape == (4, 8)
    assert report.params["1.weight"].native_name == "1.weight"
    if not abstract:  # torch's own modules: the lazy Linear became an nn.Linear on the dry run, then torch's GLU
        assert type(model.native[2]) is nn.Linear and isinstance(model.native[3], nn.GLU)


def test_the_torch_forward_equals_the_examples_kernel(example: ModuleType) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    shapes = di.infer_shapes(_spec(example), x.shape).params
    weights = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in shapes.items()}
    model = di.compile(_spec(example), "torch")
    model.apply_init(x)
    model.load_weights(weights)
    h = np.maximum(x @ weights["0.weight"].T + weights["0.bias"], 0)
    h = example.gated_dense(h, weights["1.weight"], weights["1.bias"], 8)
    want = h @ weights["2.weight"].T + weights["2.bias"]
    np.testing.assert_allclose(model(x).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    got = model.intermediates(x)["1"]
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)


def test_a_layer_without_a_torch_builder_is_named(example: ModuleType) -> None:
    @di.register_layer
    class NoTorchBuilder(example.GatedDense):  # type: ignore[misc,name-defined]
        pass

    spec = di.LazyModel([di.Dense(4), NoTorchBuilder(2)])
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' \(NoTorchBuilder\).*no torch module"):
        di.compile(spec, "torch").native
