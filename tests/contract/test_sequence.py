"""Sequence layers: shape rules and the reference forward pass against formulas evaluated here by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deferinit as di


def run(spec: di.LazyModel, weights: dict, x: np.ndarray) -> np.ndarray:
    model = di.compile(spec, "numpy")
    model.load_weights(weights, input_shape=di.ShapeDtype(x.shape, x.dtype.name))
    return model(x)


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_recurrent_shapes_follow_pytorch() -> None:
    r = di.infer_shapes(di.LazyModel([di.LSTM(8, num_layers=2, bidirectional=True)]), (3, 5, 4))
    assert r.output_shape == (3, 5, 16)
    assert r.params["0.weight_ih_l0"].shape == (32, 4) and r.params["0.weight_hh_l0"].shape == (32, 8)
    assert r.params["0.weight_ih_l1_reverse"].shape == (32, 16)  # layer 2 sees both directions
    # torch.nn.LSTM(4, 8, 2, bidirectional=True) has 4*8*(4+8+2) + ... = hand count:
    per_dir_l0 = 32 * 4 + 32 * 8 + 32 + 32
    per_dir_l1 = 32 * 16 + 32 * 8 + 32 + 32
    assert r.total_params == 2 * (per_dir_l0 + per_dir_l1)
    assert di.infer_shapes(di.LazyModel([di.GRU(6, use_bias=False)]), (1, None, 3)).params["0.weight_ih_l0"].shape == (18, 3)
    assert di.infer_shapes(di.LazyModel([di.GRU(6)]), (None, None, 3)).output_shape == (None, None, 6)


def test_gru_one_step_by_hand() -> None:
    # hidden 1, input 1: gates (r, z, n); h0 = 0 so W_hh h = 0 and only b_hh counts
    w = {"0.weight_ih_l0": np.array([[0.5], [-1.0], [2.0]], np.float32),
         "0.weight_hh_l0": np.array([[0.3], [0.2], [0.1]], np.float32),
         "0.bias_ih_l0": np.array([0.1, 0.2, 0.3], np.float32), "0.bias_hh_l0": np.array([0.4, 0.5, 0.6], np.float32)}
    x = np.array([[[2.0], [1.0]]], np.float32)
    got = run(di.LazyModel([di.GRU(1)]), w, x)[0, :, 0]
    r = sig(0.5 * 2 + 0.1 + 0.4)
    z = sig(-1.0 * 2 + 0.2 + 0.5)
    n = math.tanh(2.0 * 2 + 0.3 + r * 0.6)
    h1 = (1 - z) * n
    r2 = sig(0.5 + 0.1 + 0.3 * h1 + 0.4)
    z2 = sig(-1.0 + 0.2 + 0.2 * h1 + 0.5)
    n2 = math.tanh(2.0 + 0.3 + r2 * (0.1 * h1 + 0.6))
    h2 = (1 - z2) * n2 + z2 * h1
    np.testing.assert_allclose(got, [h1, h2], rtol=1e-5)


def test_lstm_and_reverse_direction_by_hand() -> None:
    w = {"0.weight_ih_l0": np.array([[1.0], [1.0], [1.0], [1.0]], np.float32),
         "0.weight_hh_l0": np.zeros((4, 1), np.float32),
         "0.weight_ih_l0_reverse": np.array([[2.0], [0.0], [1.0], [0.0]], np.float32),
         "0.weight_hh_l0_reverse": np.zeros((4, 1), np.float32)}
    x = np.array([[[0.5], [1.5]]], np.float32)
    got = run(di.LazyModel([di.LSTM(1, bidirectional=True, use_bias=False)]), w, x)[0]

    def step(xv: float, c: float, wi: list) -> tuple[float, float]:
        i, f, g, o = sig(wi[0] * xv), sig(wi[1] * xv), math.tanh(wi[2] * xv), sig(wi[3] * xv)
        c = f * c + i * g
        return o * math.tanh(c), c

    h1, c1 = step(0.5, 0.0, [1, 1, 1, 1])
    h2, _ = step(1.5, c1, [1, 1, 1, 1])
    rb2, cb = step(1.5, 0.0, [2, 0, 1, 0])  # the reverse direction starts at the last step
    rb1, _ = step(0.5, cb, [2, 0, 1, 0])
    np.testing.assert_allclose(got[:, 0], [h1, h2], rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], [rb1, rb2], rtol=1e-5)


def test_single_head_attention_by_hand() -> None:
    eye = np.eye(2, dtype=np.float32)
    w = {"0.q_weight": eye, "0.k_weight": eye, "0.v_weight": eye, "0.out_weight": eye}
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    got = run(di.LazyModel([di.MultiHeadAttention(2, 1)]), w, x)[0]
    a = math.exp(1 / math.sqrt(2))
    p = a / (a + 1)  # each query attends to itself with score 1/sqrt(2), to the other with 0
    np.testing.assert_allclose(got, [[p, 1 - p], [1 - p, p]], rtol=1e-6)


def test_positional_encoding_class_token_and_friends() -> None:
    x = np.zeros((1, 3, 4), np.float32)
    got = run(di.LazyModel([di.PositionalEncoding()]), {}, x)[0]
    assert got[2, 0] == pytest.approx(math.sin(2)) and got[2, 1] == pytest.approx(math.cos(2))
    assert got[1, 2] == pytest.approx(math.sin(1 / 100)) and got[1, 3] == pytest.approx(math.cos(1 / 100))
    token = np.array([[[7.0, 8.0]]], np.float32)
    out = run(di.LazyModel([di.ClassToken()]), {"0.weight": token}, np.ones((2, 3, 2), np.float32))
    assert out.shape == (2, 4, 2) and (out[:, 0] == [7, 8]).all() and (out[:, 1:] == 1).all()
    pos = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    np.testing.assert_array_equal(run(di.LazyModel([di.PositionEmbedding()]), {"0.weight": pos},
                                      np.ones((2, 3, 2), np.float32))[1], pos[0] + 1)
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    out = run(di.LazyModel([di.Reshape((2, -1)), di.Permute((2, 1)), di.Take(1), di.Scale(2.0)]), {}, x)
    np.testing.assert_array_equal(out, [[2.0, 26.0]])  # element 1 of each channel's 12, doubled
    ids = np.array([[2, 0]], np.int64)
    np.testing.assert_array_equal(run(di.LazyModel([di.OneHot(3)]), {}, ids), [[[0, 0, 1], [1, 0, 0]]])


@pytest.mark.parametrize("spec,shape,match", [
    (di.LazyModel([di.GRU(4)]), (2, 5), r"layer '0' \(GRU\) expected a rank-3 input"),
    (di.LazyModel([di.PositionalEncoding()]), (2, 5, 3), r"even number of features"),
    (di.LazyModel([di.PositionalEncoding(max_len=4)]), (2, 5, 4), r"at most max_len=4 steps"),
    (di.LazyModel([di.PositionEmbedding()]), (2, None, 4), r"known size for the number of steps"),
    (di.LazyModel([di.Reshape((5, -1))]), (2, 12), r"a multiple of 5 elements"),
    (di.LazyModel([di.Permute((2, 1))]), (2, 3), r"rank-3 input"),
    (di.LazyModel([di.Take(4)]), (2, 3, 5), r"more than 4 entries"),
])
def test_sequence_shape_errors(spec: di.LazyModel, shape: tuple, match: str) -> None:
    with pytest.raises(di.ShapeMismatchError, match=match):
        di.infer_shapes(spec, shape)


def test_sequence_spec_errors() -> None:
    with pytest.raises(di.SpecError, match="num_heads must divide num_hiddens"):
        di.MultiHeadAttention(10, 3)
    with pytest.raises(di.SpecError, match="activation must be 'tanh' or 'relu'"):
        di.RNN(4, activation="gelu")
    with pytest.raises(di.SpecError, match="Permute"):
        di.Permute((1, 3))
