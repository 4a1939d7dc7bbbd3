"""A graph spec on Keras 3: the native is a Keras layer holding Keras's own layers (built on first call), a layer
called twice is one Keras layer, and masked cross-attention equals Keras's own MultiHeadAttention called by hand
with the same weights and an attention_mask written here from valid_lens."""

from __future__ import annotations

import keras
import numpy as np

import deferinit as di


def test_graph_is_keras_and_matches_keras_attention_by_hand():
    q, kv, lens = di.Input(name="q"), di.Input(name="kv"), di.Input(name="valid_lens", dtype="int64")
    spec = di.LazyModel(inputs=[q, kv, lens], outputs=di.MultiHeadAttention(8, 2, name="att")(q, kv, kv, valid_lens=lens))
    model = di.compile(spec, "tensorflow")
    rng = np.random.default_rng(0)
    xq, xkv, vl = rng.standard_normal((2, 3, 8)).astype("float32"), rng.standard_normal((2, 5, 8)).astype("float32"), np.array([2, 4])
    model.apply_init((xq, xkv, vl), init="xavier_uniform", key=0)
    assert isinstance(model.native, keras.layers.Layer)
    mha = model.native._deferinit_table.layers["att"]
    assert isinstance(mha, keras.layers.MultiHeadAttention) and mha.built
    hand = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, output_shape=8, use_bias=False)
    mask = np.arange(5)[None, None, :] < vl[:, None, None] * np.ones((1, 3, 1), int)  # (N, Tq, Tk), True: attend
    hand(xq, xkv, key=xkv, attention_mask=mask)
    hand.set_weights(mha.get_weights())
    want = hand(xq, xkv, key=xkv, attention_mask=mask).numpy()
    np.testing.assert_allclose(model((xq, xkv, vl)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_graph_forward_is_one_traced_tf_function_whose_mask_follows_valid_lens():
    # the forward runs one cached tf.function per mode (eager, op by op, GPT-2 took 2.4x a hand-written
    # tf.function model): new valid_lens values reuse the trace, and the mask built in it follows them, against
    # Keras's attention called by hand with a mask written here (2-D valid_lens: one length per query)
    q, kv, lens = di.Input(name="q"), di.Input(name="kv"), di.Input(name="valid_lens", dtype="int64")
    spec = di.LazyModel(inputs=[q, kv, lens], outputs=di.MultiHeadAttention(8, 2, name="att")(q, kv, kv, valid_lens=lens))
    model = di.compile(spec, "tensorflow")
    rng = np.random.default_rng(1)
    xq, xkv = rng.standard_normal((2, 3, 8)).astype("float32"), rng.standard_normal((2, 5, 8)).astype("float32")
    model.apply_init((xq, xkv, np.array([[1, 2, 3], [5, 4, 1]])), init="xavier_uniform", key=0)
    mha = model.native._deferinit_table.layers["att"]
    hand = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, output_shape=8, use_bias=False)
    hand(xq, xkv, key=xkv)
    hand.set_weights(mha.get_weights())
    for vl in (np.array([[1, 2, 3], [5, 4, 1]]), np.array([[5, 5, 2], [1, 1, 1]])):
        mask = np.arange(5)[None, None, :] < vl[:, :, None]
        want = hand(xq, xkv, key=xkv, attention_mask=mask).numpy()
        np.testing.assert_allclose(model((xq, xkv, vl)).numpy(), want, rtol=1e-5, atol=1e-6)
    fn = model.native._deferinit_table.fns[("graph", False)]
    assert fn.experimental_get_tracing_count() == 1
