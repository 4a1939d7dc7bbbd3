"""The Flax NNX backend (issue 13), compiled through its class directly (and through di.compile(spec, "nnx") in the
contract suite), in the jax virtualenv it shares. Truth: NNX modules built by hand in the test, the numpy
reference, NNX's own transforms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import deferinit as di
from deferinit import layers as L
from deferinit.adapters.nnx import NnxModel

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def cnn() -> di.LazyModel:
    return di.LazyModel([L.Conv2D(4, 3, padding=1, activation="relu"), L.BatchNorm(), L.MaxPool2D(2), L.Flatten(),
                         L.Dense(10), L.Dropout(0.5), L.Dense(3)])


def test_builds_native_nnx_modules_with_in_features_from_the_rules() -> None:
    m = NnxModel(cnn())
    report = m.apply_init(np.zeros((2, 3, 8, 8), np.float32), key=0)
    layers = list(m.native.layers)
    assert isinstance(layers[0], nnx.Conv) and layers[0].in_features == 3
    assert isinstance(layers[1], nnx.BatchNorm) and isinstance(layers[5], nnx.Dropout)
    assert isinstance(layers[4], nnx.Linear) and (layers[4].in_features, layers[4].out_features) == (64, 10)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m.native, nnx.Param))}
    assert {report.params[n].native_name for n in ("0.weight", "4.weight", "1.weight")} <= paths
    assert report.params["4.weight"].native_shape == (64, 10) and report.params["4.weight"].shape == (10, 64)
    assert report.layers["2"].output_shape == (2, 4, 4, 4) and report.layers["2"].source == "native"


def test_matches_a_hand_built_nnx_model_given_the_same_weights() -> None:
    r = nnx.Rngs(7)
    conv = nnx.Conv(3, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=r)
    bn = nnx.BatchNorm(4, use_running_average=True, rngs=r)
    d1, d2 = nnx.Linear(64, 10, rngs=r), nnx.Linear(10, 3, rngs=r)
    bn.mean[...] = jnp.arange(4.0) / 10
    bn.var[...] = 1.0 + jnp.arange(4.0)

    def hand(x: np.ndarray) -> np.ndarray:
        h = bn(nnx.relu(conv(jnp.transpose(x, (0, 2, 3, 1)))))
        h = jnp.transpose(nnx.max_pool(h, (2, 2), (2, 2)), (0, 3, 1, 2))  # NHWC -> the spec's NCHW
        return np.asarray(d2(d1(h.reshape(2, -1))))

    a = lambda v: np.asarray(v[...])  # noqa: E731
    weights = {"0.weight": a(conv.kernel).transpose(3, 2, 0, 1), "0.bias": a(conv.bias),
               "1.weight": a(bn.scale), "1.bias": a(bn.bias), "1.running_mean": a(bn.mean),
               "1.running_var": a(bn.var), "4.weight": a(d1.kernel).T, "4.bias": a(d1.bias),
               "6.weight": a(d2.kernel).T, "6.bias": a(d2.bias)}
    m = NnxModel(cnn())
    m.load_weights(weights, input_shape=(2, 3, 8, 8))
    np.testing.assert_allclose(np.asarray(m(X)), hand(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.native(jnp.asarray(X))), hand(X), rtol=1e-5, atol=1e-5)
    back = m.export_weights()
    for name, w in weights.items():
        np.testing.assert_array_equal(back[name], w)


def test_portable_init_is_bit_identical_to_the_reference_and_outputs_agree() -> None:
    m = NnxModel(cnn())
    m.apply_init(np.zeros((2, 3, 8, 8), np.float32), init="xavier_uniform", key=3)
    ref = di.compile(cnn(), "numpy")
    ref.apply_init(np.zeros((2, 3, 8, 8), np.float32), init="xavier_uniform", key=3)
    mine, theirs = m.export_weights(), ref.export_weights()
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name])
    np.testing.assert_allclose(np.asarray(m(X)), ref(X), rtol=1e-4, atol=1e-5)


def test_abstract_init_allocates_nothing() -> None:
    m = NnxModel(di.LazyModel([L.Dense(4096), L.Dense(4096)]))
    report = m.apply_init(di.ShapeDtype((1, 4096)), abstract=True)
    assert report.params["0.weight"].shape == (4096, 4096)
    values = [v for _, v in nnx.to_flat_state(nnx.state(m.native, nnx.Param))]
    assert values and all(isinstance(v.get_raw_value(), __import__("jax").ShapeDtypeStruct) for v in values)


def test_native_works_with_nnx_jit_grad_split_merge_and_an_optimizer() -> None:
    m = NnxModel(di.LazyModel([L.Dense(8, activation="tanh"), L.Dense(1)]))
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    m.apply_init(x, key=0)
    native = m.native
    y = nnx.jit(lambda mod, a: mod(a))(native, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(m(x)), rtol=1e-6)
    graphdef, state = nnx.split(native)
    np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, state)(jnp.asarray(x))), np.asarray(y), rtol=1e-6)
    grads = nnx.grad(lambda mod: jnp.sum(mod(jnp.asarray(x))))(native)
    ours = m.gradients(x)
    np.testing.assert_allclose(ours["0.weight"], np.asarray(grads["layers"][0]["kernel"][...]).T, rtol=1e-5)
    opt = nnx.Optimizer(native, optax.sgd(0.1), wrt=nnx.Param)
    before = m.export_weights()["1.bias"]
    opt.update(native, grads)
    after = m.export_weights()["1.bias"]
    np.testing.assert_allclose(after, before - 0.1 * ours["1.bias"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(native(jnp.asarray(x))), rtol=1e-6)


def test_training_updates_batch_stats_like_the_reference() -> None:
    spec = di.LazyModel([L.Conv2D(4, 3), L.BatchNorm(), L.GlobalAvgPool2D(), L.Dense(2)])
    m, ref = NnxModel(spec), di.compile(spec, "numpy")
    m.apply_init(X, init="xavier_uniform", key=1)
    ref.apply_init(X, init="xavier_uniform", key=1)
    np.testing.assert_allclose(np.asarray(m(X, training=True)), ref(X, training=True), rtol=1e-4, atol=1e-5)
    mine, theirs = m.export_weights(), ref.export_weights()
    np.testing.assert_allclose(mine["1.running_var"], theirs["1.running_var"], rtol=1e-5)
    np.testing.assert_allclose(mine["1.running_mean"], theirs["1.running_mean"], rtol=1e-5, atol=1e-7)


def test_layer_without_an_nnx_module_is_refused_by_name() -> None:
    class Custom(di.layers.Identity):  # a layer type of the user's, with a builder for no backend
        pass

    m = NnxModel(di.LazyModel([L.Dense(4), Custom()]))
    with pytest.raises(di.errors.UnsupportedLayerError, match=r"'1'.*Custom.*nnx"):
        m.apply_init(np.zeros((2, 3), np.float32))
    assert not m.initialized


SEQ = np.random.default_rng(2).standard_normal((2, 6, 8)).astype(np.float32)


@pytest.mark.parametrize(("layers", "x"), [
    ([di.LSTM(5, num_layers=2, bidirectional=True), di.RNN(4, return_sequences=False)], SEQ),
    ([di.GRU(5, bidirectional=True), di.GRU(3, use_bias=False), di.LSTM(4, use_bias=False), di.RNN(2, use_bias=False)],
     SEQ),
    ([di.ClassToken(), di.PositionEmbedding(), di.MultiHeadAttention(8, 2), L.LayerNorm(), di.Take(0)], SEQ),
    ([L.Conv2D(4, 3), di.GroupNorm(2), di.LayerScale(0.5), di.DropPath(0.1), L.LayerNorm(axis="channels")], X),
], ids=["recurrent", "gru-and-bias-free", "attention", "extra"])
def test_more_layers_agree_with_the_reference_bit_for_bit_in_weights(layers: list, x: np.ndarray) -> None:
    spec = di.LazyModel(layers)
    m, ref = NnxModel(spec), di.compile(spec, "numpy")
    m.apply_init(x, init="xavier_uniform", key=1)
    ref.apply_init(x, init="xavier_uniform", key=1)
    mine, theirs = m.export_weights(), ref.export_weights()
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in theirs)
    np.testing.assert_allclose(np.asarray(m(x)), ref(x), rtol=1e-4, atol=1e-5)
    linen = di.compile(spec, "jax")  # the linen backend, given the same weights: its gradients are JAX's too
    linen.load_weights(theirs, input_shape=x.shape)
    grads, want = m.gradients(x), linen.gradients(x)
    assert grads.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_nnx_lstm_cell_by_hand_is_what_the_layer_builds() -> None:
    cell = nnx.LSTMCell(8, 5, rngs=nnx.Rngs(3))
    rnn = nnx.RNN(cell)
    a = lambda v: np.asarray(v[...])  # noqa: E731
    gates_i, gates_h = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")
    weights = {"0.weight_ih_l0": np.concatenate([a(getattr(cell, g).kernel).T for g in gates_i]),
               "0.weight_hh_l0": np.concatenate([a(getattr(cell, g).kernel).T for g in gates_h]),
               "0.bias_ih_l0": np.concatenate([a(getattr(cell, g).bias) for g in gates_h]),
               "0.bias_hh_l0": np.zeros(20, np.float32)}
    m = NnxModel(di.LazyModel([di.LSTM(5)]))
    m.load_weights(weights, input_shape=(2, 6, 8))
    np.testing.assert_allclose(np.asarray(m(SEQ)), np.asarray(rnn(jnp.asarray(SEQ))), rtol=1e-5, atol=1e-6)
