"""The NNX backend's transposed convolutions, Add/Multiply containers and graph specs against NNX modules built by
hand in the test (their weights written into canonical layout by the test) and NNX's own transforms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

import deferinit as di
from deferinit import layers as L

RNG = np.random.default_rng(0)


def test_conv_transpose_and_merges_match_hand_built_nnx_modules() -> None:
    spec = di.LazyModel([di.Conv2DTranspose(4, 3, stride=2, padding=1, output_padding=1, name="up"),
                         di.Add([L.Conv2D(4, 1, name="a"), L.Identity()], name="add"),
                         di.Multiply([L.Conv2D(4, 1, use_bias=False, name="m"), L.Identity()], name="mul")],
                        data_format="channels_last")
    x = RNG.standard_normal((2, 5, 5, 3)).astype(np.float32)
    r = nnx.Rngs(3)
    # PyTorch's padding=1, output_padding=1 on a stride-2 3x3 transpose: lax pads (k-1-p, k-1-p+op) = (1, 2)
    up = nnx.ConvTranspose(3, 4, (3, 3), (2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True, rngs=r)
    a, m = nnx.Conv(4, 4, (1, 1), rngs=r), nnx.Conv(4, 4, (1, 1), use_bias=False, rngs=r)

    def hand(v: np.ndarray) -> np.ndarray:
        h = up(jnp.asarray(v))
        h = a(h) + h
        return np.asarray(m(h) * h)

    w = lambda v: np.asarray(v[...])  # noqa: E731
    weights = {"up.weight": w(up.kernel).transpose(3, 2, 0, 1),  # NNX (kh, kw, out, in) -> canonical (in, out, kh, kw)
               "up.bias": w(up.bias), "add.a.weight": w(a.kernel).transpose(3, 2, 0, 1), "add.a.bias": w(a.bias),
               "mul.m.weight": w(m.kernel).transpose(3, 2, 0, 1)}
    model = di.compile(spec, "nnx")
    report = model.load_weights(weights, input_shape=x.shape)
    assert report.output_shape == (2, 10, 10, 4)  # (5-1)*2 - 2 + 2 + 1 + 1
    assert isinstance(model.native.layers[0], nnx.ConvTranspose) and model.native.layers[0].in_features == 3
    np.testing.assert_allclose(np.asarray(model(x)), hand(x), rtol=1e-5, atol=1e-5)
    ref = di.compile(spec, "numpy")
    ref.load_weights(weights, input_shape=x.shape)
    np.testing.assert_allclose(np.asarray(model(x)), ref(x), rtol=1e-5, atol=1e-5)


def _graph() -> di.LazyModel:
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    emb = di.Embedding(11, 8, name="emb")
    h = emb(tokens)
    a = di.MultiHeadAttention(8, 2, name="attn")(h, h, h, valid_lens=lens)
    return di.LazyModel(inputs=[tokens, lens], outputs=di.Attend(emb)(di.add(h, a)))


def test_graph_spec_is_native_nnx_modules_and_works_with_nnx_transforms() -> None:
    tokens, lens = RNG.integers(0, 11, (2, 5)), np.array([3, 5])
    model = di.compile(_graph(), "nnx")
    report = model.apply_init((tokens, lens), init="xavier_uniform", key=1)
    emb, attn = model.native.layers[0], model.native.layers[1]
    assert isinstance(emb, nnx.Embed) and isinstance(attn, nnx.MultiHeadAttention) and attn.in_features == 8
    assert report.params["emb.weight"].native_name == "layers/0/embedding"
    ref = di.compile(_graph(), "numpy")
    ref.apply_init((tokens, lens), init="xavier_uniform", key=1)
    for name, value in ref.export_weights().items():  # the portable init: bit-identical
        np.testing.assert_array_equal(model.export_weights()[name], value)
    y = np.asarray(model((tokens, lens)))
    np.testing.assert_allclose(y, ref((tokens, lens)), rtol=1e-5, atol=1e-5)
    # by hand with NNX's own modules given the compiled model's state: embedding lookup, masked attention (key
    # j < valid_len, as d2l's masked_softmax), the head tied to the embedding (nnx.Embed.attend)
    r = nnx.Rngs(0)
    hand_emb, hand_attn = nnx.Embed(11, 8, rngs=r), nnx.MultiHeadAttention(2, 8, qkv_features=8, out_features=8,
                                                                            use_bias=False, decode=False, rngs=r)
    nnx.update(hand_emb, nnx.state(emb, nnx.Param))
    nnx.update(hand_attn, nnx.state(attn, nnx.Param))
    h = hand_emb(jnp.asarray(tokens))
    keep = np.broadcast_to(np.arange(5)[None, None, :] < lens[:, None, None], (2, 5, 5))
    hand = hand_emb.attend(h + hand_attn(h, h, h, mask=jnp.asarray(keep)[:, None], deterministic=True))
    np.testing.assert_allclose(y, np.asarray(hand), rtol=1e-5, atol=1e-5)
    # nnx.grad of the native module's summed output == model.gradients (the tied table summed over its uses)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(tokens), jnp.asarray(lens))[0]))(model.native)
    np.testing.assert_allclose(np.asarray(grads.layers[0].embedding[...]),
                               model.gradients((tokens, lens))["emb.weight"], rtol=1e-5, atol=1e-5)
    # split / merge round trip, and an update through nnx.state seen by the compiled model
    graphdef, state = nnx.split(model.native)
    np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, state)(tokens, lens)[0]), y, rtol=1e-6, atol=1e-6)
    emb.embedding[...] = emb.embedding[...] * 0
    np.testing.assert_array_equal(np.asarray(model((tokens, lens))), 0)


def test_graph_forward_is_jitted_once_and_sees_new_weights() -> None:
    # one nnx.jit bound to the module (nnx.cached_partial), as list specs' forward: a new nnx.jit per call walked
    # the whole module graph every time (GPT-2 3.4x a hand-written NNX model). Weights loaded after it was bound
    # are what it computes with: the eager module call on the same inputs is the truth
    from graph_cases import graph_case

    spec, xs = graph_case("graph_two_inputs")
    model = di.compile(spec, "nnx")
    model.apply_init(xs, init="xavier_uniform", key=0)
    first = [np.asarray(o) for o in model(xs)]
    bound = model._jitted[False][1]
    model.load_weights({k: v * 0.5 for k, v in model.export_weights().items()})
    got = model(xs)
    assert model._jitted[False][1] is bound
    want = model.native(*[jnp.asarray(x) for x in xs])
    for g, w, f in zip(got, want, first):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(g), f)  # the new weights, not the first call's
