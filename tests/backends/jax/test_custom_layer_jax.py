"""examples/custom_layer.py's GatedDense on jax: its builder (registered as a user would) gives Flax's own
parameter and layer shapes and computes the example's reference kernel, by hand, with loaded weights."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import deferinit as di
from deferinit import extend
from deferinit.errors import UnsupportedLayerError

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "custom_layer.py"


@pytest.fixture(scope="module")
def example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("custom_layer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gated_dense_builds_on_jax_and_matches_the_reference_kernel(example) -> None:  # type: ignore[no-untyped-def]
    assert extend.builder_for("jax", example.GatedDense) is not None
    spec = di.LazyModel([di.Dense(16, activation="relu"), example.GatedDense(8), di.Dense(3)])
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    model = di.compile(spec, "jax")
    report = model.apply_init(x)
    ref = di.infer_shapes(spec, x.shape)
    assert report.diff(ref) == []
    assert report.params["1.weight"].shape == (16, 16) and report.params["1.weight"].native_shape == (16, 16)
    assert report.params["1.weight"].native_name == "params/layers_1/kernel"
    assert all(p.source == "native" for p in report.params.values())
    assert all(info.source == "native" for info in report.layers.values())
    assert report.layers["1"].output_shape == (4, 8)
    rng = np.random.default_rng(1)
    w = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in ref.params.items()}
    model.load_weights(w)
    assert all(np.array_equal(model.export_weights()[n], w[n]) for n in w)  # the layout round-trips
    h = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    h = example.gated_dense(h, w["1.weight"], w["1.bias"], 8)
    want = h @ w["2.weight"].T + w["2.bias"]
    np.testing.assert_allclose(model.to_numpy(model(x)), want, rtol=1e-4, atol=1e-4)
    # Flax holds the kernel as (in, 2 * units): the canonical weight transposed
    assert np.array_equal(np.asarray(model.params["layers_1"]["kernel"]), w["1.weight"].T)


def test_a_layer_without_a_jax_builder_is_unsupported_by_name() -> None:
    class NoBuilder(di.layers.Leaf):  # type: ignore[misc]
        def infer(self, shape, ctx):  # type: ignore[no-untyped-def]
            return shape, {}

    spec = di.LazyModel([di.Dense(4), NoBuilder()])
    with pytest.raises(UnsupportedLayerError, match=r"'1'.*NoBuilder"):
        di.compile(spec, "jax").apply_init(np.zeros((2, 3), np.float32))
