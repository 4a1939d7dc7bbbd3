"""Channels-last runs (``adapters/tensorflow/layout.py``): where TensorFlow has no NCHW convolution kernel, a run of
channels-first layers works on channels-last data between one transpose in and one out.

The truths: the same compiled model with the runs turned off (the path every other test also checks against the
reference), the framework-free reference, and a Keras model written by hand the way an expert writes it for an
NHWC-only TensorFlow (permute once at the input, once before the Flatten), whose traced graph holds as many
transposes as ours. Collected only with ``--backend tensorflow``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import deferinit as di
from deferinit import zoo

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers as L  # noqa: E402

from deferinit.adapters.tensorflow import layout  # noqa: E402
from deferinit.adapters.tensorflow import modules as kl  # noqa: E402


@pytest.fixture(autouse=True)
def _nhwc_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path under test is the one for TensorFlows without NCHW convolutions (this CPU's): forced, so the test
    means the same where oneDNN or a GPU would run NCHW natively."""
    monkeypatch.setattr(kl, "TRANSPOSE_CF", True)
    monkeypatch.setattr(layout, "ENABLED", True)


def _transposes(model: di.CompiledModel, shape: tuple, training: bool = False) -> int:
    fn = model._compiled(training, len(shape)).get_concrete_function(tf.TensorSpec((None,) + shape[1:], tf.float32))
    return sum(op.type == "Transpose" for op in fn.graph.get_operations())


def _both_ways(model: di.CompiledModel, monkeypatch: pytest.MonkeyPatch, fn: object) -> tuple:
    """``fn(model)`` with channels-last runs, then without (the compiled forwards dropped in between)."""
    got = fn(model)  # type: ignore[operator]
    model.native._deferinit_table.fns.clear()
    monkeypatch.setattr(layout, "ENABLED", False)
    want = fn(model)  # type: ignore[operator]
    model.native._deferinit_table.fns.clear()
    monkeypatch.setattr(layout, "ENABLED", True)
    return got, want


SPECS = zoo.parity_specs()


def _mbconv_net() -> di.LazyModel:
    """Two of EfficientNet's MBConv blocks (zoo_vision._mbconv: depthwise conv, squeeze-and-excitation as
    ``Multiply([Identity(), gate])`` with adaptive pooling to 1x1, stochastic depth), small: the whole model
    takes 25 s to compare here."""
    def block(stride: int) -> di.Layer:
        gate = di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(2, 1, activation="silu"),
                              di.Conv2D(8, 1, activation="sigmoid")])
        body = [di.Conv2D(8, 1), di.BatchNorm(), di.SiLU(), di.Conv2D(8, 3, stride=stride, padding=1, groups=8),
                di.BatchNorm(), di.ReLU6(), di.Multiply([di.Identity(), gate]), di.Conv2D(4, 1, use_bias=False),
                di.BatchNorm()]
        return di.Residual(di.Sequential([*body, di.DropPath(0.2)])) if stride == 1 else di.Sequential(body)

    return di.LazyModel([di.Conv2D(4, 3, stride=2, padding=1), block(1), block(2), di.GlobalAvgPool2D(),
                         di.Dropout(0.2), di.Dense(3)])


CASES = {**{name: SPECS[name][:2] for name in ("zoo_lenet", "zoo_nin", "zoo_googlenet", "zoo_resnet18", "zoo_unet")},
         "mbconv": (_mbconv_net(), (2, 3, 16, 16)),
         "transposed": (di.LazyModel([di.Conv2D(4, 3, padding=1), di.ReLU(),
                                      di.Conv2DTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=2),
                                      di.BatchNorm(), di.ReLU(), di.Conv2DTranspose(3, 2, stride=2, activation="tanh")]),
                        (2, 4, 5, 6))}


@pytest.mark.parametrize("name", list(CASES))
def test_runs_give_the_same_outputs_and_gradients(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, shape = CASES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = di.compile(spec, "tensorflow")
    model.apply_init(x, init="xavier_uniform", key=3)
    (y, grads), (y0, grads0) = _both_ways(model, monkeypatch, lambda m: (m.to_numpy(m(x)), m.gradients(x)))
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=shape)
    np.testing.assert_allclose(y, ref(x), atol=5e-5, rtol=5e-4)
    assert _transposes(model, shape) <= 2  # one in; one out where a Flatten or the end needs channels first
    np.testing.assert_allclose(y, y0, atol=1e-6, rtol=1e-5)
    for k in grads0:
        scale = float(np.abs(grads0[k]).max()) or 1.0
        np.testing.assert_allclose(grads[k] / scale, grads0[k] / scale, atol=1e-4, err_msg=k)


def test_training_mode_updates_the_same_running_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch norm inside a run normalizes over the channels-last axes and moves its running statistics by the
    spec's (PyTorch's) rule, as it does channels-first; dropout inside a run draws the same mask (seeded alike)."""
    spec, shape, _ = SPECS["zoo_resnet18"]
    stem, *rest = spec.layers
    spec = di.LazyModel([stem, di.Dropout(0.5), *rest])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 2 + 1
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(layout, "ENABLED", enabled)
        keras.utils.set_random_seed(5)  # Keras seeds each dropout layer's generator when the layer is made
        m = di.compile(spec, "tensorflow")
        m.apply_init(x, init="xavier_uniform", key=3)
        y = m.to_numpy(m(x, training=True))
        runs.append((y, m.export_weights()))
    (y, w), (y0, w0) = runs
    np.testing.assert_allclose(y, y0, atol=1e-5, rtol=1e-4)
    means = [k for k in w0 if k.endswith("running_mean")]
    assert len(means) == sum(isinstance(layer, di.BatchNorm) for layer in spec.iter_layers())
    for k in means:
        var = k[:-4] + "var"
        assert np.abs(w0[k]).max() > 0 and not np.allclose(w0[var], 1.0)  # the step moved them
        np.testing.assert_allclose(w[k], w0[k], atol=1e-5, rtol=1e-4, err_msg=k)
        np.testing.assert_allclose(w[var], w0[var], atol=1e-5, rtol=1e-4, err_msg=var)


def test_lenet_has_the_transposes_of_a_hand_written_nhwc_model() -> None:
    """d2l's LeNet written by hand for an NHWC-only TensorFlow: permute to NHWC once, run every layer channels_last,
    permute back before Flatten (so the Dense weights read PyTorch's (C, H, W) order). Its traced graph holds two
    transposes; so does ours (it held eight before: two per convolution and per pooling)."""
    spec, shape, _ = SPECS["zoo_lenet"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = di.compile(spec, "tensorflow")
    model.apply_init(x, init="xavier_uniform", key=3)
    native = keras.Sequential([
        L.Permute((2, 3, 1)),
        L.Conv2D(6, 5, padding="same", activation="sigmoid"), L.AveragePooling2D(2, 2),
        L.Conv2D(16, 5, activation="sigmoid"), L.AveragePooling2D(2, 2), L.Permute((3, 1, 2)),
        L.Flatten(), L.Dense(120, activation="sigmoid"), L.Dense(84, activation="sigmoid"), L.Dense(10)])
    native(x)
    w = model.export_weights()
    convs = [k for k in w if k.endswith("weight") and w[k].ndim == 4]
    dense = [k for k in w if k.endswith("weight") and w[k].ndim == 2]
    it = iter(native.layers)
    for layer in it:
        if isinstance(layer, L.Conv2D):
            k = convs.pop(0)
            layer.set_weights([np.moveaxis(np.moveaxis(w[k], 0, -1), 0, -2), w[k[:-6] + "bias"]])
        elif isinstance(layer, L.Dense):
            k = dense.pop(0)
            layer.set_weights([w[k].T, w[k[:-6] + "bias"]])
    fn = tf.function(native.__call__, reduce_retracing=True).get_concrete_function(
        tf.TensorSpec((None,) + shape[1:], tf.float32))
    native_transposes = sum(op.type == "Transpose" for op in fn.graph.get_operations())
    assert native_transposes == 2
    assert _transposes(model, shape) == native_transposes
    np.testing.assert_allclose(model.to_numpy(model(x)), native(x).numpy(), atol=1e-5, rtol=1e-5)


def test_a_layer_that_cannot_run_channels_last_ends_the_run() -> None:
    """Softmax has an axis (the last one, W here), Flatten an order: each gets the data in the spec's layout, and
    a run starts again at the next convolution. The reference says what the numbers are."""
    spec = di.LazyModel([
        di.Conv2D(4, 3, padding=1), di.BatchNorm(), di.ReLU(), di.Softmax(),
        di.Conv2D(5, 3, stride=2), di.MaxPool2D(2, stride=1), di.Flatten(), di.Dense(7)])
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 10)).astype(np.float32)
    model = di.compile(spec, "tensorflow")
    model.apply_init(x, init="xavier_uniform", key=4)
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=x.shape)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), atol=2e-5, rtol=2e-4)
    assert _transposes(model, x.shape) == 4  # into and out of each of the two runs


def test_shapes_are_observed_in_the_specs_layout() -> None:
    """apply_init notes every layer's output shape while a recorder is active: runs stay off there, so the report
    keeps the spec's channels-first shapes (the reference's)."""
    spec, shape, _ = SPECS["zoo_resnet18"]
    x = np.zeros(shape, np.float32)
    report = di.compile(spec, "tensorflow").apply_init(x, init="xavier_uniform", key=1)
    want = di.compile(spec, "numpy").apply_init(x, init="xavier_uniform", key=1)
    assert {p: info.output_shape for p, info in report.layers.items()} == \
        {p: info.output_shape for p, info in want.layers.items()}
    assert all(info.source == "native" for info in report.layers.values())
