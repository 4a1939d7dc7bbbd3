"""A graph spec on Flax linen: the native is a Flax module whose ``apply`` takes the graph's inputs, and masked
cross-attention equals Flax's own MultiHeadDotProductAttention applied by hand to the same variables with a mask
written here from valid_lens."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import deferinit as di


def test_graph_is_flax_and_matches_flax_attention_by_hand():
    q, kv, lens = di.Input(name="q"), di.Input(name="kv"), di.Input(name="valid_lens", dtype="int64")
    spec = di.LazyModel(inputs=[q, kv, lens], outputs=di.MultiHeadAttention(8, 2, name="att")(q, kv, kv, valid_lens=lens))
    model = di.compile(spec, "jax")
    rng = np.random.default_rng(0)
    xq, xkv, vl = rng.standard_normal((2, 3, 8)).astype("float32"), rng.standard_normal((2, 5, 8)).astype("float32"), np.array([2, 4])
    model.apply_init((xq, xkv, vl), init="xavier_uniform", key=0)
    assert isinstance(model.native, nn.Module)
    (via_apply,) = model.native.apply(model.variables, xq, xkv, vl)
    hand = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8, use_bias=False)
    mask = (np.arange(5)[None, None, None, :] < vl[:, None, None, None]) & np.ones((1, 1, 3, 1), bool)
    want = hand.apply({"params": model.variables["params"]["att"]}, jnp.asarray(xq), jnp.asarray(xkv),
                      jnp.asarray(xkv), mask=jnp.asarray(mask), deterministic=True)
    np.testing.assert_allclose(np.asarray(model((xq, xkv, vl))), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(via_apply), np.asarray(want), rtol=1e-5, atol=1e-6)
