"""The reference forward pass against independent truth: naive loops written here and numbers by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deferinit as di


def run(spec: di.LazyModel, weights: dict, x: np.ndarray, training: bool = False) -> np.ndarray:
    model = di.compile(spec, "numpy")
    model.load_weights(weights, input_shape=x.shape)
    return model(x, training=training)


def naive_conv2d(x, w, b, stride, pad, dil, groups):  # type: ignore[no-untyped-def]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad[0], wd + 2 * pad[1]), np.float64)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for ni in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    acc = b[oc] if b is not None else 0.0
                    for ci in range(cg):
                        for a in range(kh):
                            for bb in range(kw):
                                acc += w[oc, ci, a, bb] * xp[ni, g * cg + ci, i * stride[0] + a * dil[0],
                                                             j * stride[1] + bb * dil[1]]
                    out[ni, oc, i, j] = acc
    return out


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, dilation=2, padding=2), dict(kernel_size=3, groups=2, stride=2, padding=1),
])
def test_conv2d_matches_naive_loops(kw: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    spec = di.LazyModel([di.Conv2D(6, **kw)])
    r = di.infer_shapes(spec, x.shape)
    w = rng.standard_normal(r.params["0.weight"].shape).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    layer = spec.layers[0]
    want = naive_conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    got = run(spec, {"0.weight": w, "0.bias": b}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # channels_last gives the same numbers, transposed
    spec_cl = di.LazyModel([di.Conv2D(6, **kw)], data_format="channels_last")
    got_cl = run(spec_cl, {"0.weight": w, "0.bias": b}, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got_cl, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_same_padding_puts_the_odd_pixel_after() -> None:
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    w = np.ones((1, 1, 4), np.float32)  # total pad 3: 1 before, 2 after
    got = run(di.LazyModel([di.Conv1D(1, 4, padding="same", use_bias=False)]), {"0.weight": w}, x)
    # windows over [0 | 0 1 2 3 4 | 0 0]: 0+0+1+2, 0+1+2+3, 1+2+3+4, 2+3+4+0, 3+4+0+0
    np.testing.assert_array_equal(got[0, 0], [3, 6, 10, 9, 7])


def test_pools_by_hand() -> None:
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]], np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(run(di.LazyModel([di.MaxPool2D(2)]), {}, x)[0, 0], [[6, 8], [14, 16]])
    np.testing.assert_array_equal(run(di.LazyModel([di.AvgPool2D(2)]), {}, x)[0, 0], [[3.5, 5.5], [11.5, 13.5]])
    neg = -x
    # max pool pads with -inf: the corner window (pad 1, size 3, stride 2) sees -1, -2, -5, -6 only
    got = run(di.LazyModel([di.MaxPool2D(3, stride=2, padding=1)]), {}, neg)
    assert got[0, 0, 0, 0] == -1
    # avg pool counts padded zeros: corner window sums 1+2+5+6 = 14 over 9 cells
    got = run(di.LazyModel([di.AvgPool2D(3, stride=2, padding=1)]), {}, x)
    assert got[0, 0, 0, 0] == pytest.approx(14 / 9)
    gap = run(di.LazyModel([di.GlobalAvgPool2D()]), {}, x)
    np.testing.assert_array_equal(gap, [[8.5]])


def test_dense_flatten_order_and_activations_by_hand() -> None:
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]], np.float32)  # (1, C=2, 2, 2)
    w = np.zeros((1, 8), np.float32)
    w[0, 1] = 1.0  # picks flattened element 1: (c=0, h=0, w=1) = 2 channels-first
    assert run(di.LazyModel([di.Flatten(), di.Dense(1, use_bias=False)]), {"1.weight": w}, x)[0, 0] == 2.0
    xl = x.transpose(0, 2, 3, 1)  # channels_last flattens (h, w, c): element 1 is (0, 0, c=1) = 5
    spec = di.LazyModel([di.Flatten(), di.Dense(1, use_bias=False)], data_format="channels_last")
    assert run(spec, {"1.weight": w}, xl)[0, 0] == 5.0
    v = np.array([[-1.0, 0.5, 2.0]], np.float32)
    eye = {"0.weight": np.eye(3, dtype=np.float32), "0.bias": np.zeros(3, np.float32)}
    for act, fn in [("relu", lambda t: max(t, 0.0)), ("sigmoid", lambda t: 1 / (1 + math.exp(-t))),
                    ("tanh", math.tanh), ("gelu", lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2)))),
                    ("silu", lambda t: t / (1 + math.exp(-t)))]:
        got = run(di.LazyModel([di.Dense(3, activation=act)]), eye, v)
        np.testing.assert_allclose(got[0], [fn(t) for t in v[0]], rtol=1e-6, err_msg=act)
    e = np.exp([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(run(di.LazyModel([di.Dense(3), di.Softmax()]), eye, v)[0], e / e.sum(), rtol=1e-6)


def test_batchnorm_inference_and_training_update_by_hand() -> None:
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 30.0]], np.float32)  # (N=3, C=2)
    w = {"0.weight": np.array([2.0, 1.0], np.float32), "0.bias": np.array([0.5, 0.0], np.float32),
         "0.running_mean": np.array([1.0, 10.0], np.float32), "0.running_var": np.array([4.0, 100.0], np.float32)}
    model = di.compile(di.LazyModel([di.BatchNorm(eps=0.0 + 1e-12, momentum=0.1)]), "numpy")
    model.load_weights(w)
    y = model(x)
    np.testing.assert_allclose(y[:, 0], 2.0 * (x[:, 0] - 1.0) / 2.0 + 0.5, rtol=1e-6)
    model(x, training=True)
    stats = model.export_weights()
    # channel 0: batch mean 3, biased var 8/3, unbiased var 4 -> 0.9*1 + 0.1*3 = 1.2 ; 0.9*4 + 0.1*4 = 4
    np.testing.assert_allclose(stats["0.running_mean"], [1.2, 0.9 * 10 + 0.1 * 20], rtol=1e-6)
    np.testing.assert_allclose(stats["0.running_var"], [4.0, 0.9 * 100 + 0.1 * 100], rtol=1e-6)


def test_layernorm_residual_concat_embedding_tied_by_hand() -> None:
    x = np.array([[1.0, 2.0, 3.0, 6.0]], np.float32)
    w = {"0.weight": np.ones(4, np.float32), "0.bias": np.zeros(4, np.float32)}
    got = run(di.LazyModel([di.LayerNorm(eps=1e-12)]), w, x)
    mean, std = 3.0, math.sqrt((4 + 1 + 0 + 9) / 4)
    np.testing.assert_allclose(got[0], [(v - mean) / std for v in x[0]], rtol=1e-6)
    d = {"0.body.weight": 2 * np.eye(4, dtype=np.float32), "0.body.bias": np.zeros(4, np.float32)}
    np.testing.assert_allclose(run(di.LazyModel([di.Residual(di.Dense(4))]), d, x), 3 * x)
    c = {"0.0.weight": np.ones((1, 4), np.float32), "0.0.bias": np.zeros(1, np.float32),
         "0.1.weight": np.eye(4, dtype=np.float32)[:2], "0.1.bias": np.ones(2, np.float32)}
    np.testing.assert_allclose(run(di.LazyModel([di.Concat([di.Dense(1), di.Dense(2)])]), c, x), [[12, 2, 3]])
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    ids = np.array([[5, 0]], np.int64)
    got = run(di.LazyModel([di.Embedding(6, 2)]), {"0.weight": table}, ids)
    np.testing.assert_array_equal(got, [[[10, 11], [0, 1]]])
    shared = di.Dense(2, use_bias=False)
    got = run(di.LazyModel([shared, shared]), {"0.weight": np.array([[0, 1], [1, 1]], np.float32)},
              np.array([[1.0, 2.0]], np.float32))
    np.testing.assert_array_equal(got, [[3.0, 5.0]])  # [2, 3] after one use, [3, 5] after the second


def test_dropout_is_identity_in_inference_and_scales_in_training() -> None:
    model = di.compile(di.LazyModel([di.Dropout(0.5)]), "numpy")
    model.apply_init(np.ones((1, 1000), np.float32))
    x = np.ones((1, 1000), np.float32)
    np.testing.assert_array_equal(model(x), x)
    y = model(x, training=True)
    assert set(np.unique(y)) <= {0.0, 2.0} and 350 < (y == 0).sum() < 650


def test_intermediates_cover_every_layer_position() -> None:
    spec = di.LazyModel([di.Dense(3), di.Residual(di.Sequential([di.Dense(3), di.ReLU()])), di.Dense(2)])
    model = di.compile(spec, "numpy")
    model.apply_init(np.ones((2, 4), np.float32), init="ones")
    inter = model.intermediates(np.ones((2, 4), np.float32))
    assert set(inter) == set(model.report.layers)  # keyed like the report, ordered as executed
    assert list(inter)[:2] == ["0", "1.body.0"]
    np.testing.assert_array_equal(inter["0"], np.full((2, 3), 4.0))  # ones(4) . ones(4)
    np.testing.assert_array_equal(inter["1.body.0"], np.full((2, 3), 12.0))
    np.testing.assert_array_equal(inter["1"], np.full((2, 3), 16.0))
