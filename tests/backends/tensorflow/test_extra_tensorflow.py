"""deferinit.layers_extra and the new options on TensorFlow, against Keras's own layers built here by hand (and
the formulas where Keras defines a function otherwise)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deferinit as di


def run(layers: list, x: np.ndarray, weights: dict | None = None, **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), "tensorflow")
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    return np.asarray(model.to_numpy(model(x)))


X = (np.random.default_rng(0).standard_normal((3, 11)) * 5).astype(np.float32)


@pytest.mark.parametrize("layer, native", [
    (di.ReLU6(), lambda x: keras.layers.ReLU(max_value=6.0)(x)),
    (di.SiLU(), lambda x: keras.activations.silu(x)),
    (di.HardSwish(), lambda x: x * keras.layers.ReLU(max_value=6.0)(x + 3.0) / 6.0),
    (di.HardSigmoid(), lambda x: keras.layers.ReLU(max_value=6.0)(x + 3.0) / 6.0),
    (di.LeakyReLU(), lambda x: keras.layers.LeakyReLU(negative_slope=0.01)(x)),
    (di.LeakyReLU(0.3), lambda x: keras.layers.LeakyReLU(negative_slope=0.3)(x)),
    (di.GELU(approximate="tanh"), lambda x: keras.activations.gelu(x, approximate=True)),
    (di.Activation("gelu_tanh"), lambda x: keras.activations.gelu(x, approximate=True)),
])
def test_activations_match_keras(layer: di.Layer, native) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(run([layer], X), np.asarray(native(X)), rtol=1e-6, atol=1e-6)


def test_adaptive_avg_pool_is_keras_own_layer_with_pytorchs_bins() -> None:
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 10)).astype(np.float32)
    model = di.compile(di.LazyModel([di.AdaptiveAvgPool2D((3, 4))]), "tensorflow")
    model.apply_init(x)
    assert any(isinstance(layer, keras.layers.AdaptiveAveragePooling2D) for layer in model.native.layers)
    # bins [0, 3), [2, 5), [4, 7) on the rows, [0, 3), [2, 5), [5, 8), [7, 10) on the columns
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 3), (2, 5), (5, 8), (7, 10)]
    want = np.array([[x[:, :, a:b, c:d].mean(axis=(2, 3)) for c, d in cols] for a, b in rows]).transpose(2, 3, 0, 1)
    np.testing.assert_allclose(model.to_numpy(model(x)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_group_norm_is_keras_group_normalization(fmt: str) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 6, 5, 4)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    if fmt == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ref = keras.layers.GroupNormalization(3, axis=1 if fmt == "channels_first" else -1, epsilon=1e-3)
    ref.build(x.shape)
    ref.set_weights([gamma, beta])
    got = run([di.GroupNorm(3, eps=1e-3)], x, {"0.weight": gamma, "0.bias": beta}, data_format=fmt)
    np.testing.assert_allclose(got, np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
