"""Graph specs (``LazyModel(inputs=, outputs=)``) on every selected backend: shapes as the reference rules give,
the forward pass as the NumPy reference computes it with the same weights (itself checked by hand in
tests/core/test_graph_core.py), portable init identical everywhere, and the error contract. A backend that has
no graph model yet is asserted to refuse graph specs by name (an UnsupportedLayerError), never skipped."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from deferinit.adapters.graph_models import GRAPH_MODELS


def _encoder_block():
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    emb = di.Embedding(30, 8)
    h = emb(tokens)
    a = di.MultiHeadAttention(8, 2)(h, h, h, valid_lens=lens)
    h = di.LayerNorm()(di.add(h, a))
    ffn = di.Dense(8, name="ffn")
    out = di.LayerNorm()(di.add(h, ffn(di.ReLU()(ffn(h)))))  # ffn called twice: one Dense, tied
    return di.LazyModel(inputs=[tokens, lens], outputs=[out, a])


def _squeeze_excite():
    x = di.Input(name="image")
    s = di.Sigmoid()(di.Reshape((4, 1, 1))(di.Dense(4)(di.Flatten()(di.GlobalAvgPool2D()(x)))))
    return di.LazyModel(inputs=x, outputs=di.concat([di.multiply(x, s), di.Conv2D(2, 3, padding="same")(x)]))


CASES = {"encoder": (_encoder_block, lambda rng: (rng.integers(0, 30, (2, 5)), np.array([2, 5]))),
         "encoder_2d_lens": (_encoder_block, lambda rng: (rng.integers(0, 30, (2, 5)),
                                                          np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]]))),
         "squeeze_excite": (_squeeze_excite, lambda rng: (rng.standard_normal((2, 4, 6, 6)).astype(np.float32),))}


def _compile(spec, backend):
    if backend not in GRAPH_MODELS:
        with pytest.raises(di.UnsupportedLayerError, match=backend):
            di.compile(spec, backend)
        return None
    return di.compile(spec, backend)


@pytest.mark.parametrize("case", sorted(CASES))
def test_graph_matches_reference(backend: str, case: str) -> None:
    make, data = CASES[case]
    spec, xs = make(), data(np.random.default_rng(0))
    model = _compile(spec, backend)
    if model is None:
        return
    report = model.apply_init(xs, init="xavier_uniform", key=3)
    rules = di.infer_shapes(spec, [x.shape for x in xs])
    assert report.backend == backend
    assert {n: p.shape for n, p in report.params.items()} == {n: p.shape for n, p in rules.params.items()}
    assert report.output_shape == rules.output_shape
    ref = di.compile(spec, "numpy")
    ref.apply_init(xs, init="xavier_uniform", key=3)
    weights = model.export_weights()
    for name, value in ref.export_weights().items():  # portable init: the same numbers on every backend
        np.testing.assert_array_equal(weights[name], value)
    rng = np.random.default_rng(1)
    other = {n: rng.standard_normal(w.shape).astype(np.float32) * 0.5 for n, w in weights.items()}
    model.load_weights(other)
    ref.load_weights(other)
    got, want = model(xs), ref(xs)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(model.to_numpy(g), w, rtol=2e-4, atol=2e-4)


def test_tied_layer_is_one_parameter_set(backend: str) -> None:
    spec = _encoder_block()
    model = _compile(spec, backend)
    if model is None:
        return
    report = model.apply_init((np.zeros((2, 5), np.int64), np.array([5, 5])), init="xavier_uniform", key=0)
    assert [n for n in report.params if n.startswith("ffn.")] == ["ffn.weight", "ffn.bias"]
    assert report.total_params == 30 * 8 + 4 * 64 + 16 + (64 + 8) + 16


def test_error_contract_names_the_input(backend: str) -> None:
    spec = _encoder_block()
    model = _compile(spec, backend)
    if model is None:
        return
    tokens, lens = np.zeros((2, 5), np.int64), np.array([5, 5])
    with pytest.raises(di.ShapeMismatchError, match="tokens, valid_lens"):
        model.apply_init((tokens,), init="xavier_uniform", key=0)
    with pytest.raises(di.DTypeError, match="'tokens'"):
        model.apply_init((tokens.astype(np.float32), lens), init="xavier_uniform", key=0)
    assert not model.initialized  # nothing half-initialized
    model.apply_init((tokens, lens), init="xavier_uniform", key=0)
    with pytest.raises(di.DTypeError, match="'valid_lens'"):
        model((tokens, lens.astype(np.float32)))
    with pytest.raises(di.ShapeMismatchError, match="valid_lens"):
        model((tokens, np.array([1, 2, 3])))


CAUSAL_BACKENDS = ("numpy", "torch")


def _causal_list_spec():
    return di.LazyModel([di.Embedding(12, 8), di.MultiHeadAttention(8, 2, causal=True), di.Dense(5)])


def test_causal_attention_ignores_the_future(backend: str) -> None:
    """GPT-2's mask: changing the tokens after position i leaves outputs 0..i unchanged (a property of the mask,
    whatever the weights); and every backend matches the reference with the same weights."""
    spec = _causal_list_spec()
    if backend not in CAUSAL_BACKENDS:
        with pytest.raises(di.UnsupportedLayerError, match="causal"):
            di.compile(spec, backend)
        return
    model = di.compile(spec, backend)
    tokens = np.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    model.apply_init(tokens, init="xavier_uniform", key=0)
    y = model.to_numpy(model(tokens))
    later = tokens.copy()
    later[:, 3:] = 0
    y2 = model.to_numpy(model(later))
    np.testing.assert_allclose(y[:, :3], y2[:, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[:, 3:], y2[:, 3:])
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=di.ShapeDtype(tokens.shape, "int64"))
    np.testing.assert_allclose(y, ref(tokens), rtol=2e-4, atol=2e-5)


def test_causal_cross_attention_in_a_graph(backend: str) -> None:
    q, kv = di.Input(name="queries"), di.Input(name="memory")
    spec = di.LazyModel(inputs=[q, kv], outputs=di.MultiHeadAttention(4, 2, causal=True)(q, kv, kv))
    model = _compile(spec, backend)
    if model is None:
        return
    rng = np.random.default_rng(4)
    xs = (rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 3, 4)).astype(np.float32))
    model.apply_init(xs, init="xavier_uniform", key=1)
    ref = di.compile(spec, "numpy")
    ref.apply_init(xs, init="xavier_uniform", key=1)
    np.testing.assert_allclose(model.to_numpy(model(xs)), ref(xs), rtol=2e-4, atol=2e-5)
    first = ref(xs)[:, 0]  # query 0 sees key 0 only: softmax over one score is 1, the output is W_o W_v m_0
    w = ref.export_weights()
    np.testing.assert_allclose(first, xs[1][:, 0] @ w["0.v_weight"].T @ w["0.out_weight"].T, rtol=1e-4, atol=1e-5)


def test_tied_head_is_reported_once_and_matches_reference(backend: str) -> None:
    tokens = di.Input(name="tokens", dtype="int64")
    emb = di.Embedding(13, 6, name="wte")
    spec = di.LazyModel(inputs=tokens, outputs=di.Attend(emb)(di.LayerNorm()(emb(tokens))))
    model = _compile(spec, backend)
    if model is None:
        return
    x = np.array([[1, 5, 12], [0, 0, 7]])
    report = model.apply_init(x, init="normal", key=2)
    assert list(report.params) == ["wte.weight", "1.weight", "1.bias"] and report.output_shape == (2, 3, 13)
    ref = di.compile(spec, "numpy")
    ref.apply_init(x, init="normal", key=2)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)


def test_causal_self_attention_in_a_graph(backend: str) -> None:
    x = di.Input(name="x")
    spec = di.LazyModel(inputs=x, outputs=di.MultiHeadAttention(4, 2, causal=True)(x))
    model = _compile(spec, backend)
    if model is None:
        return
    xs = np.random.default_rng(5).standard_normal((2, 4, 4)).astype(np.float32)
    model.apply_init(xs, init="xavier_uniform", key=1)
    ref = di.compile(spec, "numpy")
    ref.apply_init(xs, init="xavier_uniform", key=1)
    y = ref(xs)
    np.testing.assert_allclose(model.to_numpy(model(xs)), y, rtol=2e-4, atol=2e-5)
    w = ref.export_weights()  # position 0 attends to itself only
    np.testing.assert_allclose(y[:, 0], xs[:, 0] @ w["0.v_weight"].T @ w["0.out_weight"].T, rtol=1e-4, atol=1e-5)


def test_framework_failure_is_a_deferinit_error(backend: str) -> None:
    tokens = di.Input(name="tokens", dtype="int64")
    spec = di.LazyModel(inputs=tokens, outputs=di.Embedding(4, 2)(tokens))
    model = _compile(spec, backend)
    if model is None:
        return
    model.apply_init(np.array([[0, 1, 3]]), init="xavier_uniform", key=0)
    try:  # an index past the table: some frameworks raise, others clip (JAX, Gluon) or read garbage
        model(np.array([[0, 9, 1]]))
    except di.DeferInitError:
        pass
