"""The jax adapter against models written by hand in Flax linen, as the d2l book's JAX chapters write them
(``nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)])``, whose shapes Flax finds in ``init``).

Truth here never comes from the adapter: the hand-built modules' own ``init`` (run with ``jax.eval_shape``, a
dry run that allocates nothing), their forward passes and ``jax.grad``, the test's own layout knowledge
(Dense kernel ``(in, out)``, Conv HWIO / WIO), numbers derived by hand (the batch-norm update rule) and the
numpy reference backend. Collected only when the jax backend is selected (see conftest.py); it fails if JAX
or Flax is broken.
"""

from __future__ import annotations

import functools
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
from cases import BY_ID, Case
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


# the sequence chapters, as a Flax user writes them: nn.RNN over Flax's own cells, nn.Bidirectional, stacked
def _one_hot(n: int) -> Callable:
    return lambda x: jax.nn.one_hot(x, n)


def _bi_lstm() -> nn.Module:
    return nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(6)), nn.RNN(nn.OptimizedLSTMCell(6)))


class HandClassToken(nn.Module):
    """d2l's JAX ``cls_token`` (zeros), as a layer."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        token = self.param("cls_token", nn.initializers.zeros, (1, 1, x.shape[-1]))
        return jnp.concatenate([jnp.tile(token, (x.shape[0], 1, 1)), x], axis=1)


class HandPositionEmbedding(nn.Module):
    """d2l's JAX ``pos_embed`` (``nn.initializers.normal()``), as a layer."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        return x + self.param("pos_embed", nn.initializers.normal(), (1, x.shape[1], x.shape[2]))


def _tokens_spec() -> di.LazyModel:  # the ViT's stem and head
    return di.LazyModel([di.Conv2D(4, 2, stride=2), di.Reshape((4, -1)), di.Permute((2, 1)), di.ClassToken(),
                         di.PositionEmbedding(), di.Take(0), di.Dense(2)])


def _tokens_hand(train: bool) -> nn.Module:
    # NHWC: the patches are (N, H*W, C) by a reshape alone; the spec's channels-first Reshape + Permute give the same
    return nn.Sequential([nn.Conv(4, (2, 2), strides=2, padding="VALID"), lambda x: x.reshape(x.shape[0], -1, 4),
                          lambda x: x, HandClassToken(), HandPositionEmbedding(), lambda x: x[:, 0], nn.Dense(2)])


class Hand(NamedTuple):
    id: str
    spec: Callable[[], di.LazyModel]
    hand: Callable[[bool], nn.Module]   # train -> module
    shape: tuple
    layers: dict[str, tuple[str, str]]  # canonical layer path -> (the hand model's module path, kind)
    dtype: str = "float32"
    channels_first: bool = True         # images: the hand model takes NHWC (sequences are batch-first everywhere)
    high: int = 50                      # token ids are drawn below this

    def data(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.dtype.startswith("int"):
            return rng.integers(0, self.high, size=self.shape).astype(self.dtype)
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
    Hand("gru_lm", lambda: di.LazyModel([di.OneHot(12), di.GRU(8), di.Dense(12)]),
         lambda train: nn.Sequential([_one_hot(12), nn.RNN(nn.GRUCell(8)), nn.Dense(12)]), (2, 9),
         {"1": ("layers_1", "gru"), "2": ("layers_2", "dense")}, dtype="int64", channels_first=False, high=12),
    Hand("lstm_deep_bi", lambda: di.LazyModel([di.LSTM(6, num_layers=2, bidirectional=True), di.Dense(3)]),
         lambda train: nn.Sequential([nn.Sequential([_bi_lstm(), _bi_lstm()]), nn.Dense(3)]), (2, 5, 4),
         {"0": ("layers_0", "lstm"), "1": ("layers_1", "dense")}, channels_first=False),
    Hand("rnn_relu", lambda: di.LazyModel([di.RNN(6, activation="relu"), di.Dense(3)]),
         lambda train: nn.Sequential([nn.RNN(nn.SimpleCell(6, activation_fn=nn.relu)), nn.Dense(3)]), (2, 5, 4),
         {"0": ("layers_0", "rnn"), "1": ("layers_1", "dense")}, channels_first=False),
    Hand("attention", lambda: di.LazyModel([di.Dense(8), di.MultiHeadAttention(8, 2, use_bias=True), di.LayerNorm()]),
         lambda train: nn.Sequential([nn.Dense(8), nn.MultiHeadDotProductAttention(2, qkv_features=8, out_features=8),
                                      nn.LayerNorm(epsilon=1e-5)]), (2, 5, 3),
         {"0": ("layers_0", "dense"), "1": ("layers_1", "mha:2"), "2": ("layers_2", "ln")}, channels_first=False),
    Hand("tokens", _tokens_spec, _tokens_hand, (2, 3, 6, 6),
         {"0": ("layers_0", "conv"), "3": ("layers_3", "cls"), "4": ("layers_4", "pos"), "6": ("layers_6", "dense")}),
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
    "cls": {"weight": ("params", "cls_token", _SAME)},
    "pos": {"weight": ("params", "pos_embed", _SAME)},
}
#: Flax's cells keep one Dense per gate, input side then hidden side, in PyTorch's gate order
_CELL_GATES = {"rnn": (("i",), ("h",)), "gru": (("ir", "iz", "in"), ("hr", "hz", "hn")),
               "lstm": (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"))}


def _where(h: Hand, name: str) -> tuple[str, tuple[str, ...], tuple[Callable, Callable]]:
    owner, _, pname = name.rpartition(".")
    path, kind = h.layers[owner]
    collection, leaf, layout = _NATIVE[kind][pname]
    return collection, (collection, *path.split("/"), leaf), layout


def _cells(path: str, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Canonical suffix ("l0", "l1_reverse"...) -> the Flax cell's keys: nn.RNN's ``cell``, inside
    nn.Bidirectional's ``forward_rnn``/``backward_rnn``, inside ``layers_<l>`` of an nn.Sequential when stacked."""
    sfxs = sorted({n.split("_", 2)[2] for n in names if n.startswith("weight_ih_")})
    deep, bi = any(s.startswith("l1") for s in sfxs), any(s.endswith("_reverse") for s in sfxs)
    out = {}
    for sfx in sfxs:
        layer = sfx.split("_")[0][1:]
        keys = ("params", *path.split("/")) + ((f"layers_{layer}",) if deep else ())
        keys += (("backward_rnn" if sfx.endswith("_reverse") else "forward_rnn"),) if bi else ()
        out[sfx] = keys + ("cell",)
    return out


def _to_flax(kind: str, path: str, own: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    """One layer's canonical weights -> the hand model's variables, by the test's own layout knowledge."""
    out: dict[tuple, np.ndarray] = {}
    if kind in _CELL_GATES:
        ins, hids = _CELL_GATES[kind]
        for sfx, cell in _cells(path, list(own)).items():
            g = len(ins)
            for names, w in ((ins, own[f"weight_ih_{sfx}"]), (hids, own[f"weight_hh_{sfx}"])):
                out.update({cell + (n, "kernel"): blk.T for n, blk in zip(names, np.split(w, g))})
            if f"bias_ih_{sfx}" not in own:
                continue
            bi, bh = np.split(own[f"bias_ih_{sfx}"], g), np.split(own[f"bias_hh_{sfx}"], g)
            if kind == "gru":  # one bias for r and z (input side), both of n's: b_in and b_hn (hidden side)
                out.update({cell + ("ir", "bias"): bi[0] + bh[0], cell + ("iz", "bias"): bi[1] + bh[1],
                            cell + ("in", "bias"): bi[2], cell + ("hn", "bias"): bh[2]})
            else:  # SimpleCell: the input Dense's bias; LSTM: the hidden Denses' biases
                out.update({cell + (n, "bias"): a + b for n, a, b in zip(ins if kind == "rnn" else hids, bi, bh)})
    elif kind.startswith("mha"):  # DenseGeneral kernels (D, heads, head_dim) and (heads, head_dim, H)
        heads, keys = int(kind.split(":")[1]), ("params", *path.split("/"))
        for proj, sub in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
            w = own[f"{proj}_weight"]
            out[keys + (sub, "kernel")] = w.T.reshape(heads, -1, w.shape[0]) if proj == "out" else \
                w.T.reshape(w.shape[1], heads, -1)
            if f"{proj}_bias" in own:
                b = own[f"{proj}_bias"]
                out[keys + (sub, "bias")] = b if proj == "out" else b.reshape(heads, -1)
    else:
        for pname, w in own.items():
            collection, leaf, (to_flax, _) = _NATIVE[kind][pname]
            out[(collection, *path.split("/"), leaf)] = to_flax(w)
    return out


def _from_flax_grads(kind: str, path: str, names: list[str], flat: dict) -> dict[str, np.ndarray]:
    """The hand model's gradients -> one layer's canonical gradients. A canonical bias that Flax folds into
    another (bias_hh of r and z) gets the folded variable's gradient, as it would alone."""
    out: dict[str, np.ndarray] = {}
    if kind in _CELL_GATES:
        ins, hids = _CELL_GATES[kind]
        for sfx, cell in _cells(path, names).items():
            g = functools.partial(lambda c, n, leaf: np.asarray(flat[c + (n, leaf)]), cell)
            out[f"weight_ih_{sfx}"] = np.concatenate([g(n, "kernel").T for n in ins])
            out[f"weight_hh_{sfx}"] = np.concatenate([g(n, "kernel").T for n in hids])
            if f"bias_ih_{sfx}" not in names:
                continue
            if kind == "gru":
                out[f"bias_ih_{sfx}"] = np.concatenate([g("ir", "bias"), g("iz", "bias"), g("in", "bias")])
                out[f"bias_hh_{sfx}"] = np.concatenate([g("ir", "bias"), g("iz", "bias"), g("hn", "bias")])
            else:
                both = np.concatenate([g(n, "bias") for n in (ins if kind == "rnn" else hids)])
                out[f"bias_ih_{sfx}"], out[f"bias_hh_{sfx}"] = both, both
    elif kind.startswith("mha"):
        keys = ("params", *path.split("/"))
        for proj, sub in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
            k = np.asarray(flat[keys + (sub, "kernel")])
            out[f"{proj}_weight"] = k.reshape(-1, k.shape[-1]).T if proj == "out" else k.reshape(k.shape[0], -1).T
            if f"{proj}_bias" in names:
                out[f"{proj}_bias"] = np.asarray(flat[keys + (sub, "bias")]).reshape(-1)
    else:
        for pname in names:
            collection, leaf, (_, from_flax) = _NATIVE[kind][pname]
            if collection == "params":
                out[pname] = from_flax(np.asarray(flat[(collection, *path.split("/"), leaf)]))
    return out


def _by_layer(h: Hand, names: Any) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        owner, _, pname = name.rpartition(".")
        groups.setdefault(owner, []).append(pname)
    return groups


def _hand_variables(h: Hand, weights: dict[str, np.ndarray]) -> dict:
    """Canonical weights written into the hand model's own variable dict."""
    flat = {}
    for owner, pnames in _by_layer(h, weights).items():
        path, kind = h.layers[owner]
        flat.update({k: jnp.asarray(v) for k, v in _to_flax(kind, path, {p: weights[f"{owner}.{p}"]
                                                                           for p in pnames}).items()})
    return flax.traverse_util.unflatten_dict(flat)


def _hand_shapes(h: Hand) -> dict[str, tuple]:
    """The hand model's variables after its own dry run: Flax ``init`` traced by jax.eval_shape."""
    found = jax.eval_shape(h.hand(False).init, KEY, h.hand_input(h.data()))
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(found, sep="/").items()}


def _expand(native_name: str, native_shape: tuple) -> dict[str, tuple]:
    """The adapter's name for a parameter held by one variable per gate (``.../{ir,iz,in}/kernel``, shape
    ``(3, in, H)``) -> each variable's name and shape."""
    if "{" not in native_name:
        return {native_name: native_shape}
    head, rest = native_name.split("{")
    gates, tail = rest.split("}")
    return {f"{head}{g}{tail}": native_shape[1:] for g in gates.split(",")}


def _compiled(h: Hand, **kw: Any) -> di.CompiledModel:
    model = di.compile(h.spec(), "jax")
    model.apply_init(h.data(), **kw)
    return model


def _canonical_grads(h: Hand, grads: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict({"params": grads})
    out = {}
    for owner, pnames in _by_layer(h, weights).items():
        path, kind = h.layers[owner]
        out.update({f"{owner}.{p}": g for p, g in _from_flax_grads(kind, path, pnames, flat).items()})
    return out


# ------------------------------------------------------------------------------------------ (a) names and shapes
@pytest.mark.parametrize("hid", HAND_IDS)
def test_native_names_and_shapes_equal_the_hand_built_model(hid: str) -> None:
    h = BY_HAND[hid]
    report = di.compile(h.spec(), "jax").apply_init(h.data(), init="zeros")
    got = {k: v for p in report.params.values() for k, v in _expand(p.native_name, p.native_shape).items()}
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
        if n.endswith(("running_mean", "running_var")) or "bias" in n:  # not the trivial 0 / 1 statistics, and
            # biases everywhere (a recurrent layer's bias_ih and bias_hh fold into one Flax bias for some gates)
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
                                          ("conv1d", True), ("embedding", False), ("tied", False), ("gru_lm", False),
                                          ("lstm_deep_bi", False), ("rnn_relu", False), ("attention", False),
                                          ("tokens", False)])
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


@pytest.mark.parametrize("hid", ["lenet", "resnet", "embedding", "gru_lm", "tokens"])
def test_abstract_init_allocates_nothing_and_materializes(hid: str) -> None:
    h = BY_HAND[hid]
    concrete = _compiled(h, init="zeros").report
    model = di.compile(h.spec(), "jax")
    live = _live_bytes()
    report = model.apply_init(di.ShapeDtype(h.shape, h.dtype), abstract=True)
    assert _live_bytes() - live < 1024  # no parameter became an array (jax's own key is 8 bytes)
    assert report.diff(concrete) == []
    assert {k: v for p in report.params.values() for k, v in _expand(p.native_name, p.native_shape).items()} == \
        _hand_shapes(h)
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


# ------------------------------------------------------------------------------------------ sequence layers
SEQ_CASES = [
    Case("rnn_tanh_bi", lambda: di.LazyModel([di.RNN(6, bidirectional=True), di.Dense(3)]), (2, 5, 4)),
    Case("rnn_relu_deep_no_bias", lambda: di.LazyModel([di.RNN(6, activation="relu", num_layers=2, use_bias=False)]),
         (2, 5, 4)),
    Case("gru_deep_bi_dropout", lambda: di.LazyModel([di.GRU(5, num_layers=2, bidirectional=True, dropout=0.3)]),
         (3, 6, 4)),
    Case("gru_lstm_no_bias", lambda: di.LazyModel([di.GRU(5, bidirectional=True, use_bias=False),
                                                   di.LSTM(4, num_layers=2, use_bias=False)]), (2, 6, 3)),
    Case("lstm_one_hot", lambda: di.LazyModel([di.OneHot(50), di.LSTM(6, num_layers=2), di.Dense(5)]), (2, 6),
         "int64"),
    Case("attention", lambda: di.LazyModel([di.Dense(8), di.MultiHeadAttention(8, 2, use_bias=True),
                                            di.MultiHeadAttention(8, 1), di.LayerNorm()]), (2, 5, 3)),
    Case("tokens", lambda: di.LazyModel([di.Embedding(50, 8), di.Scale(2.0), di.PositionalEncoding(max_len=10),
                                         di.ClassToken(), di.PositionEmbedding(), di.Take(0), di.Dense(2)]),
         (2, 6), "int64"),
    Case("patches", lambda: di.LazyModel([di.Conv2D(4, 2, stride=2), di.Reshape((4, -1)), di.Permute((2, 1)),
                                          di.Reshape((-1,)), di.Dense(3)]), (2, 3, 6, 6)),
    # sequences are batch-first in either data format: nothing is transposed around the sequence layers
    Case("sequence_channels_last", lambda: di.LazyModel([
        di.Conv1D(4, 3, padding=1), di.GRU(5), di.BatchNorm(), di.Permute((2, 1)), di.Take(1, axis=2), di.Dense(2)],
        data_format="channels_last"), (2, 7, 3)),
    Case("patches_channels_last", lambda: di.LazyModel([
        di.Conv2D(4, 2, stride=2), di.Reshape((-1, 4)), di.ClassToken(), di.MultiHeadAttention(4, 2), di.Take(0),
        di.Dense(2)], data_format="channels_last"), (2, 6, 6, 3)),
]
SEQ = {c.id: c for c in SEQ_CASES}
_STOCHASTIC_OR_BN = {"gru_deep_bi_dropout", "sequence_channels_last"}


def _random_weights(report: di.ShapeReport, seed: int) -> dict[str, np.ndarray]:
    """Every parameter random, biases too (a recurrent layer's two biases fold into one Flax bias per gate)."""
    rng = np.random.default_rng(seed)
    out = {n: (rng.standard_normal(p.shape) * 0.5).astype(np.float32) for n, p in report.params.items()}
    return {n: (np.abs(w) + 0.5 if n.endswith("running_var") else w) for n, w in out.items()}


@pytest.mark.parametrize("case_id", list(SEQ))
def test_sequence_layers_equal_the_reference(case_id: str) -> None:
    case = SEQ[case_id]
    model = di.compile(case.make(), "jax")
    report = model.apply_init(case.data(), key=3)
    assert report.diff(di.infer_shapes(case.make(), case.shape, dtype=case.dtype)) == []
    assert all(p.source == "native" for p in report.params.values())  # Flax's init found every dim
    weights = _random_weights(report, 1)
    model.load_weights(weights)
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(weights, input_shape=di.ShapeDtype(case.shape, case.dtype))
    x = case.data(seed=7, batch=3)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)
    got, want = model.intermediates(x), ref.intermediates(x)
    assert list(got) == list(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=2e-4, atol=2e-5, err_msg=path)
    if case_id not in _STOCHASTIC_OR_BN:  # no dropout, no batch statistics: training mode computes the same
        np.testing.assert_allclose(model.to_numpy(model(x, training=True)), ref(x), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("case_id", ["rnn_tanh_bi", "sequence_channels_last", "lstm_one_hot", "attention", "tokens"])
def test_sequence_gradients_agree_with_the_reference_by_finite_differences(case_id: str) -> None:
    # the directional derivative of sum(reference(x)) along a random unit direction v (every parameter, the
    # folded recurrent biases included), by central differences, against sum(gradient * v) from jax.grad
    case = SEQ[case_id]
    model = di.compile(case.make(), "jax")
    w = _random_weights(model.apply_init(case.data(), key=5), 2)
    model.load_weights(w)
    x = case.data(seed=2)
    grads = model.gradients(x)
    rng = np.random.default_rng(0)
    v = {n: rng.standard_normal(g.shape) for n, g in grads.items()}
    norm = np.sqrt(sum(float((d ** 2).sum()) for d in v.values()))
    v = {n: (d / norm).astype(np.float32) for n, d in v.items()}
    ref = di.compile(case.make(), "numpy")

    def f(eps: float) -> float:
        ref.load_weights({n: a + np.float32(eps) * v[n] if n in v else a for n, a in w.items()},
                         input_shape=di.ShapeDtype(case.shape, case.dtype))
        return float(ref(x).astype(np.float64).sum())

    numeric = (f(1e-3) - f(-1e-3)) / 2e-3
    analytic = sum(float((grads[n].astype(np.float64) * v[n]).sum()) for n in grads)
    assert abs(numeric - analytic) <= 1e-2 * max(1.0, abs(analytic)), (numeric, analytic)


def test_folded_biases_export_as_bias_ih_with_bias_hh_zero() -> None:
    # PyTorch keeps b_ih and b_hh per gate; Flax's GRUCell one bias for r and z (and both of n's), its LSTM and
    # SimpleCell one per gate: the sum is held, exported as bias_ih with bias_hh zero, the same function
    spec = lambda: di.LazyModel([di.GRU(4), di.LSTM(3), di.RNN(2)])  # noqa: E731
    model = di.compile(spec(), "jax")
    report = model.apply_init(np.zeros((2, 5, 3), np.float32), key=0)
    torch_like = _random_weights(report, 4)
    model.load_weights(torch_like)
    exported = model.export_weights()
    for layer, own in (("0", slice(8, 12)), ("1", slice(0, 0)), ("2", slice(0, 0))):
        ih, hh = torch_like[f"{layer}.bias_ih_l0"], torch_like[f"{layer}.bias_hh_l0"]
        folded = np.ones(ih.shape, bool)
        folded[own] = False  # the GRU's n gate keeps b_in and b_hn apart (r multiplies W_hn h + b_hn)
        np.testing.assert_allclose(exported[f"{layer}.bias_ih_l0"], np.where(folded, ih + hh, ih), rtol=1e-6)
        np.testing.assert_array_equal(exported[f"{layer}.bias_hh_l0"], np.where(folded, 0, hh))
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    ref = di.compile(spec(), "numpy")
    ref.load_weights(torch_like, input_shape=(2, 5, 3))
    y = model.to_numpy(model(x))
    np.testing.assert_allclose(y, ref(x), rtol=2e-4, atol=2e-5)
    model.load_weights(exported)  # the exported form loads back to the same variables
    np.testing.assert_array_equal(model.to_numpy(model(x)), y)
    # Flax counts its own variables: the spec's (PyTorch's) count less the folded halves (GRU 2H, LSTM 4H, RNN H)
    flax_count = sum(a.size for a in jax.tree_util.tree_leaves(model.params))
    assert flax_count == report.trainable_params - (2 * 4 + 4 * 3 + 2)
    assert set(model.params["layers_0"]["cell"]) == {"ir", "iz", "in", "hr", "hz", "hn"}


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_cells_without_bias_are_flax_cells_minus_their_biases(kind: str) -> None:
    # independent truth: Flax's own cell with its biases at zero computes what use_bias=False means
    layer = {"rnn": di.RNN, "gru": di.GRU, "lstm": di.LSTM}[kind]
    cell = {"rnn": lambda: nn.SimpleCell(5), "gru": lambda: nn.GRUCell(5), "lstm": lambda: nn.LSTMCell(5)}[kind]
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    model = di.compile(di.LazyModel([layer(5, use_bias=False)]), "jax")
    model.apply_init(x, init="xavier_uniform", key=1)
    flax_rnn = nn.RNN(cell())
    flat = flax.traverse_util.flatten_dict(jax.eval_shape(flax_rnn.init, KEY, jnp.asarray(x))["params"], sep="/")
    ours = flax.traverse_util.flatten_dict(model.params["layers_0"], sep="/")
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in flat.items() if not k.endswith("bias")}
    with_zero_biases = {k: (jnp.zeros(v.shape) if k.endswith("bias") else ours[k]) for k, v in flat.items()}
    want = flax_rnn.apply({"params": flax.traverse_util.unflatten_dict(with_zero_biases, sep="/")}, jnp.asarray(x))
    np.testing.assert_allclose(model.to_numpy(model(x)), np.asarray(want), **TIGHT)


def test_sequence_default_initializers_are_flax_and_d2l_jax() -> None:
    spec = di.LazyModel([di.GRU(64, bidirectional=True), di.ClassToken(), di.PositionEmbedding(),
                         di.MultiHeadAttention(128, 4, use_bias=True)])
    model = di.compile(spec, "jax")
    model.apply_init(np.zeros((2, 30, 16), np.float32), key=3)
    w = model.export_weights()
    for sfx in ("", "_reverse"):
        for gate in np.split(w[f"0.weight_hh_l0{sfx}"], 3):  # nn.GRUCell: orthogonal recurrent kernels per gate
            np.testing.assert_allclose(gate @ gate.T, np.eye(64), atol=1e-5)
        ih = w[f"0.weight_ih_l0{sfx}"]  # lecun_normal, fan-in 16 per gate
        assert abs(ih.std() - 0.25) < 0.03 and np.abs(ih).max() <= 2 / 0.87962566103423978 * 0.25 + 1e-6
        assert not w[f"0.bias_ih_l0{sfx}"].any() and not w[f"0.bias_hh_l0{sfx}"].any()
    assert not w["1.weight"].any()  # d2l's cls_token: zeros
    assert abs(w["2.weight"].std() - 0.01) < 0.001  # d2l's JAX pos_embed: nn.initializers.normal(), std 0.01
    for proj in ("q", "k", "v", "out"):  # DenseGeneral draws lecun_normal on the flattened (128, 128) kernel
        assert abs(w[f"3.{proj}_weight"].std() - 128 ** -0.5) < 0.005 and not w[f"3.{proj}_bias"].any()
    # a Flax initializer given to apply_init reaches every kernel: recurrent, attention, the position embedding
    model.apply_init(np.zeros((2, 30, 16), np.float32), init=nn.initializers.constant(0.5))
    w = model.export_weights()
    assert all((w[n] == 0.5).all() for n in w if "weight_" in n or n.endswith("_weight") or n == "2.weight")
    assert not w["1.weight"].any() and all(not w[n].any() for n in w if "bias" in n)


def test_tied_recurrent_and_attention_layers_share_their_variables() -> None:
    gru, mha = di.GRU(4), di.MultiHeadAttention(4, 2, use_bias=True)
    spec = lambda: di.LazyModel([di.Dense(4), gru, mha, gru, mha, di.Dense(2)])  # noqa: E731
    model = di.compile(spec(), "jax")
    report = model.apply_init(np.zeros((2, 5, 3), np.float32), key=0)
    assert set(model.params) == {"layers_0", "layers_1", "layers_2", "layers_5"}
    weights = _random_weights(report, 6)
    model.load_weights(weights)
    ref = di.compile(spec(), "numpy")
    ref.load_weights(weights, input_shape=(2, 5, 3))
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)


def test_dropout_in_training_is_flax_dropout_and_inference_is_deterministic() -> None:
    # between stacked recurrent layers (PyTorch's rule) and on the attention weights (d2l's): no reference exists
    # for the random masks; training calls draw fresh ones, inference uses none
    spec = di.LazyModel([di.GRU(16, num_layers=2, dropout=0.5), di.MultiHeadAttention(16, 2, dropout=0.5)])
    model = di.compile(spec, "jax")
    x = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)
    report = model.apply_init(x, init="xavier_uniform", key=0)
    a, b = model.to_numpy(model(x, training=True)), model.to_numpy(model(x, training=True))
    assert not np.allclose(a, b)
    ref = di.compile(di.LazyModel([di.GRU(16, num_layers=2), di.MultiHeadAttention(16, 2)]), "numpy")
    ref.load_weights(model.export_weights(), input_shape=report.input_shape)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)
