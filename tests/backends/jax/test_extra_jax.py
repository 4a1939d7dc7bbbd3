"""deferinit.layers_extra and the new options on JAX, against Flax's own modules and functions built here by hand."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import deferinit as di


def run(layers: list, x: np.ndarray, weights: dict | None = None, **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), "jax")
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    return np.asarray(model.to_numpy(model(x)))


X = (np.random.default_rng(0).standard_normal((3, 11)) * 5).astype(np.float32)


@pytest.mark.parametrize("layer, native", [
    (di.ReLU6(), nn.relu6), (di.SiLU(), nn.silu), (di.HardSwish(), nn.hard_swish),
    (di.HardSigmoid(), nn.hard_sigmoid), (di.LeakyReLU(), nn.leaky_relu),
    (di.LeakyReLU(0.3), lambda x: nn.leaky_relu(x, 0.3)),
    (di.GELU(approximate="tanh"), lambda x: nn.gelu(x, approximate=True)),
    (di.Activation("gelu_tanh"), nn.gelu),
])
def test_activations_match_flax(layer: di.Layer, native) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(run([layer], X), np.asarray(native(jnp.asarray(X))), rtol=1e-6, atol=1e-6)


