"""The TensorFlow (Keras 3) adapter against the same models written by hand in Keras.

Each hand-built model is what a Keras user writes for the spec (as the d2l book's lazy-initialization
chapter does: ``keras.Sequential`` of layers with no input shape, built by Keras on the first call), with the
user's own padding layers, "same" pooling and small subclassed blocks. The truth is therefore independent of
the adapter: Keras's own layers, hand-derived numbers, and the framework-free reference backend.
Collected only with ``--backend tensorflow``; it fails, never skips, if TensorFlow or Keras is broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers as L  # noqa: E402

CF = "channels_first"
TIGHT = {"atol": 1e-5, "rtol": 1e-5}


# ------------------------------------------------------------------------------------- layout knowledge
def dense_kernel(w: np.ndarray) -> np.ndarray:  # canonical (out, in) -> Keras (in, out)
    return w.T


def conv_kernel(w: np.ndarray) -> np.ndarray:  # canonical (out, in/g, *k) -> Keras (*k, in/g, out)
    return np.moveaxis(np.moveaxis(w, 0, -1), 0, -2)


def same(w: np.ndarray) -> np.ndarray:
    return w


def back(layout, g: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Keras layout -> canonical, by inverting ``layout`` on the shape."""
    if layout is dense_kernel:
        return g.T
    if layout is conv_kernel:
        return np.moveaxis(np.moveaxis(g, -2, 0), -1, 0)
    return g


def dense_pairs(layer, prefix: str) -> list:  # type: ignore[no-untyped-def]
    out = [(layer.kernel, f"{prefix}.weight", dense_kernel)]
    return out + ([(layer.bias, f"{prefix}.bias", same)] if layer.use_bias else [])


def conv_pairs(layer, prefix: str) -> list:  # type: ignore[no-untyped-def]
    out = [(layer.kernel, f"{prefix}.weight", conv_kernel)]
    return out + ([(layer.bias, f"{prefix}.bias", same)] if layer.use_bias else [])


def bn_pairs(layer, prefix: str) -> list:  # type: ignore[no-untyped-def]
    return [(layer.gamma, f"{prefix}.weight", same), (layer.beta, f"{prefix}.bias", same),
            (layer.moving_mean, f"{prefix}.running_mean", same),
            (layer.moving_variance, f"{prefix}.running_var", same)]


def bn(axis: int = 1, momentum: float = 0.9, eps: float = 1e-5):  # type: ignore[no-untyped-def]
    """A stock Keras BatchNormalization as the spec's BatchNorm(momentum=1 - momentum, eps) would be written."""
    return L.BatchNormalization(axis=axis, momentum=momentum, epsilon=eps)


class HandResidual(keras.layers.Layer):
    """The d2l Keras residual block, reduced to what the spec says: act(body(x) + shortcut(x))."""

    def __init__(self, body, shortcut=None, relu=True):  # type: ignore[no-untyped-def]
        super().__init__()
        self.body, self.shortcut, self.relu = body, shortcut, relu

    def call(self, x, training=None):  # type: ignore[no-untyped-def]
        y = self.body(x, training=training) + (self.shortcut(x) if self.shortcut is not None else x)
        return keras.ops.relu(y) if self.relu else y


class HandConcat(keras.layers.Layer):
    def __init__(self, branches, axis):  # type: ignore[no-untyped-def]
        super().__init__()
        self.branches, self.axis = branches, axis

    def call(self, x, training=None):  # type: ignore[no-untyped-def]
        return keras.ops.concatenate([b(x, training=training) for b in self.branches], axis=self.axis)


# ------------------------------------------------------------------------------------- hand-built models
def hand_mlp():  # type: ignore[no-untyped-def]
    net = keras.Sequential([L.Dense(16, activation="relu"), L.Dense(4)])
    return net, lambda: dense_pairs(net.layers[0], "0") + dense_pairs(net.layers[1], "1")


def hand_lenet():  # type: ignore[no-untyped-def]
    net = keras.Sequential([
        L.ZeroPadding2D(2, data_format=CF), L.Conv2D(6, 5, activation="sigmoid", data_format=CF),
        L.AveragePooling2D(2, 2, data_format=CF), L.Conv2D(16, 5, activation="sigmoid", data_format=CF),
        L.AveragePooling2D(2, 2, data_format=CF), L.Flatten(),  # the default Flatten is a plain reshape
        L.Dense(120, activation="sigmoid"), L.Dense(84, activation="sigmoid"), L.Dense(10)])
    lay = net.layers
    return net, lambda: (conv_pairs(lay[1], "0") + conv_pairs(lay[3], "2") + dense_pairs(lay[6], "5")
                         + dense_pairs(lay[7], "6") + dense_pairs(lay[8], "7"))


def hand_residual():  # type: ignore[no-untyped-def]
    def conv(c, k, s=1, pad=0):  # type: ignore[no-untyped-def]
        layers = [L.ZeroPadding2D(pad, data_format=CF)] if pad else []
        return layers + [L.Conv2D(c, k, strides=s, data_format=CF)]

    body1 = keras.Sequential(conv(8, 3, pad=1) + [bn(), L.ReLU()] + conv(8, 3, pad=1) + [bn()])
    body2 = keras.Sequential(conv(16, 3, 2, pad=1) + [bn()])
    short2 = L.Conv2D(16, 1, strides=2, data_format=CF)
    net = keras.Sequential(conv(8, 3, pad=1) + [bn(), L.ReLU(), HandResidual(body1), HandResidual(body2, short2),
                                                L.GlobalAveragePooling2D(data_format=CF), L.Dense(3)])

    def pairs():  # type: ignore[no-untyped-def]
        b1, b2 = body1.layers, body2.layers
        return (conv_pairs(net.layers[1], "0") + bn_pairs(net.layers[2], "1")
                + conv_pairs(b1[1], "3.body.0") + bn_pairs(b1[2], "3.body.1") + conv_pairs(b1[5], "3.body.3")
                + bn_pairs(b1[6], "3.body.4") + conv_pairs(b2[1], "4.body.0") + bn_pairs(b2[2], "4.body.1")
                + conv_pairs(short2, "4.shortcut") + dense_pairs(net.layers[7], "6"))
    return net, pairs


def hand_concat():  # type: ignore[no-untyped-def]
    b0 = L.Conv2D(3, 1, activation="relu", data_format=CF)
    b1 = keras.Sequential([L.Conv2D(2, 1, activation="relu", data_format=CF),
                           L.Conv2D(5, 3, padding="same", activation="relu", data_format=CF)])
    # TensorFlow's "same" max pooling never lets padding win: the spec's -inf padding
    b2 = keras.Sequential([L.MaxPooling2D(3, strides=1, padding="same", data_format=CF), L.Conv2D(2, 1, data_format=CF)])
    net = keras.Sequential([L.Conv2D(4, 3, padding="same", activation="relu", data_format=CF),
                            HandConcat([b0, b1, b2], axis=1), L.GlobalAveragePooling2D(data_format=CF), L.Dense(3)])
    return net, lambda: (conv_pairs(net.layers[0], "0") + conv_pairs(b0, "1.0") + conv_pairs(b1.layers[0], "1.1.0")
                         + conv_pairs(b1.layers[1], "1.1.1") + conv_pairs(b2.layers[1], "1.2.1")
                         + dense_pairs(net.layers[3], "3"))


def hand_conv1d():  # type: ignore[no-untyped-def]
    # Keras refuses stride 2 with dilation 2; a Keras user runs the dilated conv at stride 1 and keeps every
    # second output, which is the same arithmetic
    net = keras.Sequential([
        L.ZeroPadding1D(1, data_format=CF), L.Conv1D(8, 3, activation="relu", data_format=CF),
        L.Conv1D(8, 3, dilation_rate=2, groups=2, data_format=CF), L.Lambda(lambda t: t[:, :, ::2]),
        bn(), L.Flatten(), L.Dense(4)])
    lay = net.layers
    return net, lambda: (conv_pairs(lay[1], "0") + conv_pairs(lay[2], "1") + bn_pairs(lay[4], "2")
                         + dense_pairs(lay[6], "4"))


def hand_channels_last():  # type: ignore[no-untyped-def]
    branches = [L.Conv2D(3, 1), L.Conv2D(2, 3, padding="same")]
    res = L.Conv2D(5, 3, padding="same")
    net = keras.Sequential([L.Conv2D(6, 3, padding="same", activation="relu"), bn(axis=-1), L.MaxPooling2D(2),
                            HandConcat(branches, axis=-1), HandResidual(res, relu=False), L.AveragePooling2D(2),
                            L.Flatten(), L.Dense(4)])
    return net, lambda: (conv_pairs(net.layers[0], "0") + bn_pairs(net.layers[1], "1")
                         + conv_pairs(branches[0], "3.0") + conv_pairs(branches[1], "3.1")
                         + conv_pairs(res, "4.body") + dense_pairs(net.layers[7], "7"))


def hand_embedding():  # type: ignore[no-untyped-def]
    net = keras.Sequential([L.Embedding(50, 8), L.LayerNormalization(epsilon=1e-5), L.Flatten(), L.Dense(3)])
    return net, lambda: ([(net.layers[0].embeddings, "0.weight", same), (net.layers[1].gamma, "1.weight", same),
                          (net.layers[1].beta, "1.bias", same)] + dense_pairs(net.layers[3], "3"))


def hand_tied():  # type: ignore[no-untyped-def]
    shared = L.Dense(8, activation="tanh")
    net = keras.Sequential([L.Dense(8), shared, shared, L.Dense(3)])
    return net, lambda: dense_pairs(net.layers[0], "0") + dense_pairs(shared, "1") + dense_pairs(net.layers[3], "3")


HAND = {"mlp": hand_mlp, "lenet": hand_lenet, "residual": hand_residual, "concat": hand_concat,
        "conv1d": hand_conv1d, "channels_last": hand_channels_last, "embedding": hand_embedding, "tied": hand_tied}


def built_pair(case_id: str, init="xavier_uniform", key=3):  # type: ignore[no-untyped-def]
    """The adapter's model and the hand-built one (after its own dry run), with the same weights."""
    case = BY_ID[case_id]
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data(), init=init, key=key)
    hand, pairs_of = HAND[case_id]()
    hand(case.data(), training=False)  # Keras infers the hand-built model's shapes on its first call
    pairs = pairs_of()
    weights = model.export_weights()
    for var, name, layout in pairs:
        var.assign(layout(weights[name]))
    return case, model, hand, pairs


# ------------------------------------------------------------------------------------- (a) + (b)
@pytest.mark.parametrize("case_id", list(HAND))
def test_native_shapes_and_outputs_equal_the_hand_built_model(case_id: str) -> None:
    case, model, hand, pairs = built_pair(case_id)
    report = model.report
    # (a) every canonical parameter has exactly one hand-built counterpart, with the same native shape
    assert sorted(name for _, name, _ in pairs) == sorted(report.params)
    for var, name, _ in pairs:
        assert report.params[name].native_shape == tuple(var.shape), name
        assert report.params[name].source == "native"
    assert model.native.count_params() == hand.count_params() == report.total_params
    # (b) same weights -> same outputs, in inference and in training mode (batch statistics)
    x = case.data(seed=5, batch=3)
    np.testing.assert_allclose(model.to_numpy(model(x)), np.asarray(hand(x, training=False)), **TIGHT)
    if case_id in ("residual", "conv1d", "channels_last"):
        np.testing.assert_allclose(model.to_numpy(model(x, training=True)), np.asarray(hand(x, training=True)),
                                   **TIGHT)


def test_native_names_follow_structure_not_keras_counters() -> None:
    for _ in range(3):  # shift Keras's process-wide name counters
        L.Dense(2)(np.zeros((1, 2), np.float32))
    case = BY_ID["residual"]
    report = di.compile(case.make(), "tensorflow").apply_init(case.data())
    assert report.params["0.weight"].native_name == "lazy_model/0/kernel"
    assert report.params["1.running_var"].native_name == "lazy_model/1/moving_variance"
    assert report.params["4.shortcut.weight"].native_name.endswith("/4.shortcut/kernel")
    assert report.params["4.shortcut.weight"].native_shape == (1, 1, 8, 16)  # HWIO
    assert report.params["4.shortcut.weight"].shape == (16, 8, 1, 1)  # OIHW
    named = di.compile(di.LazyModel([di.Dense(3, name="head")], name="net"), "tensorflow")
    assert named.apply_init(np.zeros((1, 2), np.float32)).params["head.weight"].native_name == "net/head/kernel"


def test_grouped_conv_kernel_layout() -> None:
    spec = di.LazyModel([di.Conv2D(6, (3, 2), groups=3)])
    model = di.compile(spec, "tensorflow")
    report = model.apply_init(np.zeros((1, 9, 5, 5), np.float32))
    assert report.params["0.weight"].native_shape == (3, 2, 3, 6)  # (kh, kw, in/g, out)
    assert report.params["0.weight"].shape == (6, 3, 3, 2)  # (out, in/g, kh, kw)
    w = np.arange(6 * 3 * 3 * 2, dtype=np.float32).reshape(6, 3, 3, 2)
    model.load_weights({"0.weight": w, "0.bias": np.zeros(6, np.float32)})
    native = model.native.layers[0].kernel.numpy()
    assert native[1, 0, 2, 4] == w[4, 2, 1, 0]


# ------------------------------------------------------------------------------------- padding semantics
def test_max_pool_pads_with_minus_infinity_and_avg_pool_counts_padding() -> None:
    x = -np.ones((1, 1, 4, 4), np.float32)  # all negative: zero padding would win every border window
    maxp = di.compile(di.LazyModel([di.MaxPool2D(3, stride=1, padding=1)]), "tensorflow")
    maxp.apply_init(x)
    np.testing.assert_array_equal(maxp.to_numpy(maxp(x)), -np.ones((1, 1, 4, 4), np.float32))
    avg = di.compile(di.LazyModel([di.AvgPool2D(2, stride=1, padding=1)]), "tensorflow")
    avg.apply_init(x)
    y = avg.to_numpy(avg(-x))[0, 0]  # ones in: corners see 1 of 4 cells, edges 2 of 4, inside 4 of 4
    assert y.shape == (5, 5)
    assert y[0, 0] == y[4, 4] == 0.25 and y[0, 2] == y[2, 0] == 0.5 and y[2, 2] == 1.0


def test_stride_with_dilation_and_same_padding_matches_the_reference_at_many_sizes() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, stride=2, dilation=2, padding="same")])
    model = di.compile(spec, "tensorflow")
    model.apply_init(np.zeros((1, 2, 9, 9), np.float32), init="xavier_uniform", key=1)
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=(1, 2, 9, 9))
    rng = np.random.default_rng(0)
    for n in (9, 10, 11, 12, 7):  # the relaxed (None-sized) trace computes TensorFlow's "same" pads itself
        x = rng.standard_normal((2, 2, n, n + 1)).astype(np.float32)
        np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("case_id", ["lenet", "conv_options", "conv1d"])
def test_channels_first_conv_runs_channels_last_and_agrees_with_the_nchw_path(case_id: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """channels_first convolutions run channels-last on a CPU (TensorFlow's own kernels are NHWC-only, oneDNN's
    NCHW ones slower): the same outputs as the reference, and the same outputs and gradients as the NCHW path where
    this TensorFlow runs NCHW (oneDNN's kernels; each model traces its functions under its own setting)."""
    import tensorflow as tf

    from deferinit.adapters.tensorflow import modules as kl

    if not tf.config.list_logical_devices("GPU"):
        monkeypatch.setattr(kl, "TRANSPOSE_CF", None)  # asked afresh: a CPU runs channels-last, whatever oneDNN runs
        assert kl.transpose_channels_first() is True
    case = BY_ID[case_id]
    x = case.data(seed=8)
    want = None
    if kl.nchw_runs():
        monkeypatch.setattr(kl, "TRANSPOSE_CF", False)
        nchw = di.compile(case.make(), "tensorflow")
        nchw.apply_init(case.data(), init="xavier_uniform", key=2)
        want = (nchw.to_numpy(nchw(x)), nchw.gradients(x))  # traced now, on the NCHW path
    monkeypatch.setattr(kl, "TRANSPOSE_CF", True)
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data(), init="xavier_uniform", key=2)
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(model.export_weights(), input_shape=case.shape)
    out = model.to_numpy(model(x))
    np.testing.assert_allclose(out, ref(x), atol=2e-5, rtol=2e-4)
    if want is not None:
        np.testing.assert_allclose(out, want[0], atol=2e-5, rtol=2e-4)
        got = model.gradients(x)
        for name in want[1]:
            np.testing.assert_allclose(got[name], want[1][name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_channels_first_model_runs_with_onednn_off_and_keras_backend_unset() -> None:
    tests_dir = str(Path(__file__).parents[2])  # tests/, where cases.py is
    code = ("import sys, numpy as np, deferinit as di\n"
            f"sys.path.insert(0, {tests_dir!r})\n"
            "from cases import BY_ID\n"
            "from deferinit.adapters.tensorflow import modules as kl\n"
            "c = BY_ID['conv1d']; m = di.compile(c.make(), 'tensorflow'); m.apply_init(c.data(), init='normal', key=1)\n"
            "r = di.compile(c.make(), 'numpy'); r.load_weights(m.export_weights(), input_shape=c.shape)\n"
            "import os, keras; print(os.environ['KERAS_BACKEND'], keras.backend.backend())\n"
            "print(kl.TRANSPOSE_CF, float(np.abs(m.to_numpy(m(c.data())) - r(c.data())).max()))\n")
    out = _run_python(code, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")  # KERAS_BACKEND unset
    assert out.returncode == 0, out.stderr[-2000:]
    env_backend, keras_backend, flag, diff = out.stdout.split()[-4:]
    assert env_backend == keras_backend == "tensorflow"  # the adapter chose Keras's backend before importing it
    assert flag == "True" and float(diff) < 2e-5  # TensorFlow's own CPU kernels: NHWC only


def test_channels_first_transposed_convs_run_with_onednn_off() -> None:
    """Conv2DTranspose (plain, cropped, grouped) on channels_first data where TensorFlow's CPU kernels take NHWC
    only: the parity session (no oneDNN flag) found U-Net's up-convolutions failing there."""
    code = ("import numpy as np, deferinit as di\n"
            "from deferinit.adapters.tensorflow import modules as kl\n"
            "x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)).astype(np.float32)\n"
            "worst = 0.0\n"
            "for kw in (dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(groups=2, stride=2)):\n"
            "    spec = di.LazyModel([di.Conv2DTranspose(6, 3, activation='relu', **kw)])\n"
            "    m = di.compile(spec, 'tensorflow'); m.apply_init(x, init='normal', key=1)\n"
            "    r = di.compile(spec, 'numpy'); r.load_weights(m.export_weights(), input_shape=x.shape)\n"
            "    worst = max(worst, float(np.abs(m.to_numpy(m(x)) - r(x)).max()))\n"
            "print(kl.TRANSPOSE_CF, worst)\n")
    out = _run_python(code, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    assert out.returncode == 0, out.stderr[-2000:]
    flag, diff = out.stdout.split()[-2:]
    assert flag == "True" and float(diff) < 2e-5


# ------------------------------------------------------------------------------------- (c) batch norm
def test_batchnorm_training_updates_running_stats_by_pytorchs_rule() -> None:
    case = BY_ID["batchnorm"]  # BatchNorm(eps=1e-3, momentum=0.2) after a conv, BatchNorm() after a Dense
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data(), init="xavier_uniform", key=0)
    before = model.export_weights()
    x = case.data(seed=9)
    conv_out = model.intermediates(x)["0"]  # what the first BatchNorm sees
    model(x, training=True)
    after = model.export_weights()
    n = conv_out.shape[0] * conv_out.shape[2] * conv_out.shape[3]
    mean = conv_out.mean(axis=(0, 2, 3), dtype=np.float64)
    unbiased = conv_out.var(axis=(0, 2, 3), dtype=np.float64) * n / (n - 1)
    np.testing.assert_allclose(after["1.running_mean"], 0.8 * before["1.running_mean"] + 0.2 * mean, atol=1e-6)
    np.testing.assert_allclose(after["1.running_var"], 0.8 * before["1.running_var"] + 0.2 * unbiased, rtol=1e-5)
    # the whole model agrees with the reference backend's rule (deferinit.ops.batch_norm) for both layers
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(before, input_shape=case.shape)
    ref(x, training=True)
    for name, want in ref.export_weights().items():
        np.testing.assert_allclose(after[name], want, atol=1e-6, rtol=1e-5, err_msg=name)


def test_stock_keras_batchnorm_would_use_the_biased_variance() -> None:
    """Why the adapter's BatchNorm subclass exists: Keras moves moving_variance toward the BIASED variance."""
    x = np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32)
    stock = bn(momentum=0.9)
    stock(x, training=False)
    stock(x, training=True)
    ours = di.compile(di.LazyModel([di.BatchNorm(momentum=0.1)]), "tensorflow")
    ours.apply_init(x)
    ours(x, training=True)
    n, biased = 16, x.var(axis=(0, 2, 3), dtype=np.float64)
    np.testing.assert_allclose(stock.moving_variance.numpy(), 0.9 + 0.1 * biased, rtol=1e-5)
    np.testing.assert_allclose(ours.export_weights()["0.running_var"], 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(ours.to_numpy(ours(x, training=True)), np.asarray(stock(x, training=True)), **TIGHT)


# ------------------------------------------------------------------------------------- (d) gradients
@pytest.mark.parametrize("case_id,training", [("mlp", False), ("tied", False), ("lenet", False),
                                              ("residual", False), ("residual", True), ("embedding", False),
                                              ("channels_last", True)])
def test_gradients_equal_the_hand_built_models(case_id: str, training: bool) -> None:
    case, model, hand, pairs = built_pair(case_id)
    x = case.data(seed=6)
    got = model.gradients(x, training=training)
    assert sorted(got) == sorted(n for n, p in model.report.params.items() if p.trainable)
    variables = [v for v, name, _ in pairs if name in got]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(hand(x, training=training))
    grads = tape.gradient(total, variables)
    for (_, name, layout), g in zip([p for p in pairs if p[1] in got], grads):
        want = back(layout, tf.convert_to_tensor(g).numpy())
        assert got[name].shape == model.report.params[name].shape
        np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=1e-4, err_msg=name)


# ------------------------------------------------------------------------------------- (e) abstract init
def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_abstract_init_allocates_nothing_and_stays_abstract() -> None:
    spec = di.LazyModel([layer for _ in range(8) for layer in (di.Dense(4096), di.ReLU())])  # 134M params
    model = di.compile(spec, "tensorflow")
    start = _rss_mb()
    report = model.apply_init(di.ShapeDtype((1, 4096)), abstract=True)
    assert _rss_mb() - start < 64, "abstract init allocated parameter memory"  # the values would take 537 MB
    assert report.diff(di.infer_shapes(spec, (1, 4096))) == []
    assert report.params["14.weight"].native_shape == (4096, 4096)
    variables = model.native.variables
    assert len(variables) == 16 and all(v._value is None for v in variables)
    with pytest.raises(di.NotInitializedError):
        model(np.zeros((1, 4096), np.float32))
    # building another Keras model must not initialize ours through Keras's process-wide pending list
    other = di.compile(BY_ID["residual"].make(), "tensorflow")
    other.apply_init(BY_ID["residual"].data())
    assert all(v._value is None for v in model.native.variables)


@pytest.mark.parametrize("case_id", ["residual", "concat", "embedding"])
def test_abstract_report_equals_concrete_and_materialize_runs(case_id: str) -> None:
    case = BY_ID[case_id]
    concrete = di.compile(case.make(), "tensorflow")
    want = concrete.apply_init(case.data(), init="kaiming_uniform", key=4)
    model = di.compile(case.make(), "tensorflow")
    report = model.apply_init(di.ShapeDtype(case.shape, case.dtype), abstract=True)
    assert report.diff(want) == []
    assert [p.native_shape for p in report.params.values()] == [p.native_shape for p in want.params.values()]
    native = model.native
    model.materialize(init="kaiming_uniform", key=4)
    assert model.native is native  # in place, no rebuild
    assert all(v._value is not None for v in native.variables)
    got, ref_w = model.export_weights(), concrete.export_weights()
    for name in ref_w:
        np.testing.assert_array_equal(got[name], ref_w[name], err_msg=name)
    x = case.data(seed=2)
    np.testing.assert_allclose(model.to_numpy(model(x)), concrete.to_numpy(concrete(x)), **TIGHT)


def test_materialize_with_keras_default_and_seed() -> None:
    case = BY_ID["mlp"]
    a, b = di.compile(case.make(), "tensorflow"), di.compile(case.make(), "tensorflow")
    a.apply_init(di.ShapeDtype(case.shape), abstract=True)
    a.materialize(key=5)
    b.apply_init(case.data(), key=5)  # concrete, Keras defaults seeded the same way
    wa, wb = a.export_weights(), b.export_weights()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    bound = np.sqrt(6 / (20 + 16))  # Keras's default GlorotUniform
    assert 0 < np.abs(wa["0.weight"]).max() <= bound and not wa["0.bias"].any()


# ------------------------------------------------------------------------------------- (f) no leftovers
@pytest.mark.parametrize("case_id", ["residual", "concat", "tied", "nested_model"])
def test_no_unbuilt_layers_or_uninitialized_variables_after_apply_init(case_id: str) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), "tensorflow")
    unbuilt = model.native
    assert not unbuilt.built and not unbuilt.variables  # nothing exists before Keras's first call
    model.apply_init(case.data())
    native = model.native
    layers = list(native._flatten_layers(include_self=True, recursive=True))
    assert layers and all(layer.built for layer in layers)
    assert all(v._value is not None for v in native.variables)
    from keras.src.backend.common import global_state

    pending = {id(v) for v in (global_state.get_global_attribute("uninitialized_variables") or [])}
    assert not pending & {id(v) for v in native.variables}


# ------------------------------------------------------------------------------------- (g) Keras's own tools
def test_native_works_with_keras_tools(tmp_path: Path) -> None:
    case = BY_ID["residual"]
    model = di.compile(case.make(), "tensorflow")
    report = model.apply_init(case.data(), init="xavier_uniform", key=1)
    native = model.native
    assert isinstance(native, keras.Model)
    lines: list[str] = []
    native.summary(print_fn=lambda line, **kw: lines.append(line))
    text = "\n".join(lines)
    assert "lazy_model" in text and "BatchNorm" in text and f"{report.total_params:,}" in text
    assert native.count_params() == report.total_params
    assert sum(int(np.prod(v.shape)) for v in native.trainable_weights) == report.trainable_params
    x = case.data(seed=1)
    np.testing.assert_allclose(native.predict_on_batch(x), model.to_numpy(model(x)), **TIGHT)
    path = tmp_path / "resnet.weights.h5"
    native.save_weights(path)
    other = di.compile(case.make(), "tensorflow")
    other.apply_init(case.data(), init="zeros")
    other.native.load_weights(path)
    for name, w in model.export_weights().items():
        np.testing.assert_array_equal(other.export_weights()[name], w, err_msg=name)


def test_keras_initializer_and_int_key() -> None:
    case = BY_ID["lenet"]
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data(), init=keras.initializers.Constant(0.25))
    w = model.export_weights()
    assert all((w[n] == 0.25).all() for n in w if n.endswith("weight")) and not w["0.bias"].any()
    glorot = keras.initializers.GlorotUniform()
    first = di.compile(case.make(), "tensorflow")
    first.apply_init(case.data(), init=glorot, key=7)
    again = di.compile(case.make(), "tensorflow")
    again.apply_init(case.data(), init=glorot, key=7)
    other = di.compile(case.make(), "tensorflow")
    other.apply_init(case.data(), init=glorot, key=8)
    a, b, c = first.export_weights(), again.export_weights(), other.export_weights()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["5.weight"], c["5.weight"])
    assert not np.array_equal(a["5.weight"][:84, :84], a["6.weight"][:84, :84])  # seeded per parameter
    twins = di.compile(di.LazyModel([di.Dense(8), di.Dense(8)]), "tensorflow")  # one unseeded instance, no key
    twins.apply_init(np.zeros((2, 8), np.float32), init=keras.initializers.GlorotUniform())
    w = twins.export_weights()
    assert not np.array_equal(w["0.weight"], w["1.weight"]) and np.abs(w["0.weight"]).max() <= np.sqrt(6 / 16)
    with pytest.raises(di.SpecError, match="Keras initializer"):
        di.compile(case.make(), "tensorflow").apply_init(case.data(), init=42)


# ------------------------------------------------------------------------------------- fast path
def test_forward_is_one_cached_tf_function_per_mode() -> None:
    case = BY_ID["lenet"]
    model = di.compile(case.make(), "tensorflow")
    model.apply_init(case.data())
    for batch in (1, 2, 3, 4, 5, 6):
        y = model(case.data(batch=batch))
        assert isinstance(y, tf.Tensor) and tuple(y.shape) == (batch, 10)
    fn = model._compiled(False, 4)
    assert fn is model._compiled(False, 4) and fn is not model._compiled(True, 4)
    assert fn.experimental_get_tracing_count() <= 2  # relaxed to a None batch after the second size
    model(tf.constant(case.data(), dtype=tf.float64))  # cast, not a new kind of trace
    y64 = model(tf.constant(case.data(), dtype=tf.float64))
    assert y64.dtype == tf.float32


def test_dense_model_takes_other_ranks_and_native_int_tensors() -> None:
    mlp = di.compile(BY_ID["mlp"].make(), "tensorflow")
    mlp.apply_init(np.zeros((2, 20), np.float32))
    x3 = np.random.default_rng(0).standard_normal((2, 5, 20)).astype(np.float32)
    ref = di.compile(BY_ID["mlp"].make(), "numpy")
    ref.load_weights(mlp.export_weights())
    np.testing.assert_allclose(mlp.to_numpy(mlp(x3)), ref(x3), **TIGHT)
    emb = di.compile(BY_ID["embedding"].make(), "tensorflow")
    emb.apply_init(BY_ID["embedding"].data())
    idx = BY_ID["embedding"].data(seed=3)
    np.testing.assert_allclose(emb.to_numpy(emb(tf.constant(idx))), emb.to_numpy(emb(idx)), **TIGHT)


# ------------------------------------------------------------------------------------- errors
def test_unknown_leaf_raises_unsupported_layer_error() -> None:
    from deferinit.layers import Leaf

    @dataclass(frozen=True, eq=False, repr=False)
    class Doubler(Leaf):
        def infer(self, shape, ctx):  # type: ignore[no-untyped-def]
            return shape, {}

    model = di.compile(di.LazyModel([di.Dense(2), Doubler()]), "tensorflow")
    with pytest.raises(di.UnsupportedLayerError, match=r"layer '1' \(Doubler\) on backend tensorflow"):
        model.apply_init(np.zeros((1, 3), np.float32))


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[1] / "src")
    full = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    full.update(env, PYTHONPATH=src + os.pathsep + full.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_other_keras_backend_in_environment_is_a_clear_error() -> None:
    code = ("import sys, deferinit as di\n"
            "try:\n    di.compile(di.LazyModel([di.Dense(2)]), 'tensorflow')\n"
            "except di.BackendUnavailableError as e:\n    print('ERR', e); print('keras' in sys.modules)\n")
    out = _run_python(code, KERAS_BACKEND="jax")
    assert out.returncode == 0, out.stderr
    assert "received KERAS_BACKEND='jax'" in out.stdout and "set the environment variable KERAS_BACKEND=tensorflow" \
        in out.stdout
    assert out.stdout.strip().endswith("False")  # the adapter refused before importing keras


def test_keras_already_imported_with_another_backend_is_a_clear_error() -> None:
    # a stand-in for keras imported with the jax backend (jax need not be installed for the check)
    code = ("import importlib.machinery, sys, types\n"
            "fake = types.ModuleType('keras'); fake.backend = types.SimpleNamespace(backend=lambda: 'jax')\n"
            "fake.__spec__ = importlib.machinery.ModuleSpec('keras', None)\n"
            "sys.modules['keras'] = fake\n"
            "import deferinit as di\n"
            "try:\n    di.compile(di.LazyModel([di.Dense(2)]), 'tensorflow')\n"
            "except di.BackendUnavailableError as e:\n    print('ERR', e)\n")
    out = _run_python(code, KERAS_BACKEND="tensorflow")
    assert out.returncode == 0, out.stderr
    assert "keras already imported with the 'jax' backend" in out.stdout
    assert "KERAS_BACKEND=tensorflow before anything imports keras" in out.stdout


# ------------------------------------------------------------------------------------- sequence layers
SEQ = {
    "rnn_tanh_deep_bi": (lambda: di.LazyModel([di.RNN(5, num_layers=2, bidirectional=True), di.Dense(3)]), (2, 6, 4)),
    "rnn_relu": (lambda: di.LazyModel([di.RNN(5, activation="relu")]), (2, 6, 4)),
    "gru_deep": (lambda: di.LazyModel([di.GRU(5, num_layers=2)]), (2, 6, 4)),
    "gru_bi_nobias": (lambda: di.LazyModel([di.GRU(5, bidirectional=True, use_bias=False)]), (2, 6, 4)),
    "lstm_deep_bi": (lambda: di.LazyModel([di.LSTM(5, num_layers=2, bidirectional=True, dropout=0.3)]), (2, 6, 4)),
    "lm": (lambda: di.LazyModel([di.OneHot(7), di.LSTM(6), di.Dense(7)]), (2, 5)),
    "attention": (lambda: di.LazyModel([di.MultiHeadAttention(8, 2, use_bias=True)]), (2, 5, 6)),
    "encoder": (lambda: di.LazyModel([
        di.Embedding(30, 8), di.Scale(8 ** 0.5), di.PositionalEncoding(), di.Dropout(0.2),
        di.Residual(di.MultiHeadAttention(8, 4, dropout=0.1)), di.LayerNorm(),
        di.Residual(di.Sequential([di.Dense(16, activation="relu"), di.Dense(8)])), di.LayerNorm()]), (2, 7)),
    "vit": (lambda: di.LazyModel([
        di.Conv2D(8, 4, stride=4), di.Reshape((8, -1)), di.Permute((2, 1)), di.ClassToken(), di.PositionEmbedding(),
        di.Residual(di.Sequential([di.LayerNorm(), di.MultiHeadAttention(8, 2)])), di.Take(0), di.LayerNorm(),
        di.Dense(3)]), (2, 3, 8, 12)),
    "gru_channels_last": (lambda: di.LazyModel([di.GRU(4), di.Dense(2)], data_format="channels_last"), (3, 5, 2)),
}


def seq_data(case_id: str, seed: int = 0, batch: int | None = None) -> np.ndarray:
    shape = SEQ[case_id][1] if batch is None else (batch,) + SEQ[case_id][1][1:]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, shape).astype(np.int64) if len(shape) == 2 else rng.standard_normal(shape).astype(np.float32)


def random_weights(report: di.ShapeReport, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # every bias nonzero: b_hh must reach the output too
    return {n: (rng.standard_normal(p.shape) * 0.5).astype(np.float32) for n, p in report.params.items()}


@pytest.mark.parametrize("case_id", list(SEQ))
def test_sequence_layers_equal_the_reference(case_id: str) -> None:
    make, shape = SEQ[case_id]
    x0 = seq_data(case_id)
    model = di.compile(make(), "tensorflow")
    report = model.apply_init(x0)
    assert report.diff(di.infer_shapes(make(), shape, dtype=x0.dtype.name)) == []
    assert all(p.source == "native" for p in report.params.values())  # Keras defers every dim itself
    weights = random_weights(report, 1)
    model.load_weights(weights)
    ref = di.compile(make(), "numpy")
    ref.load_weights(weights, input_shape=di.ShapeDtype(shape, x0.dtype.name))
    x = seq_data(case_id, seed=2, batch=3)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), atol=2e-5, rtol=2e-4)
    # exported weights compute the same function (a Keras single bias comes back as b_ih + b_hh, b_hh zero)
    again = di.compile(make(), "numpy")
    again.load_weights(model.export_weights(), input_shape=di.ShapeDtype(shape, x0.dtype.name))
    np.testing.assert_allclose(again(x), ref(x), atol=2e-5, rtol=2e-4)
    inter = model.intermediates(x)
    assert sorted(inter) == sorted(ref.intermediates(x))
    for path, value in ref.intermediates(x).items():
        np.testing.assert_allclose(inter[path], value, atol=2e-5, rtol=2e-4, err_msg=path)


def test_keras_recurrent_formulas_are_pytorchs() -> None:
    """What makes Keras's layers PyTorch's function: sigmoid gates (not hard_sigmoid), GRU reset_after with two
    bias rows in (z, r, h) order, LSTM gates (i, f, c, o); attention scaled by 1/sqrt(head_dim)."""
    model = di.compile(di.LazyModel([di.GRU(4), di.LSTM(3), di.MultiHeadAttention(6, 3)]), "tensorflow")
    report = model.apply_init(np.zeros((1, 2, 5), np.float32))
    gru, lstm, mha = (model.native.layers[i] for i in range(3))
    assert isinstance(gru, L.GRU) and gru.cell.reset_after and gru.cell.recurrent_activation is keras.activations.sigmoid
    assert isinstance(lstm, L.LSTM) and lstm.cell.recurrent_activation is keras.activations.sigmoid
    assert gru.cell.activation is keras.activations.tanh and lstm.cell.activation is keras.activations.tanh
    assert isinstance(mha, L.MultiHeadAttention) and mha._inverse_sqrt_key_dim == pytest.approx(1 / np.sqrt(2))
    assert report.params["0.bias_ih_l0"].native_name == report.params["0.bias_hh_l0"].native_name \
        == "lazy_model/0/gru_cell/bias"
    assert report.params["0.bias_hh_l0"].native_shape == (2, 12) and report.params["0.weight_ih_l0"].native_shape == (5, 12)
    assert report.params["1.bias_hh_l0"].native_shape == (12,)  # one Keras bias holds b_ih + b_hh
    assert report.params["2.q_weight"].native_shape == (3, 3, 2) and report.params["2.q_weight"].shape == (6, 3)
    assert report.params["2.out_weight"].native_shape == (3, 2, 6) and report.params["2.out_weight"].shape == (6, 6)
    # canonical (r, z, n) rows land in Keras's (z, r, h) columns, input bias in row 0, recurrent bias in row 1
    w = model.export_weights()
    w["0.weight_ih_l0"] = np.repeat(np.array([1.0, 2.0, 3.0], np.float32), 4)[:, None] * np.ones((12, 5), np.float32)
    w["0.bias_ih_l0"] = np.repeat(np.array([1.0, 2.0, 3.0], np.float32), 4)
    w["0.bias_hh_l0"] = -w["0.bias_ih_l0"]
    w["1.bias_ih_l0"], w["1.bias_hh_l0"] = np.full(12, 0.25, np.float32), np.full(12, 0.5, np.float32)
    model.load_weights(w)
    np.testing.assert_array_equal(gru.cell.kernel.numpy()[0], np.repeat([2.0, 1.0, 3.0], 4))
    np.testing.assert_array_equal(gru.cell.bias.numpy(), [np.repeat([2.0, 1.0, 3.0], 4), np.repeat([-2.0, -1.0, -3.0], 4)])
    np.testing.assert_array_equal(lstm.cell.bias.numpy(), np.full(12, 0.75))
    out = model.export_weights()
    np.testing.assert_array_equal(out["1.bias_ih_l0"], np.full(12, 0.75))
    assert not out["1.bias_hh_l0"].any()


def hand_recurrent() -> tuple:
    """A Keras user's stack for GRU(5, num_layers=2) -> Bidirectional LSTM(3) -> attention -> Dense."""
    gru = keras.Sequential([L.GRU(5, return_sequences=True), L.GRU(5, return_sequences=True)])
    bi = L.Bidirectional(L.LSTM(3, return_sequences=True))
    mha = L.MultiHeadAttention(2, key_dim=3, output_shape=6)

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.gru, self.bi, self.mha, self.head = gru, bi, mha, L.Dense(2)

        def call(self, x, training=None):  # type: ignore[no-untyped-def]
            y = self.bi(self.gru(x))
            return self.head(self.mha(y, y, training=training))

    spec = di.LazyModel([di.GRU(5, num_layers=2), di.LSTM(3, bidirectional=True),
                         di.MultiHeadAttention(6, 2, use_bias=True), di.Dense(2)])
    return spec, Net()


def _gru_gates(w: np.ndarray) -> np.ndarray:  # canonical (r, z, n) on axis 0 -> Keras's (z, r, h)
    r, z, n = np.split(w, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def hand_recurrent_slots(net) -> list:  # type: ignore[no-untyped-def]
    """(canonical names, Keras variable, canonical -> native, native gradient -> canonical gradients)."""
    out = []
    cells = [("0", "l0", net.gru.layers[0].cell), ("0", "l1", net.gru.layers[1].cell),
             ("1", "l0", net.bi.forward_layer.cell), ("1", "l0_reverse", net.bi.backward_layer.cell)]
    for owner, sfx, cell in cells:
        g = _gru_gates if isinstance(cell, L.GRUCell) else (lambda w: w)
        out.append(([f"{owner}.weight_ih_{sfx}"], cell.kernel, lambda w, g=g: g(w).T, lambda d, g=g: [g(d.T)]))
        out.append(([f"{owner}.weight_hh_{sfx}"], cell.recurrent_kernel, lambda w, g=g: g(w).T, lambda d, g=g: [g(d.T)]))
        names = [f"{owner}.bias_ih_{sfx}", f"{owner}.bias_hh_{sfx}"]
        if isinstance(cell, L.GRUCell):
            out.append((names, cell.bias, lambda a, b: np.stack([_gru_gates(a), _gru_gates(b)]),
                        lambda d: [_gru_gates(d[0]), _gru_gates(d[1])]))
        else:  # the sum: each of b_ih and b_hh gets the whole gradient
            out.append((names, cell.bias, lambda a, b: a + b, lambda d: [d, d]))
    for proj, dense in (("q", net.mha.query_dense), ("k", net.mha.key_dense), ("v", net.mha.value_dense)):
        out.append(([f"2.{proj}_weight"], dense.kernel, lambda w: w.T.reshape(-1, 2, 3),
                    lambda d: [d.reshape(d.shape[0], -1).T]))
        out.append(([f"2.{proj}_bias"], dense.bias, lambda w: w.reshape(2, 3), lambda d: [d.reshape(-1)]))
    out.append((["2.out_weight"], net.mha.output_dense.kernel, lambda w: w.T.reshape(2, 3, 6),
                lambda d: [d.reshape(6, 6).T]))
    out.append((["2.out_bias"], net.mha.output_dense.bias, lambda w: w, lambda d: [d]))
    out.append((["3.weight"], net.head.kernel, lambda w: w.T, lambda d: [d.T]))
    out.append((["3.bias"], net.head.bias, lambda w: w, lambda d: [d]))
    return out


def test_recurrent_and_attention_equal_a_hand_built_keras_model_with_gradients() -> None:
    spec, hand = hand_recurrent()
    x = np.random.default_rng(3).standard_normal((2, 6, 4)).astype(np.float32)
    model = di.compile(spec, "tensorflow")
    report = model.apply_init(x, init="xavier_uniform", key=2)
    hand(x)  # Keras builds the hand-written model on its first call
    slots = hand_recurrent_slots(hand)
    assert sorted(n for names, *_ in slots for n in names) == sorted(report.params)
    assert len(slots) == len(hand.weights)
    for names, var, _, _ in slots:  # the adapter's Keras variables have the hand-built ones' shapes
        assert all(report.params[n].native_shape == tuple(var.shape) for n in names), names
    # names follow structure: a stack is a Sequential of l0, l1...; Bidirectional's directions are Keras's own
    assert report.params["0.weight_hh_l1"].native_name == "lazy_model/0/l1/gru_cell/recurrent_kernel"
    assert report.params["1.weight_ih_l0_reverse"].native_name == "lazy_model/1/backward_lstm/lstm_cell/kernel"
    # folded biases: the report counts b_ih and b_hh (PyTorch's count), Keras one bias per LSTM cell
    assert report.total_params == hand.count_params() + 2 * 12 == model.native.count_params() + 2 * 12
    weights = random_weights(report, 4)
    model.load_weights(weights)
    for names, var, to_native, _ in slots:
        var.assign(to_native(*[weights[n] for n in names]))
    np.testing.assert_allclose(model.to_numpy(model(x)), np.asarray(hand(x)), **TIGHT)
    got = model.gradients(x)
    variables = [var for _, var, _, _ in slots]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(hand(x))
    grads = tape.gradient(total, variables)
    for (names, _, _, back_fn), g in zip(slots, grads):
        for name, want in zip(names, back_fn(tf.convert_to_tensor(g).numpy())):
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=1e-4, err_msg=name)


def test_token_layers_are_keras_layers_built_on_first_call() -> None:
    make, shape = SEQ["vit"]
    model = di.compile(make(), "tensorflow")
    unbuilt = model.native
    assert not any(layer.built for layer in unbuilt.layers if layer.weights or hasattr(layer, "token"))
    report = model.apply_init(seq_data("vit"))
    token, pos = model.native.layers[3], model.native.layers[4]
    assert report.params["3.weight"].native_name == "lazy_model/3/cls_token" and not token.token.numpy().any()
    assert report.params["4.weight"].native_shape == (1, 7, 8)  # 6 patches and the class token: T from the input
    assert 0.5 < np.std(pos.embeddings.numpy()) < 2.0  # d2l's torch.randn, not Keras's stddev 0.05
    np.testing.assert_array_equal(model.to_numpy(model(seq_data("vit", batch=1))).shape, (1, 3))
    # sum over N of Dense(token + pos[0]): both get N * column sums of the Dense weight, other rows nothing
    head = di.compile(di.LazyModel([di.ClassToken(), di.PositionEmbedding(), di.Take(0), di.Dense(3)]), "tensorflow")
    head.apply_init(np.zeros((2, 4, 5), np.float32), key=1)
    g = head.gradients(np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32))
    want = 2 * head.export_weights()["3.weight"].sum(axis=0)
    np.testing.assert_allclose(g["0.weight"][0, 0], want, rtol=1e-5)
    np.testing.assert_allclose(g["1.weight"][0, 0], want, rtol=1e-5)
    assert not g["1.weight"][:, 1:].any()


@pytest.mark.parametrize("case_id", ["lstm_deep_bi", "encoder", "vit"])
def test_sequence_abstract_init_then_materialize(case_id: str) -> None:
    make, shape = SEQ[case_id]
    x = seq_data(case_id)
    concrete = di.compile(make(), "tensorflow")
    want = concrete.apply_init(x, key=6)
    model = di.compile(make(), "tensorflow")
    report = model.apply_init(di.ShapeDtype(shape, x.dtype.name), abstract=True)
    assert report.diff(want) == []
    assert [p.native_shape for p in report.params.values()] == [p.native_shape for p in want.params.values()]
    params = {id(v) for v in model.native.weights}
    assert all(v._value is None for v in model.native.variables if id(v) in params)
    model.materialize(key=6)  # Keras's defaults seeded per name: the same values as the concrete init
    got, ref_w = model.export_weights(), concrete.export_weights()
    for name in ref_w:
        np.testing.assert_array_equal(got[name], ref_w[name], err_msg=name)
    np.testing.assert_allclose(model.to_numpy(model(x)), concrete.to_numpy(concrete(x)), **TIGHT)


def test_keras_initializer_and_key_reach_recurrent_and_attention_kernels() -> None:
    spec = lambda: di.LazyModel([di.GRU(4), di.MultiHeadAttention(6, 2, use_bias=True)])  # noqa: E731
    x = np.zeros((1, 3, 6), np.float32)
    const = di.compile(spec(), "tensorflow")
    const.apply_init(x, init=keras.initializers.Constant(0.5))
    w = const.export_weights()
    for name in ("0.weight_ih_l0", "0.weight_hh_l0", "1.q_weight", "1.k_weight", "1.v_weight", "1.out_weight"):
        assert (w[name] == 0.5).all(), name
    assert not w["1.q_bias"].any() and not w["0.bias_ih_l0"].any()
    a, b = di.compile(spec(), "tensorflow"), di.compile(spec(), "tensorflow")
    a.apply_init(x, key=3)
    b.apply_init(x, key=3)
    wa, wb = a.export_weights(), b.export_weights()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    assert not np.array_equal(wa["1.q_weight"], wa["1.k_weight"])  # one Keras initializer, seeded per name
    # Glorot over (D, heads, head_dim) kernels takes fans D = 4 and H = 6, as Keras's EinsumDense makes it
    # (bound sqrt(6 / 10), std 0.45); fans from the 3-d shape alone would give std 0.32
    glorot = di.compile(spec(), "tensorflow")
    glorot.apply_init(x, init=keras.initializers.GlorotUniform(), key=0)
    kernels = np.concatenate([glorot.export_weights()[f"1.{p}_weight"].ravel() for p in ("q", "k", "v")])
    assert 0.4 < kernels.std() < 0.5 and np.abs(kernels).max() <= np.sqrt(6 / 10)
