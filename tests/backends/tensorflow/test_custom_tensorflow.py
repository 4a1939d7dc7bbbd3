"""examples/custom_layer.py's GatedDense on tensorflow (its builder, written as a user would), and the fast
path switch (fastpath.ENABLED) against Keras's public eager call. Collected only with ``--backend tensorflow``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID
from deferinit.adapters.tensorflow import fastpath

EXAMPLE = Path(__file__).parents[3] / "examples" / "custom_layer.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_layer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _by_hand(example: ModuleType, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    g = example.gated_dense(h, w["1.weight"], w["1.bias"], 8)
    return g @ w["2.weight"].T + w["2.bias"]


@pytest.mark.parametrize("abstract", [False, True], ids=["dry_run", "abstract"])
def test_gated_dense_builder_matches_the_reference_kernel(example: ModuleType, abstract: bool) -> None:
    spec = di.LazyModel([di.Dense(16, activation="relu"), example.GatedDense(8), di.Dense(3)])
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    model = di.compile(spec, "tensorflow")
    report = model.apply_init(di.ShapeDtype(x.shape) if abstract else x, abstract=abstract)
    reference = di.infer_shapes(spec, x.shape)
    assert report.diff(reference) == []
    assert report.layers["1"].source == "native" and report.layers["1"].output_shape == (4, 8)
    assert report.params["1.weight"].source == "native"
    assert report.params["1.weight"].native_shape == (16, 16)  # Keras's (in, 2 * units) kernel
    assert report.params["1.weight"].shape == (16, 16) and report.params["1.bias"].shape == (16,)
    rng = np.random.default_rng(1)
    weights = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in reference.params.items()}
    weights["1.weight"] = rng.standard_normal((16, 16)).astype(np.float32)  # not symmetric by chance
    if abstract:
        model.materialize()
    model.load_weights(weights)
    np.testing.assert_allclose(model.to_numpy(model(x)), _by_hand(example, weights, x), atol=1e-5, rtol=1e-5)
    got = model.export_weights()
    for name, value in weights.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_gated_dense_takes_keras_init_and_key(example: ModuleType) -> None:
    import keras

    spec = di.LazyModel([example.GatedDense(4)])
    x = np.ones((2, 6), np.float32)
    a, b, c = (di.compile(spec, "tensorflow") for _ in range(3))
    a.apply_init(x, key=3)
    b.apply_init(x, key=3)
    c.apply_init(x, init=keras.initializers.Constant(0.5))
    np.testing.assert_array_equal(a.export_weights()["0.weight"], b.export_weights()["0.weight"])
    np.testing.assert_array_equal(c.export_weights()["0.weight"], np.full((8, 6), 0.5, np.float32))


@pytest.mark.parametrize("case_id", ["residual", "tied", "embedding", "batchnorm", "concat"])
def test_fast_path_and_public_keras_call_agree(case_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data(), init="xavier_uniform", key=4)
    x = case.data(seed=5)
    monkeypatch.setattr(fastpath, "ENABLED", True)
    fast, fast_grads = model.to_numpy(model(x)), model.gradients(x)
    assert model.native._deferinit_table.fns  # the compiled path ran
    monkeypatch.setattr(fastpath, "ENABLED", False)
    model.native._deferinit_table.fns.clear()
    slow, slow_grads = model.to_numpy(model(x)), model.gradients(x)
    assert not model.native._deferinit_table.fns  # the public eager call ran, no tf.function
    np.testing.assert_allclose(slow, fast, atol=1e-5, rtol=1e-5)
    for name in fast_grads:
        np.testing.assert_allclose(slow_grads[name], fast_grads[name], atol=1e-4, rtol=1e-4, err_msg=name)
