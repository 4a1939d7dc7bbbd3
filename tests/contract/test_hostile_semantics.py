"""One semantics on every backend where the frameworks disagree: a BatchNorm's input rank, NaN through activations
and max pooling, a NaN training batch reaching BatchNorm statistics, and token ids out of range wherever the
Embedding or OneHot sits. Expected values are derived by hand here (math, explicit loops), not taken from the
reference backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import deferinit as di

NAN, INF = float("nan"), float("inf")


def out(model: di.CompiledModel, x: np.ndarray, **kw: bool) -> np.ndarray:
    return np.asarray(model.to_numpy(model(x, **kw)), dtype=np.float64)


def same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float32 rounding, NaN where (and only where) NaN is expected, infinities exactly."""
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # NaN == NaN, inf == inf here


def bn_weights(prefix: str, c: int) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": np.full(c, 2.0, np.float32), f"{prefix}.bias": np.full(c, 0.5, np.float32),
            f"{prefix}.running_mean": np.ones(c, np.float32), f"{prefix}.running_var": np.full(c, 4.0, np.float32)}


def bn_by_hand(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) - 1.0) / math.sqrt(4.0 + 1e-5) * 2.0 + 0.5


# ====================================================================================== 16.12: BatchNorm rank
def test_batchnorm_rank_is_fixed_by_load_weights_on_every_backend(backend: str) -> None:
    model = di.compile(di.LazyModel([di.BatchNorm()]), backend)
    report = model.load_weights(bn_weights("0", 3))  # no input_shape: (1, C) is what the weights say
    assert report.input_shape == (1, 3)
    image = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(BatchNorm\) expected a rank-2 input, as when the model "
                                                    r"was initialized.*received rank 4 \(2, 3, 2, 2\).*call apply_init with "
                                                    r"an input of this rank \(then load_weights again") as info:
        model(image)
    assert "please report" not in str(info.value)
    rows = np.array([[1.0, 3.0, 5.0]], np.float32)
    same(out(model, rows), bn_by_hand(rows))  # still the model it was
    # what the message says to do works, with the same weights
    model.apply_init(image)
    model.load_weights(bn_weights("0", 3))
    same(out(model, image), bn_by_hand(image))
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(BatchNorm\) expected a rank-4 input"):
        model(rows)


def test_the_error_names_the_first_batchnorm_whose_rank_differs(backend: str) -> None:
    spec = di.LazyModel([di.Dense(3), di.Residual(di.Sequential([di.Identity(), di.BatchNorm()]))])
    model = di.compile(spec, backend)
    model.apply_init(np.zeros((2, 4), np.float32), key=0)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '1\.body\.1' \(BatchNorm\) expected a rank-2 input.*"
                                                    r"received rank 3 \(5, 6, 3\) \(input shape \(5, 6, 4\)\)"):
        model(np.zeros((5, 6, 4), np.float32))
    assert out(model, np.zeros((5, 4), np.float32)).shape == (5, 3)


def test_layers_that_take_any_rank_still_do(backend: str) -> None:
    # Dense acts on the last axis, LayerNorm normalizes it, activations are element-wise: every framework takes
    # any rank there, so initialization does not fix it (only BatchNorm's)
    spec = di.LazyModel([di.Dense(2, activation="relu"), di.LayerNorm(), di.Softmax()])
    model = di.compile(spec, backend)
    w = {"0.weight": np.array([[1.0, 0.0], [0.0, -1.0]], np.float32), "0.bias": np.zeros(2, np.float32),
         "1.weight": np.ones(2, np.float32), "1.bias": np.zeros(2, np.float32)}
    model.load_weights(w, input_shape=(1, 2))
    x = np.array([[[3.0, -1.0]], [[-2.0, -2.0]]], np.float32)  # (2, 1, 2): rank 3 where init saw rank 2
    h = np.array([[[3.0, 1.0]], [[0.0, 2.0]]])  # relu(x @ W.T)
    z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    same(out(model, x), np.exp(z) / np.exp(z).sum(-1, keepdims=True))


# ====================================================================================== 16.11: NaN in, NaN out
ROW = [NAN, -1.5, 0.0, 2.0]


def _gelu(v: float) -> float:
    return v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


BY_HAND = {
    "relu": lambda r: [max(v, 0.0) if v == v else NAN for v in r],
    "sigmoid": lambda r: [1.0 / (1.0 + math.exp(-v)) if v == v else NAN for v in r],
    "tanh": lambda r: [math.tanh(v) if v == v else NAN for v in r],
    "gelu": lambda r: [_gelu(v) if v == v else NAN for v in r],
    "silu": lambda r: [v / (1.0 + math.exp(-v)) if v == v else NAN for v in r],
    "softmax": lambda r: [NAN] * len(r) if any(v != v for v in r) else
    [math.exp(v) / sum(math.exp(u) for u in r) for v in r],
}
NAMED = {"relu": di.ReLU, "sigmoid": di.Sigmoid, "tanh": di.Tanh, "gelu": di.GELU, "softmax": di.Softmax}


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_activations_keep_nan(backend: str, name: str) -> None:
    x = np.array([ROW, [0.5, -0.25, 1.0, -3.0]], np.float32)
    want = [BY_HAND[name](r) for r in x.tolist()]
    layers = [di.Activation(name)] + ([NAMED[name]()] if name in NAMED else [])
    for layer in layers:
        model = di.compile(di.LazyModel([layer]), backend)
        model.apply_init(x)
        same(out(model, x), want)


@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid"])
def test_fused_activations_keep_nan(backend: str, name: str) -> None:
    # TensorFlow fuses MatMul+BiasAdd+Relu into one oneDNN kernel that reads NaN as 0; Gluon's Dense runs its
    # activation on MXNet's Activation operator, which does too
    eye = {"0.weight": np.eye(4, dtype=np.float32), "0.bias": np.zeros(4, np.float32)}
    x = np.array([ROW, [0.5, -0.25, 1.0, -3.0]], np.float32)
    want = [BY_HAND[name]([NAN] * 4), BY_HAND[name](x[1].tolist())]  # NaN * 0 is NaN: the matmul spreads it
    fused = di.compile(di.LazyModel([di.Dense(4, activation=name)]), backend)
    fused.load_weights(eye, input_shape=(2, 4))
    same(out(fused, x), want)
    apart = di.compile(di.LazyModel([di.Dense(4), di.Activation(name)]), backend)
    apart.load_weights(eye, input_shape=(2, 4))
    same(out(apart, x), want)
    if name != "softmax":  # a 1x1 convolution with the identity kernel (softmax would act on its 1-pixel width)
        conv = di.compile(di.LazyModel([di.Conv2D(4, 1, activation=name)]), backend)
        conv.load_weights({"0.weight": np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1), "0.bias": np.zeros(4, np.float32)},
                          input_shape=(2, 4, 1, 1))
        same(out(conv, x.reshape(2, 4, 1, 1)).reshape(2, 4), want)


def test_residual_activation_keeps_nan(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Residual(di.Sequential([di.Identity()]), activation="relu")]), backend)
    x = np.array([ROW], np.float32)
    model.apply_init(x)
    same(out(model, x), [[NAN, 0.0, 0.0, 4.0]])


def test_relu_gradient_at_zero_is_zero(backend: str) -> None:
    # keeping NaN must not change relu'(0) = 0 (a maximum(x, 0) would pass the gradient through at the tie)
    model = di.compile(di.LazyModel([di.Dense(2, activation="relu")]), backend)
    model.load_weights({"0.weight": np.array([[1.0, -1.0], [2.0, 0.0]], np.float32), "0.bias": np.zeros(2, np.float32)},
                       input_shape=(1, 2))
    x = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    if backend == "numpy":  # the reference has no gradients of its own: it says so, by name, and that is all
        with pytest.raises(di.UnsupportedLayerError, match="gradients are not available"):
            model.gradients(np.zeros((1,) + tuple(model.report.input_shape[1:]), np.float32))
        return
    grads = model.gradients(x)
    # row 0: both pre-activations are exactly 0 (no gradient); row 1: unit 0 is 0 (no gradient), unit 1 is 2
    np.testing.assert_array_equal(grads["0.weight"], [[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(grads["0.bias"], [0.0, 1.0])


def test_relu_gradient_of_a_tiny_positive_input_is_one(backend: str) -> None:
    # relu'(x) = 1 for every x > 0, denormals included: MXNet's NaN-keeping elu(slope=0) gave 0 there, which moved
    # GoogLeNet's bias gradients 7.5e-4 away from the other frameworks'
    model = di.compile(di.LazyModel([di.Dense(1, activation="relu")]), backend)
    model.load_weights({"0.weight": np.ones((1, 1), np.float32), "0.bias": np.zeros(1, np.float32)}, input_shape=(1, 1))
    if backend == "numpy":  # the reference has no gradients of its own: it says so, by name, and that is all
        with pytest.raises(di.UnsupportedLayerError, match="gradients are not available"):
            model.gradients(np.zeros((1, 1), np.float32))
        return
    grads = model.gradients(np.array([[1e-30], [1e-20], [0.5]], np.float32))
    np.testing.assert_allclose(grads["0.bias"], [3.0])
    np.testing.assert_allclose(grads["0.weight"], [[1e-30 + 1e-20 + 0.5]], rtol=1e-6)


def _max_pool_by_hand(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    y = np.empty((n, c, oh, ow))
    for i, j, a, b in np.ndindex(n, c, oh, ow):
        window = [float(x[i, j, r, s]) for r in range(a * stride - pad, a * stride - pad + k)
                  for s in range(b * stride - pad, b * stride - pad + k) if 0 <= r < h and 0 <= s < w]
        y[i, j, a, b] = NAN if any(v != v for v in window) else max(window)
    return y


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_max_pool_propagates_nan(backend: str, k: int, stride: int, pad: int, fmt: str) -> None:
    x = np.arange(2 * 2 * 6 * 6, dtype=np.float32).reshape(2, 2, 6, 6) - 30
    x[0, 0, 0, 0] = NAN
    x[0, 1, 4, 3] = NAN
    x[1, 0, 2, 2] = INF  # no NaN near: the max is inf
    x[1, 1, 5, 5] = -INF
    want = _max_pool_by_hand(x, k, stride, pad)
    model = di.compile(di.LazyModel([di.MaxPool2D(k, stride=stride, padding=pad)], data_format=fmt), backend)
    if fmt == "channels_last":
        x, want = x.transpose(0, 2, 3, 1), want.transpose(0, 2, 3, 1)
    model.apply_init(x)
    same(out(model, x), want)


def test_max_pool_gradient_is_unchanged(backend: str) -> None:
    model = di.compile(di.LazyModel([di.MaxPool2D(2), di.Flatten(), di.Dense(1, use_bias=False)]), backend)
    model.load_weights({"2.weight": np.ones((1, 4), np.float32)}, input_shape=(1, 1, 4, 4))
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    if backend == "numpy":  # the reference has no gradients of its own: it says so, by name, and that is all
        with pytest.raises(di.UnsupportedLayerError, match="gradients are not available"):
            model.gradients(np.zeros((1,) + tuple(model.report.input_shape[1:]), np.float32))
        return
    np.testing.assert_allclose(model.gradients(x)["2.weight"], [[5.0, 7.0, 13.0, 15.0]])


def test_a_nan_training_batch_never_reaches_batchnorm_statistics(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Identity(), di.BatchNorm()]), backend)
    weights = bn_weights("1", 2)
    model.load_weights(weights, input_shape=(4, 2))
    for bad in (NAN, INF):
        x = np.array([[1.0, 2.0], [bad, 0.0], [3.0, 1.0], [0.0, 0.0]], np.float32)
        with pytest.raises(di.ShapeMismatchError, match=r"layer '1' \(BatchNorm\) expected finite values in a training "
                                                        r"batch.*received 1 NaN or infinite value"):
            model(x, training=True)
        with pytest.raises(di.ShapeMismatchError, match=r"layer '1' \(BatchNorm\) expected finite values"):
            model.gradients(x, training=True)
        after = model.export_weights()
        for name, value in weights.items():
            np.testing.assert_array_equal(after[name], value)
        # inference reads the statistics, it does not write them: NaN in, NaN out, the other rows untouched
        same(out(model, x), bn_by_hand(x))
    clean = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [2.0, 2.0]], np.float32)
    model(clean, training=True)  # a clean batch still trains
    assert not np.array_equal(model.export_weights()["1.running_mean"], weights["1.running_mean"])


# ====================================================================================== 15.11: token ids
# the model, then for id 50 and for id -1: the position that must be named and its table size
ID_CASES = {
    "after Identity": (lambda: [di.Identity(), di.Embedding(10, 2)], ("1", 10), ("1", 10)),
    "OneHot after Reshape": (lambda: [di.Reshape((2,)), di.OneHot(10)], ("1", 10), ("1", 10)),
    "nested": (lambda: [di.Sequential([di.Identity(), di.Sequential([di.Embedding(10, 2)])])], ("0.1.0", 10),
               ("0.1.0", 10)),
    "second Concat branch": (lambda: [di.Concat([di.Embedding(100, 2), di.Embedding(10, 2)])], ("0.1", 10),
                             ("0.0", 100)),
    "Residual shortcut": (lambda: [di.Residual(di.Sequential([di.Embedding(100, 2)]),
                                               shortcut=di.Sequential([di.Embedding(10, 2)]))], ("0.shortcut.0", 10),
                          ("0.body.0", 100)),
}


@pytest.mark.parametrize("case", sorted(ID_CASES))
@pytest.mark.parametrize("bad", [50, -1])
def test_ids_are_checked_at_every_layer_they_reach(backend: str, case: str, bad: int) -> None:
    make, high, low = ID_CASES[case]
    path, size = high if bad > 0 else low
    model = di.compile(di.LazyModel(make()), backend)
    ok = np.array([[1, 2], [9, 0]], np.int64)
    model.apply_init(ok, key=0)
    kind = "OneHot" if "OneHot" in case else "Embedding"
    x = np.array([[1, 2], [bad, 0]], np.int64)
    with pytest.raises(di.ShapeMismatchError, match=rf"layer '{path}' \({kind}\) expected indices in \[0, {size}\), "
                                                    rf"received values from {min(bad, 0)} to {max(bad, 2)}") as info:
        model(x)
    assert "please report" not in str(info.value)
    assert out(model, ok).shape[0] == 2  # the model still runs


def test_ids_are_routed_through_take_permute_and_reshape(backend: str) -> None:
    # (N, 3, 2) -> Permute -> (N, 2, 3) -> Take(0) -> (N, 3) = x[:, :, 0]: only those ids reach the Embedding
    spec = di.LazyModel([di.Reshape((3, 2)), di.Permute((2, 1)), di.Take(0), di.Embedding(10, 1)])
    model = di.compile(spec, backend)
    table = np.arange(10, dtype=np.float32).reshape(10, 1) * 10
    model.load_weights({"3.weight": table}, input_shape=(1, 6))
    x = np.array([[1, 50, 2, -7, 3, 99]], np.int64)  # x.reshape(1, 3, 2)[:, :, 0] = [1, 2, 3]
    same(out(model, x), [[[10.0], [20.0], [30.0]]])
    x[0, 2] = 12
    with pytest.raises(di.ShapeMismatchError, match=r"layer '3' \(Embedding\) expected indices in \[0, 10\), received "
                                                    r"values from 1 to 12"):
        model(x)


def test_apply_init_with_out_of_range_ids_changes_nothing(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Identity(), di.Embedding(10, 2)]), backend)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '1' \(Embedding\) expected indices in \[0, 10\)"):
        model.apply_init(np.array([[1, 10]], np.int64))
    assert not model.initialized
