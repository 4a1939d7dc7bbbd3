"""The jax adapter against models written by hand in Flax linen, as the d2l book's JAX chapters write them
(``nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)])``, whose shapes Flax finds in ``init``).

Truth here never comes from the adapter: the hand-built modules' own ``init`` (run with ``jax.eval_shape``, a
dry run that allocates nothing), their forward passes and ``jax.grad``, the test's own layout knowledge
(Dense kernel ``(in, out)``, Conv HWIO / WIO), numbers derived by hand (the batch-norm update rule) and the
numpy reference backend. Collected only when the jax backend is selected (see conftest.py); it fails if JAX
or Flax is broken.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deferinit as di
from cases import BY_ID
from deferinit import ops

TIGHT = {"rtol": 1e-5, "atol": 1e-6}  # the same XLA kernels on both sides, maybe fused differently
KEY = jax.random.PRNGKey(0)


# ------------------------------------------------------------------------------------------ hand-built models
class HandResidual(nn.Module):
    """A residual block as a Flax user writes it, with the spec's attribute names (body, shortcut)."""

    body: nn.Module
    shortcut: nn.Module | None = None

    def __call__(self, x: Any) -> Any:
        return nn.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def _bn(train: bool) -> nn.Module:
    # spec momentum 0.1 (weight of the new batch) is Flax's momentum 0.9 (weight of the old statistics)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


def _flatten_chw(x: Any) -> Any:  # a channels-first spec flattens (C, H, W); the hand model runs NHWC
    return jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)


def _flatten(x: Any) -> Any:
    return x.reshape(x.shape[0], -1)


def _lenet_spec(data_format: str) -> Callable[[], di.LazyModel]:
    return lambda: di.LazyModel([
        di.Conv2D(6, 5, padding=2), di.Sigmoid(), di.AvgPool2D(2, stride=2), di.Conv2D(16, 5), di.Sigmoid(),
        di.AvgPool2D(2, stride=2), di.Flatten(), di.Dense(120), di.Sigmoid(), di.Dense(84), di.Sigmoid(),
        di.Dense(10)], data_format=data_format)


def _lenet_hand(flatten: Callable) -> Callable[[bool], nn.Module]:
    # d2l's JAX LeNet leaves nn.Conv at its default "SAME" padding (the book's 108,238 parameters); the
    # spec's second convolution is unpadded, so it is written VALID here
    pool = lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    return lambda train: nn.Sequential([
        nn.Conv(6, (5, 5), padding=2), nn.sigmoid, pool, nn.Conv(16, (5, 5), padding="VALID"), nn.sigmoid, pool,
        flatten, nn.Dense(120), nn.sigmoid, nn.Dense(84), nn.sigmoid, nn.Dense(10)])


def _resnet_hand(train: bool) -> nn.Module:
    return nn.Sequential([
        nn.Conv(8, (3, 3), padding=1), _bn(train), nn.relu,
        HandResidual(nn.Sequential([nn.Conv(8, (3, 3), padding=1), _bn(train), nn.relu,
                                    nn.Conv(8, (3, 3), padding=1), _bn(train)])),
        HandResidual(nn.Sequential([nn.Conv(16, (3, 3), strides=2, padding=1), _bn(train)]),
                     shortcut=nn.Conv(16, (1, 1), strides=2)),
        lambda x: x.mean(axis=(1, 2)), nn.Dense(3)])


def _conv_options_spec() -> di.LazyModel:  # the contract's conv_options case, its ReLU a layer of its own
    return di.LazyModel([
        di.Conv2D(8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), di.ReLU(),
        di.Conv2D(8, 3, groups=4, padding="same", use_bias=False), di.Conv2D(6, 3, stride=2, padding="same"),
        di.Conv2D(4, 1, padding="valid", in_channels=6), di.MaxPool2D(3, stride=2, padding=1),
        di.AvgPool2D(2, stride=1, padding=1), di.GlobalAvgPool2D(), di.Dense(3)])


def _conv_options_hand(train: bool) -> nn.Module:
    # "same" with stride 2 is TensorFlow's rule (odd pixel after), which is lax's SAME
    return nn.Sequential([
        nn.Conv(8, (3, 5), strides=(2, 1), padding=((1, 1), (2, 2)), kernel_dilation=(1, 2)), nn.relu,
        nn.Conv(8, (3, 3), feature_group_count=4, padding="SAME", use_bias=False),
        nn.Conv(6, (3, 3), strides=2, padding="SAME"), nn.Conv(4, (1, 1), padding="VALID"),
        lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
        lambda x: nn.avg_pool(x, (2, 2), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True),
        lambda x: x.mean(axis=(1, 2)), nn.Dense(3)])


def _conv1d_spec() -> di.LazyModel:  # the contract's conv1d case, its ReLU a layer of its own
    return di.LazyModel([
        di.Conv1D(8, 3, padding=1), di.ReLU(), di.Conv1D(8, 3, stride=2, groups=2, dilation=2), di.BatchNorm(),
        di.Flatten(), di.Dense(4)])


def _conv1d_hand(train: bool) -> nn.Module:
    return nn.Sequential([
        nn.Conv(8, (3,), padding=1), nn.relu, nn.Conv(8, (3,), strides=2, feature_group_count=2, kernel_dilation=2,
                                                      padding="VALID"),
        _bn(train), _flatten_chw, nn.Dense(4)])


def _tied_spec() -> di.LazyModel:  # d2l's tied-parameters example
    shared = di.Dense(8)
    return di.LazyModel([di.Dense(8), di.ReLU(), shared, di.ReLU(), shared, di.ReLU(), di.Dense(1)])


def _tied_hand(train: bool) -> nn.Module:
    shared = nn.Dense(8)  # one module object twice: Flax shares it by reference
    return nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])


class Hand(NamedTuple):
    id: str
    spec: Callable[[], di.LazyModel]
    hand: Callable[[bool], nn.Module]   # train -> module
    shape: tuple
    layers: dict[str, tuple[str, str]]  # canonical layer path -> (the hand model's module path, kind)
    dtype: str = "float32"
    channels_first: bool = True

    def data(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.dtype.startswith("int"):
            return rng.integers(0, 50, size=self.shape).astype(self.dtype)
        return rng.standard_normal(self.shape).astype(self.dtype)

    def hand_input(self, x: np.ndarray) -> Any:
        return jnp.asarray(np.moveaxis(x, 1, -1) if self.channels_first and x.ndim > 2 else x)


_LENET = {"0": ("layers_0", "conv"), "3": ("layers_3", "conv"), "7": ("layers_7", "dense"),
          "9": ("layers_9", "dense"), "11": ("layers_11", "dense")}
HANDS = [
    Hand("mlp", lambda: di.LazyModel([di.Dense(256), di.ReLU(), di.Dense(10)]),
         lambda train: nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)]), (2, 20),
         {"0": ("layers_0", "dense"), "2": ("layers_2", "dense")}),
    Hand("lenet", _lenet_spec("channels_first"), _lenet_hand(_flatten_chw), (2, 1, 28, 28), _LENET),
    Hand("lenet_channels_last", _lenet_spec("channels_last"), _lenet_hand(_flatten), (2, 28, 28, 1), _LENET,
         channels_first=False),
    Hand("resnet", BY_ID["residual"].make, _resnet_hand, (2, 3, 12, 12), {
        "0": ("layers_0", "conv"), "1": ("layers_1", "bn"), "3.body.0": ("layers_3/body/layers_0", "conv"),
        "3.body.1": ("layers_3/body/layers_1", "bn"), "3.body.3": ("layers_3/body/layers_3", "conv"),
        "3.body.4": ("layers_3/body/layers_4", "bn"), "4.body.0": ("layers_4/body/layers_0", "conv"),
        "4.body.1": ("layers_4/body/layers_1", "bn"), "4.shortcut": ("layers_4/shortcut", "conv"),
        "6": ("layers_6", "dense")}),
    Hand("conv_options", _conv_options_spec, _conv_options_hand, (2, 3, 17, 15), {
        "0": ("layers_0", "conv"), "2": ("layers_2", "conv"), "3": ("layers_3", "conv"), "4": ("layers_4", "conv"),
        "8": ("layers_8", "dense")}),
    Hand("conv1d", _conv1d_spec, _conv1d_hand, (2, 4, 16), {
        "0": ("layers_0", "conv"), "2": ("layers_2", "conv"), "3": ("layers_3", "bn"), "5": ("layers_5", "dense")}),
    Hand("embedding", BY_ID["embedding"].make, lambda train: nn.Sequential([
        nn.Embed(50, 8), nn.LayerNorm(epsilon=1e-5), _flatten, nn.Dense(3)]), (2, 5),
        {"0": ("layers_0", "embed"), "1": ("layers_1", "ln"), "3": ("layers_3", "dense")}, dtype="int64"),
    Hand("tied", _tied_spec, _tied_hand, (2, 6),
         {"0": ("layers_0", "dense"), "2": ("layers_2", "dense"), "6": ("layers_6", "dense")}),
]
HAND_IDS = [h.id for h in HANDS]
BY_HAND = {h.id: h for h in HANDS}


# ------------------------------------------------------------------------------------------ the test's layouts
_SAME = (lambda w: w, lambda w: w)
_DENSE = (lambda w: w.T, lambda k: k.T)  # (out, in) <-> (in, out)
_CONV = (lambda w: np.moveaxis(w, (0, 1), (-1, -2)), lambda k: np.moveaxis(k, (-1, -2), (0, 1)))  # OI* <-> *IO
_NATIVE = {  # kind -> {canonical parameter: (collection, Flax variable, (to Flax layout, back))}
    "dense": {"weight": ("params", "kernel", _DENSE), "bias": ("params", "bias", _SAME)},
    "conv": {"weight": ("params", "kernel", _CONV), "bias": ("params", "bias", _SAME)},
    "bn": {"weight": ("params", "scale", _SAME), "bias": ("params", "bias", _SAME),
           "running_mean": ("batch_stats", "mean", _SAME), "running_var": ("batch_stats", "var", _SAME)},
    "ln": {"weight": ("params", "scale", _SAME), "bias": ("params", "bias", _SAME)},
    "embed": {"weight": ("params", "embedding", _SAME)},
}


def _where(h: Hand, name: str) -> tuple[str, tuple[str, ...], tuple[Callable, Callable]]:
    owner, _, pname = name.rpartition(".")
    path, kind = h.layers[owner]
    collection, leaf, layout = _NATIVE[kind][pname]
    return collection, (collection, *path.split("/"), leaf), layout


def _hand_variables(h: Hand, weights: dict[str, np.ndarray]) -> dict:
    """Canonical weights written into the hand model's own variable dict."""
    flat = {}
    for name, w in weights.items():
        _, keys, (to_flax, _) = _where(h, name)
        flat[keys] = jnp.asarray(to_flax(w))
    return flax.traverse_util.unflatten_dict(flat)


def _hand_shapes(h: Hand) -> dict[str, tuple]:
    """The hand model's variables after its own dry run: Flax ``init`` traced by jax.eval_shape."""
    found = jax.eval_shape(h.hand(False).init, KEY, h.hand_input(h.data()))
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(found, sep="/").items()}


def _compiled(h: Hand, **kw: Any) -> di.CompiledModel:
    model = di.compile(h.spec(), "jax")
    model.apply_init(h.data(), **kw)
    return model


def _canonical_grads(h: Hand, grads: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict({"params": grads})
    out = {}
    for name in weights:
        collection, keys, (_, from_flax) = _where(h, name)
        if collection == "params":
            out[name] = from_flax(np.asarray(flat[keys]))
    return out


# ------------------------------------------------------------------------------------------ (a) names and shapes
@pytest.mark.parametrize("hid", HAND_IDS)
def test_native_names_and_shapes_equal_the_hand_built_model(hid: str) -> None:
    h = BY_HAND[hid]
    report = di.compile(h.spec(), "jax").apply_init(h.data(), init="zeros")
    got = {p.native_name: p.native_shape for p in report.params.values()}
    assert got == _hand_shapes(h)
    assert all(p.source == "native" for p in report.params.values())  # Flax's init found every shape
    assert report.diff(di.infer_shapes(h.spec(), h.shape, dtype=h.dtype)) == []


def test_flax_numbering_is_mapped_by_structure_not_by_sorted_names() -> None:
    spec = di.LazyModel([di.Dense(i + 1) for i in range(12)])  # layers_10, layers_11 sort before layers_2
    report = di.compile(spec, "jax").apply_init(np.zeros((1, 3), np.float32), init="zeros")
    for i in range(12):
        p = report.params[f"{i}.weight"]
        assert p.native_name == f"params/layers_{i}/kernel"
        assert p.native_shape == ((3 if i == 0 else i), i + 1) and p.shape == (i + 1, (3 if i == 0 else i))


def test_tied_layer_lives_at_its_first_position() -> None:
    # Flax's adoption-by-reference would own a module shared like this at the shallower position (the outer
    # Sequential adopts its children before the inner one); the spec's canonical name is the first position
    shared = di.Dense(4)
    spec = di.LazyModel([di.Sequential([di.Dense(4), shared]), shared, di.Dense(2)])
    model = di.compile(spec, "jax")
    report = model.apply_init(np.ones((2, 3), np.float32), init="xavier_uniform", key=1)
    assert report.params["0.1.weight"].native_name == "params/layers_0/layers_1/kernel"
    assert set(model.params) == {"layers_0", "layers_2"}
    weights = model.export_weights()
    ref = di.compile(spec, "numpy")
    ref.load_weights(weights, input_shape=(2, 3))
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), **TIGHT)


# ------------------------------------------------------------------------------------------ (b) outputs
@pytest.mark.parametrize("hid", HAND_IDS)
def test_outputs_equal_the_hand_built_model_with_the_same_weights(hid: str) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, init="xavier_uniform", key=5)
    weights = model.export_weights()
    for n in weights:
        if n.endswith(("running_mean", "running_var")):  # not the trivial 0 / 1 statistics
            weights[n] = np.random.default_rng(3).uniform(0.5, 1.5, weights[n].shape).astype(np.float32)
    model.load_weights(weights)
    x = h.data(seed=9)
    y = model(x)
    assert isinstance(y, jax.Array)
    want = h.hand(False).apply(_hand_variables(h, weights), h.hand_input(x))
    want = np.moveaxis(np.asarray(want), -1, 1) if h.channels_first and want.ndim > 2 else np.asarray(want)
    np.testing.assert_allclose(model.to_numpy(y), want, rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------ (c) batch norm
@pytest.mark.parametrize("shape,data_format", [((6, 3, 4, 5), "channels_first"), ((6, 4, 5, 3), "channels_last"),
                                               ((7, 3), "channels_first")])
def test_batchnorm_training_updates_running_stats_by_the_pytorch_rule(shape: tuple, data_format: str) -> None:
    model = di.compile(di.LazyModel([di.BatchNorm(momentum=0.2, eps=1e-3)], data_format=data_format), "jax")
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal(shape).astype(np.float32) * 3 + 1 for _ in range(2))
    model.apply_init(x1, init="zeros")
    model.load_weights({"0.weight": np.full(3, 2.0, np.float32), "0.bias": np.full(3, 0.5, np.float32),
                        "0.running_mean": np.zeros(3, np.float32), "0.running_var": np.ones(3, np.float32)})
    axes = tuple(a for a in range(len(shape)) if a != (1 if data_format == "channels_first" else len(shape) - 1))
    mean, var = np.zeros(3), np.ones(3)
    for x in (x1, x2):
        y = model.to_numpy(model(x, training=True))
        x64 = x.astype(np.float64)
        # by hand: new = (1 - m) * old + m * batch, the batch variance unbiased
        mean = 0.8 * mean + 0.2 * x64.mean(axis=axes)
        var = 0.8 * var + 0.2 * x64.var(axis=axes, ddof=1)
        norm = (x64 - x64.mean(axis=axes, keepdims=True)) / np.sqrt(x64.var(axis=axes, keepdims=True) + 1e-3)
        np.testing.assert_allclose(y, 2.0 * norm + 0.5, rtol=1e-4, atol=1e-4)
        w = model.export_weights()
        np.testing.assert_allclose(w["0.running_mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w["0.running_var"], var, rtol=1e-5, atol=1e-6)
    # and the reference kernel says the same
    _, ref_mean, ref_var = ops.batch_norm(x1, 1 if data_format == "channels_first" else len(shape) - 1,
                                          np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
                                          np.ones(3, np.float32), 1e-3, True, 0.2)
    fresh = di.compile(di.LazyModel([di.BatchNorm(momentum=0.2, eps=1e-3)], data_format=data_format), "jax")
    fresh.apply_init(x1, init="zeros")
    fresh(x1, training=True)
    np.testing.assert_allclose(fresh.export_weights()["0.running_mean"], ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh.export_weights()["0.running_var"], ref_var, rtol=1e-5, atol=1e-6)
    # inference mode reads the statistics and leaves them alone
    before = model.export_weights()
    model(x1)
    assert all(np.array_equal(before[k], v) for k, v in model.export_weights().items())


def test_flax_batchnorm_would_store_the_biased_variance() -> None:
    """Why the adapter has its own BatchNorm module: Flax's differs from the spec's rule by n / (n - 1)."""
    x = np.random.default_rng(2).standard_normal((5, 4, 3, 3)).astype(np.float32)
    model = di.compile(di.LazyModel([di.BatchNorm()]), "jax")
    model.apply_init(x, init="zeros")
    model(x, training=True)
    ours = model.export_weights()
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, axis=1)
    _, upd = flax_bn.apply(flax_bn.init(KEY, x), x, mutable=["batch_stats"])
    n = 5 * 3 * 3
    np.testing.assert_allclose(ours["0.running_mean"], upd["batch_stats"]["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours["0.running_var"] - 0.9, (upd["batch_stats"]["var"] - 0.9) * n / (n - 1),
                               rtol=1e-4, atol=1e-6)
    assert set(model.variables["batch_stats"]["layers_0"]) == set(upd["batch_stats"])  # same names: mean, var


def test_training_call_stores_statistics_in_the_native_variables() -> None:
    h = BY_HAND["resnet"]
    model = _compiled(h, init="xavier_uniform", key=0)
    x = h.data(seed=4)
    before = model.variables
    y = model(x, training=True)
    after = model.variables
    assert after is not before and after["params"] is before["params"]
    hand = h.hand(True)
    want, upd = hand.apply(_hand_variables(h, model.export_weights() | {
        n: w for n, w in _canonical_stats(h, before).items()}), h.hand_input(x), mutable=["batch_stats"])
    np.testing.assert_allclose(model.to_numpy(y), np.asarray(want), rtol=1e-4, atol=1e-5)  # batch statistics used
    # the means move as Flax's do; only the variances differ, by the unbiased factor
    flat_ours = flax.traverse_util.flatten_dict(after["batch_stats"], sep="/")
    flat_hand = flax.traverse_util.flatten_dict(upd["batch_stats"], sep="/")
    assert set(flat_ours) == set(flat_hand)
    for k in flat_ours:
        if k.endswith("mean"):
            np.testing.assert_allclose(flat_ours[k], flat_hand[k], rtol=1e-4, atol=1e-6)


def _canonical_stats(h: Hand, variables: dict) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict(variables)
    out = {}
    for owner, (_, kind) in h.layers.items():
        if kind == "bn":
            for pname in ("running_mean", "running_var"):
                out[f"{owner}.{pname}"] = np.asarray(flat[_where(h, f"{owner}.{pname}")[1]])
    return out


# ------------------------------------------------------------------------------------------ (d) gradients
@pytest.mark.parametrize("hid,training", [("mlp", False), ("lenet", False), ("resnet", False), ("resnet", True),
                                          ("conv1d", True), ("embedding", False), ("tied", False)])
def test_gradients_equal_the_hand_built_models(hid: str, training: bool) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, init="xavier_uniform", key=2)
    weights = model.export_weights()
    x = h.data(seed=6)
    variables = _hand_variables(h, weights)
    hand = h.hand(training)

    def total(params: Any) -> Any:
        out = hand.apply({**variables, "params": params}, h.hand_input(x), mutable=["batch_stats"] if training else False)
        return jnp.sum(out[0] if training else out)

    want = _canonical_grads(h, jax.jit(jax.grad(total))(variables["params"]), weights)
    got = model.gradients(x, training=training)
    assert list(got) == [n for n, p in model.report.params.items() if p.trainable]
    assert set(got) == set(want)
    for name in got:
        assert got[name].shape == weights[name].shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=name)


# ------------------------------------------------------------------------------------------ (e) abstract init
def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("hid", ["lenet", "resnet", "embedding"])
def test_abstract_init_allocates_nothing_and_materializes(hid: str) -> None:
    h = BY_HAND[hid]
    concrete = _compiled(h, init="zeros").report
    model = di.compile(h.spec(), "jax")
    live = _live_bytes()
    report = model.apply_init(di.ShapeDtype(h.shape, h.dtype), abstract=True)
    assert _live_bytes() - live < 1024  # no parameter became an array (jax's own key is 8 bytes)
    assert report.diff(concrete) == []
    assert {p.native_name: p.native_shape for p in report.params.values()} == _hand_shapes(h)
    leaves = jax.tree_util.tree_leaves(model.variables)
    assert leaves and all(isinstance(a, jax.ShapeDtypeStruct) for a in leaves)
    with pytest.raises(di.NotInitializedError):
        model(h.data())
    with pytest.raises(di.NotInitializedError):
        model.export_weights()
    native = model.native
    assert model.materialize(init="xavier_uniform", key=4) is report
    assert model.native is native  # materialized in place
    ref = di.compile(h.spec(), "numpy")
    ref.apply_init(h.data(), init="xavier_uniform", key=4)
    weights, want = model.export_weights(), ref.export_weights()
    assert all(np.array_equal(weights[n], want[n]) for n in want)
    x = h.data(seed=1)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)


def test_abstract_init_of_a_huge_model_costs_no_memory() -> None:
    spec = di.LazyModel([di.Dense(8192, activation="relu") for _ in range(24)])
    model = di.compile(spec, "jax")
    rss, live, start = _rss(), _live_bytes(), time.perf_counter()
    report = model.apply_init(di.ShapeDtype((1, 8192)), abstract=True)
    took = time.perf_counter() - start
    assert report.total_params == 24 * (8192 * 8192 + 8192) > 1.6e9  # 6.4 GB as float32
    assert _live_bytes() - live < 1024
    assert _rss() - rss < 256 * 2**20, "abstract init grew the process by more than 256 MiB"
    assert took < 20
    assert report.params["23.weight"].native_name == "params/layers_23/kernel"


def test_abstract_init_with_unknown_dims() -> None:
    spec = BY_ID["residual"].make()
    model = di.compile(spec, "jax")
    report = model.apply_init(di.ShapeDtype((None, 3, None, None)), abstract=True)
    assert report.output_shape == (None, 3)
    assert report.diff(di.infer_shapes(spec, (None, 3, None, None))) == []
    model.materialize(init="kaiming_uniform", key=0)
    assert model.to_numpy(model(np.ones((1, 3, 9, 7), np.float32))).shape == (1, 3)


# ------------------------------------------------------------------------------------------ (f) no leftovers
@pytest.mark.parametrize("hid", ["mlp", "resnet"])
def test_no_uninitialized_leftovers_after_apply_init(hid: str) -> None:
    h = BY_HAND[hid]
    model = _compiled(h)  # Flax's own default initializers
    leaves = jax.tree_util.tree_leaves(model.variables)
    assert leaves and all(isinstance(a, jax.Array) and a.dtype == jnp.float32 for a in leaves)
    flat = flax.traverse_util.flatten_dict(model.variables, sep="/")
    assert {k: tuple(v.shape) for k, v in flat.items()} == {p.native_name: p.native_shape
                                                            for p in model.report.params.values()}
    # apply with nothing mutable: Flax raises if any module still had a variable to create
    y = jax.jit(lambda v, x: model.native.apply(v, x, mutable=False))(model.variables, h.data())
    assert np.isfinite(np.asarray(y)).all()


# ------------------------------------------------------------------------------------------ (g) Flax's own tools
def test_native_is_a_flax_module_usable_with_flax_tools() -> None:
    h = BY_HAND["resnet"]
    model = _compiled(h, init="xavier_normal", key=1)
    assert isinstance(model.native, nn.Module)
    x = h.data(seed=2)
    np.testing.assert_array_equal(np.asarray(jax.jit(model.native.apply)(model.variables, x)),
                                  model.to_numpy(model(x)))
    assert model.params is model.variables["params"]
    count = sum(a.size for a in jax.tree_util.tree_leaves(model.params))
    assert count == model.report.trainable_params
    assert sum(a.size for a in jax.tree_util.tree_leaves(model.variables)) == model.report.total_params
    table = model.native.tabulate(KEY, jnp.asarray(x), compute_flops=False, compute_vjp_flops=False,
                                  console_kwargs={"width": 200})
    assert "layers_3" in table and "body" in table and "shortcut" in table
    # a hand-written Flax training step on the native module and variables
    def loss(params: Any) -> Any:
        y, _ = model.native.apply({**model.variables, "params": params}, x, True, mutable=["batch_stats"])
        return jnp.mean(y ** 2)
    grads = jax.grad(loss)(model.params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.params)


# ------------------------------------------------------------------------------------------ initializers and keys
def test_flax_default_initializers_and_keys() -> None:
    spec = di.LazyModel([di.Dense(512), di.Dense(4)])
    x = np.zeros((2, 256), np.float32)
    a = di.compile(spec, "jax")
    a.apply_init(x, key=7)
    w = a.export_weights()
    # nn.Dense's default: lecun_normal, a normal truncated at 2 std, rescaled to std 1/sqrt(fan_in); zero biases
    assert abs(w["0.weight"].std() - 1 / 16) < 0.05 / 16
    assert np.abs(w["0.weight"]).max() <= 2 / 0.87962566103423978 / 16 + 1e-6
    assert not w["0.bias"].any() and not w["1.bias"].any()
    b = di.compile(spec, "jax")
    b.apply_init(x, key=jax.random.key(7))  # a native (typed) key
    c = di.compile(spec, "jax")
    c.apply_init(x, key=8)
    assert all(np.array_equal(w[n], v) for n, v in b.export_weights().items())
    assert not np.array_equal(w["0.weight"], c.export_weights()["0.weight"])


def test_framework_initializer_is_applied_to_kernels() -> None:
    model = di.compile(di.LazyModel([di.Conv2D(4, 3), di.Flatten(), di.Dense(5)]), "jax")
    model.apply_init(np.zeros((1, 2, 5, 5), np.float32), init=nn.initializers.constant(0.25))
    w = model.export_weights()
    assert (w["0.weight"] == 0.25).all() and (w["2.weight"] == 0.25).all()
    assert not w["0.bias"].any() and not w["2.bias"].any()
    model.apply_init(np.zeros((1, 2, 5, 5), np.float32), init=nn.initializers.xavier_uniform(), key=1)
    k = model.export_weights()["0.weight"]
    # Flax's fans for an HWIO kernel: fan_in = 3*3*2, fan_out = 3*3*4
    assert np.abs(k).max() <= np.sqrt(6 / (18 + 36)) and np.abs(k).max() > 0.8 * np.sqrt(6 / (18 + 36))
    with pytest.raises(di.DeferInitError, match="init"):
        model.apply_init(np.zeros((1, 2, 5, 5), np.float32), init=42)
    with pytest.raises(di.DTypeError, match="key"):
        model.apply_init(np.zeros((1, 2, 5, 5), np.float32), key="seven")


# ------------------------------------------------------------------------------------------ behaviour
def test_gelu_is_exact_and_dropout_is_flax_dropout() -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6)
    model = di.compile(di.LazyModel([di.GELU(), di.Dropout(0.5)]), "jax")
    model.apply_init(x)
    y = model.to_numpy(model(x))
    np.testing.assert_allclose(y, ops.gelu(x), rtol=1e-6, atol=1e-6)
    assert np.abs(y - np.asarray(nn.gelu(x, approximate=True))).max() > 1e-4  # Flax's default is not used
    big = np.ones((4, 1000), np.float32)
    model.apply_init(big)
    t1, t2 = model.to_numpy(model(big, training=True)), model.to_numpy(model(big, training=True))
    g = float(ops.gelu(np.ones(1, np.float32))[0])
    np.testing.assert_allclose(t1[t1 != 0], 2 * g, rtol=1e-6)  # kept values scaled by 1 / (1 - rate)
    assert 0.4 < (t1 == 0).mean() < 0.6 and not np.array_equal(t1, t2)  # a fresh key every call
    np.testing.assert_allclose(model.to_numpy(model(big)), np.full_like(big, g), rtol=1e-6)  # identity in inference


def test_forward_is_one_cached_jit_call() -> None:
    h = BY_HAND["lenet"]
    model = _compiled(h, init="xavier_uniform")
    x = jnp.asarray(h.data())
    model(x)
    model(np.asarray(x))
    fn = model._st(model.native).fns["infer"]  # type: ignore[attr-defined]
    assert fn._cache_size() == 1  # one trace for one input signature
    model(h.data()[:1])
    assert fn._cache_size() == 2


def test_intermediates_match_the_reference_layer_by_layer() -> None:
    case = BY_ID["concat"]
    model = di.compile(case.make(), "jax")
    model.apply_init(case.data(), init="xavier_uniform", key=2)
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(model.export_weights(), input_shape=case.shape)
    got, want = model.intermediates(case.data(seed=1)), ref.intermediates(case.data(seed=1))
    assert list(got) == list(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=2e-4, atol=2e-5, err_msg=path)


def test_a_layer_without_a_flax_module_is_refused() -> None:
    from deferinit.layers import Leaf

    class Mystery(Leaf):
        def infer(self, shape, ctx):  # type: ignore[no-untyped-def]
            return shape, {}

    with pytest.raises(di.UnsupportedLayerError, match=r"layer '1' \(Mystery\) on backend jax"):
        di.compile(di.LazyModel([di.Dense(2), Mystery()]), "jax").apply_init(np.zeros((1, 2), np.float32))
