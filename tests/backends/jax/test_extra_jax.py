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




@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_group_norm_is_flax_group_norm(fmt: str) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 5, 4, 6)) * 3 + 1).astype(np.float32)  # channels last
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    ref = nn.GroupNorm(num_groups=3, epsilon=1e-3, use_fast_variance=False)
    want = np.asarray(ref.apply({"params": {"scale": gamma, "bias": beta}}, jnp.asarray(x)))
    if fmt == "channels_first":
        x, want = x.transpose(0, 3, 1, 2), want.transpose(0, 3, 1, 2)
    got = run([di.GroupNorm(3, eps=1e-3)], np.ascontiguousarray(x), {"0.weight": gamma, "0.bias": beta},
              data_format=fmt)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
