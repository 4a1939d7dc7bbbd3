"""Graph specs, framework-free: tracing, validation, canonical names, shapes, serialization and the NumPy
reference forward, against shapes and numbers derived by hand (plain NumPy written here, as the book writes it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deferinit as di
from deferinit.graph_run import masked_attention, reference_forward


def _two_input_dense():
    a, b = di.Input(name="a"), di.Input(name="b")
    dense = di.Dense(4)
    return a, b, dense, di.LazyModel(inputs=[a, b], outputs=di.add(dense(a), dense(b)))


def test_layer_called_twice_is_one_layer_with_tied_params():
    _, _, dense, spec = _two_input_dense()
    assert spec.layers == (dense,)
    report = di.infer_shapes(spec, [(2, 3), (2, 3)])
    assert {n: p.shape for n, p in report.params.items()} == {"0.weight": (4, 3), "0.bias": (4,)}
    assert report.output_shape == (2, 4) and report.input_shape == ((2, 3), (2, 3))
    assert report.input_dtype == "float32,float32"


def test_tied_call_that_does_not_fit_names_the_layer():
    _, _, _, spec = _two_input_dense()
    with pytest.raises(di.ShapeMismatchError, match="'0'"):
        di.infer_shapes(spec, [(2, 3), (2, 5)])


def test_reference_forward_by_hand():
    _, _, _, spec = _two_input_dense()
    rng = np.random.default_rng(0)
    w, bias = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    xa, xb = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    got = reference_forward(spec, [xa, xb], {"0.weight": w, "0.bias": bias})
    np.testing.assert_allclose(got, xa @ w.T + bias + xb @ w.T + bias, rtol=1e-5, atol=1e-6)


def test_names_creation_order_and_name_given():
    x = di.Input()
    h = di.Dense(6, name="proj")(x)
    y = di.Dense(2)(di.ReLU()(h))
    spec = di.LazyModel(inputs=x, outputs=y)
    report = di.infer_shapes(spec, (5, 3))
    assert list(report.layers) == ["proj", "1", "2"]
    assert report.params["proj.weight"].shape == (6, 3) and report.params["2.weight"].shape == (2, 6)
    assert report.total_params == 6 * 3 + 6 + 2 * 6 + 2


def test_squeeze_excitation_multiply_broadcasts():
    x = di.Input()
    gate = di.Sigmoid()(di.Reshape((8, 1, 1))(di.Dense(8)(di.Flatten()(di.GlobalAvgPool2D()(x)))))
    spec = di.LazyModel(inputs=x, outputs=di.multiply(x, gate))
    assert di.infer_shapes(spec, (2, 8, 5, 5)).output_shape == (2, 8, 5, 5)
    xv = np.random.default_rng(1).standard_normal((2, 8, 5, 5)).astype(np.float32)
    w, b = np.eye(8, dtype=np.float32), np.zeros(8, np.float32)
    s = 1 / (1 + np.exp(-xv.mean(axis=(2, 3))))
    got = reference_forward(spec, [xv], {"2.weight": w, "2.bias": b})
    np.testing.assert_allclose(got, xv * s[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_concat_axis_none_is_the_channel_axis_and_multi_output():
    a, b = di.Input(name="a"), di.Input(name="b")
    c = di.concat([di.Conv2D(3, 1)(a), di.Conv2D(5, 1)(b)])
    spec = di.LazyModel(inputs=[a, b], outputs=[c, di.concat([c, c], axis=-1)])
    report = di.infer_shapes(spec, [(2, 4, 6, 6), (2, 2, 6, 6)])
    assert report.output_shape == ((2, 8, 6, 6), (2, 8, 6, 12))
    last = di.LazyModel(inputs=[a2 := di.Input(), ], outputs=di.concat([di.Dense(3)(a2), a2]), data_format="channels_last")
    assert di.infer_shapes(last, (2, 7, 4)).output_shape == (2, 7, 7)


def test_dtypes_come_from_each_input():
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    emb = di.Embedding(50, 8)
    h = emb(tokens)
    a = di.MultiHeadAttention(8, 2)(h, h, h, valid_lens=lens)
    spec = di.LazyModel(inputs=[tokens, lens], outputs=di.LayerNorm()(di.add(h, a)))
    report = di.infer_shapes(spec, [(2, 12), (2,)])
    assert report.output_shape == (2, 12, 8) and report.input_dtype == "int64,int64"
    assert report.total_params == 50 * 8 + 4 * 8 * 8 + 2 * 8
    with pytest.raises(di.DTypeError, match="'tokens'"):
        di.infer_shapes(spec, [(2, 12), (2,)], dtype=["float32", "int64"])
    with pytest.raises(di.ShapeMismatchError, match="tokens, valid_lens"):
        di.infer_shapes(spec, [(2, 12)])
    with pytest.raises(di.ShapeMismatchError, match="valid_lens"):
        di.infer_shapes(spec, [(2, 12), (3,)])


def _book_masked_softmax(x, valid_lens):
    """d2l's masked_softmax (NumPy transcription): x (B, Tq, Tk), valid_lens (B,) or (B, Tq)."""
    shape = x.shape
    lens = np.repeat(valid_lens, shape[1]) if valid_lens.ndim == 1 else valid_lens.reshape(-1)
    flat = x.reshape(-1, shape[-1]).copy()
    flat[np.arange(shape[-1])[None, :] >= lens[:, None]] = -1e6
    e = np.exp(flat - flat.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).reshape(shape)


@pytest.mark.parametrize("lens", [np.array([2, 4]), np.array([[1, 2, 3], [4, 4, 1]])])
def test_masked_attention_matches_the_book(lens):
    rng = np.random.default_rng(2)
    n, tq, tk, d, heads = 2, 3, 4, 6, 2
    q, k, v = (rng.standard_normal((n, t, d)).astype(np.float32) for t in (tq, tk, tk))
    p = {f"{x}_weight": rng.standard_normal((d, d)).astype(np.float32) * 0.3 for x in ("q", "k", "v", "out")}
    # the book's MultiHeadAttention: transpose_qkv, valid_lens repeated per head, DotProductAttention
    def split(m):
        return m.reshape(n, m.shape[1], heads, -1).transpose(0, 2, 1, 3).reshape(n * heads, m.shape[1], -1)
    qs, ks, vs = split(q @ p["q_weight"].T), split(k @ p["k_weight"].T), split(v @ p["v_weight"].T)
    scores = qs @ ks.transpose(0, 2, 1) / math.sqrt(d // heads)
    att = _book_masked_softmax(scores, np.repeat(lens, heads, axis=0)) @ vs
    want = att.reshape(n, heads, tq, -1).transpose(0, 2, 1, 3).reshape(n, tq, d) @ p["out_weight"].T
    got = masked_attention(q, k, v, p, heads, False, lens)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_causal_attention_ignores_future_positions():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 4)).astype(np.float32)
    p = {f"{n}_weight": rng.standard_normal((4, 4)).astype(np.float32) for n in ("q", "k", "v", "out")}
    y = masked_attention(x, x, x, p, 2, False, causal=True)
    x2 = x.copy()
    x2[:, 3:] = 100.0  # changing the future leaves the first three positions as they were
    y2 = masked_attention(x2, x2, x2, p, 2, False, causal=True)
    np.testing.assert_allclose(y[:, :3], y2[:, :3], rtol=1e-5)
    assert not np.allclose(y[:, 3:], y2[:, 3:])


def test_round_trip_through_dict_and_file(tmp_path):
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    emb = di.Embedding(20, 4)
    h = emb(tokens)
    a = di.MultiHeadAttention(4, 2)(h, h, h, valid_lens=lens)
    spec = di.LazyModel(inputs=[tokens, lens], outputs=[di.add(h, a), a])
    again = di.LazyModel.from_dict(spec.to_dict())
    assert again == spec and again.nodes == spec.nodes and again.inputs == spec.inputs
    path = di.save_spec(spec, tmp_path / "g.json")
    loaded = di.load_spec(path)
    assert loaded == spec
    assert str(di.infer_shapes(loaded, [(2, 3), (2,)])) == str(di.infer_shapes(spec, [(2, 3), (2,)]))


def test_validation_names_the_offender():
    a, b = di.Input(name="a"), di.Input(name="b")
    with pytest.raises(di.SpecError, match="inputs\\[1\\].*'b'.*never used"):
        di.LazyModel(inputs=[a, b], outputs=di.Dense(2)(a))
    other = di.Input(name="other")
    with pytest.raises(di.SpecError, match="another graph.*'other'"):
        di.LazyModel(inputs=[a], outputs=di.add(di.Dense(2)(a), other))
    with pytest.raises(di.SpecError, match="does not depend on the inputs.*'other'"):
        di.LazyModel(inputs=[b], outputs=di.Dense(2)(other))
    c = di.Input(name="c")
    kept = di.Dense(2)(c)
    di.Dense(3, name="lost")(c)
    with pytest.raises(di.SpecError, match="Dense 'lost'.*dangling"):
        di.LazyModel(inputs=c, outputs=kept)
    with pytest.raises(di.SpecError, match="symbolic tensor"):
        di.Dense(2)(np.zeros(3))


def test_file_graphs_are_checked_too():
    x = di.Input(name="x")
    spec = di.LazyModel(inputs=x, outputs=di.ReLU()(di.Dense(2)(x)))
    data = spec.to_dict()
    data["nodes"][0]["args"] = [2]  # the first call reads the second's output: a cycle
    with pytest.raises(di.SpecError, match="node 0 reads slot 2.*cycle"):
        di.LazyModel.from_dict(data)
    data = spec.to_dict()
    data["outputs"] = 1
    with pytest.raises(di.SpecError, match="node 1 \\(layer\\) is dangling"):
        di.LazyModel.from_dict(data)


def _tied_lm():
    tokens = di.Input(name="tokens", dtype="int64")
    emb = di.Embedding(7, 3)
    return emb, di.LazyModel(inputs=tokens, outputs=di.Attend(emb)(di.Tanh()(emb(tokens))))


def test_attend_reuses_the_embedding_table():
    emb, spec = _tied_lm()
    report = di.infer_shapes(spec, (2, 4))
    assert report.output_shape == (2, 4, 7)
    assert list(report.params) == ["0.weight"] and report.total_params == 21  # the table, once
    table = np.arange(21, dtype=np.float32).reshape(7, 3) / 10
    tokens = np.array([[0, 6, 2, 2], [1, 1, 5, 3]])
    got = reference_forward(spec, [tokens], {"0.weight": table})
    np.testing.assert_allclose(got, np.tanh(table[tokens]) @ table.T, rtol=1e-6)
    assert di.LazyModel.from_dict(spec.to_dict()) == spec
    again = di.LazyModel.from_dict(spec.to_dict())
    assert again.layers[2].embedding is again.layers[0]  # the reference is the same object again


def test_attend_checks_its_input_and_refuses_list_specs():
    emb = di.Embedding(7, 3)
    with pytest.raises(di.SpecError, match="Attend: embedding"):
        di.Attend(di.Dense(3))
    x = di.Input(name="tokens", dtype="int64")
    spec = di.LazyModel(inputs=x, outputs=di.Attend(emb)(di.Dense(4)(emb(x))))
    with pytest.raises(di.ShapeMismatchError, match="embedding's dim 3"):
        di.infer_shapes(spec, (2, 4))
    with pytest.raises(di.UnsupportedLayerError, match="graph spec"):
        di.compile(di.LazyModel([emb, di.Attend(emb)]), "numpy")


def test_graph_needs_inputs_and_outputs():
    x = di.Input(name="x")
    with pytest.raises(di.SpecError, match="both inputs= and outputs="):
        di.LazyModel(inputs=x)
    with pytest.raises(di.SpecError, match="inputs\\[0\\] must be a di.Input"):
        di.LazyModel(inputs=di.Dense(2)(x), outputs=x)
