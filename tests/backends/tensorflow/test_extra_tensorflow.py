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
