"""The torch adapter against models written by hand with torch's own lazy modules, as in the d2l book's
lazy-initialization chapter (``nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(10))``).

Truth here never comes from the adapter: the hand-built modules' own dry runs, shapes and forward passes,
numbers derived by hand (padding sizes, the batch-norm update rule), and the numpy reference backend.
Collected only when the torch backend is selected (see conftest.py); it fails if torch is broken.
"""

from __future__ import annotations

import copy
import io
import re
from typing import Callable, NamedTuple

import numpy as np
import pytest
import test_zoo_torch as book  # the d2l book's PyTorch building blocks (RNNLM, MultiHeadAttention, ViT...)
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

import deferinit as di
from cases import BY_ID, CASES, Case
from deferinit import ops, zoo
from deferinit.adapters.torch.sequence import (
    ClassTokenModule,
    LazyClassToken,
    LazyGRU,
    LazyPositionEmbedding,
    LazySinusoidalEncoding,
    PositionEmbeddingModule,
    SinusoidalEncoding,
)

TIGHT = {"rtol": 1e-6, "atol": 1e-6}  # same torch kernels on both sides


# ------------------------------------------------------------------------------------------ hand-built models
class HandResidual(nn.Module):
    """d2l's ResNet block, verbatim in structure."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


class HandShortcutBlock(nn.Module):
    """The contract's second residual block: body conv+BN, 1x1 strided shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(16, 3, stride=2, padding=1)
        self.bn = nn.LazyBatchNorm2d()
        self.short = nn.LazyConv2d(16, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.short(x))


class HandInception(nn.Module):
    """An Inception-like block; the (2, 4) "same" convolution's pads derived by hand: H total 1 -> (0, 1),
    W total 3 -> (1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.LazyConv2d(3, 1)
        self.b2_1 = nn.LazyConv2d(2, 1)
        self.b2_2 = nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.LazyConv2d(5, (2, 4)))
        self.b3_1 = nn.MaxPool2d(3, stride=1, padding=1)
        self.b3_2 = nn.LazyConv2d(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.b1(x), self.b2_2(F.relu(self.b2_1(x))), self.b3_2(self.b3_1(x))), dim=1)


def _lenet_spec() -> di.LazyModel:  # d2l's BatchNorm LeNet
    return di.LazyModel([
        di.Conv2D(6, 5), di.BatchNorm(), di.Sigmoid(), di.AvgPool2D(2, stride=2),
        di.Conv2D(16, 5), di.BatchNorm(), di.Sigmoid(), di.AvgPool2D(2, stride=2), di.Flatten(),
        di.Dense(120), di.BatchNorm(), di.Sigmoid(), di.Dense(84), di.BatchNorm(), di.Sigmoid(), di.Dense(10)])


def _lenet_hand() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.LazyBatchNorm1d(), nn.Sigmoid(), nn.LazyLinear(84), nn.LazyBatchNorm1d(),
        nn.Sigmoid(), nn.LazyLinear(10))


def _inception_spec() -> di.LazyModel:
    return di.LazyModel([
        di.Conv2D(4, 3, stride=2, padding="same", activation="relu"), di.BatchNorm(),
        di.Concat([di.Conv2D(3, 1),
                   di.Sequential([di.Conv2D(2, 1, activation="relu"), di.Conv2D(5, (2, 4), padding="same")]),
                   di.Sequential([di.MaxPool2D(3, stride=1, padding=1), di.Conv2D(2, 1)])]),
        di.GlobalAvgPool2D(), di.Dense(3)], data_format="channels_last")


def _inception_hand() -> nn.Module:
    # stride-2 "same" on 11 x 10 by hand: H out 6, total (6-1)*2+3-11 = 2 -> (1, 1); W out 5, total 1 -> (0, 1)
    return nn.Sequential(nn.ZeroPad2d((0, 1, 1, 1)), nn.LazyConv2d(4, 3, stride=2), nn.ReLU(), nn.LazyBatchNorm2d(),
                         HandInception(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(3))


_INCEPTION_NAMES = {"0": "1", "1": "3", "2.0": "4.b1", "2.1.0": "4.b2_1", "2.1.1": "4.b2_2.1", "2.2.1": "4.b3_2",
                    "4": "7"}
_RESNET_NAMES = {"3.body.0": "3.conv1", "3.body.1": "3.bn1", "3.body.3": "3.conv2", "3.body.4": "3.bn2",
                 "4.body.0": "4.conv", "4.body.1": "4.bn", "4.shortcut": "4.short", "6": "7"}


def _mapped(table: dict[str, str]) -> Callable[[str], str]:
    def to_hand(name: str) -> str:
        owner, _, attr = name.rpartition(".")
        return f"{table.get(owner, owner)}.{attr}"
    return to_hand


def _tied_spec() -> di.LazyModel:  # d2l's tied-parameters example
    shared = di.Dense(8)
    return di.LazyModel([di.Dense(8), di.ReLU(), shared, di.ReLU(), shared, di.ReLU(), di.Dense(1)])


def _tied_hand() -> nn.Module:
    shared = nn.LazyLinear(8)
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.LazyLinear(1))


def _by_order(spec: Callable[[], di.LazyModel], hand: Callable[[], nn.Module], shape: tuple,
              dtype: str = "float32") -> Callable[[str], str]:
    """Canonical name -> hand-built name, for book code that registers its parameters in the spec's order
    (checked: the shapes must line up one by one)."""
    table: dict[str, str] = {}

    def to_hand(name: str) -> str:
        if not table:
            params = di.infer_shapes(spec(), shape, dtype=dtype).params
            x = torch.zeros(shape, dtype=torch.int64 if dtype.startswith("int") else torch.float32)
            net = hand()
            with torch.no_grad():
                net.eval()(x)
            state = {n: t for n, t in net.state_dict().items() if not n.endswith("num_batches_tracked")}
            assert [p.shape for p in params.values()] == [tuple(t.shape) for t in state.values()]
            table.update(zip(params, state))
        return table[name]
    return to_hand


def _lm_spec(kind: str, **kw) -> Callable[[], di.LazyModel]:  # type: ignore[no-untyped-def]
    cls = {"rnn": di.RNN, "gru": di.GRU, "lstm": di.LSTM}[kind]
    return lambda: di.LazyModel([di.OneHot(12), cls(8, **kw), di.Dense(12)])


_TINY_VIT = {"patch_size": 4, "num_hiddens": 16, "mlp_num_hiddens": 32, "num_heads": 2, "num_blks": 1}
_TINY_TRANSFORMER = {"vocab_size": 50, "num_hiddens": 16, "ffn_num_hiddens": 32, "num_heads": 4, "num_blks": 1,
                     "dropout": 0.0, "use_bias": True}


class Hand(NamedTuple):
    id: str
    spec: Callable[[], di.LazyModel]
    hand: Callable[[], nn.Module]
    shape: tuple
    dtype: str = "float32"
    to_hand: Callable[[str], str] = lambda n: n
    channels_last: bool = False
    high: int = 50           # token ids are drawn below this
    same_draws: bool = True  # the hand-built model draws its default init in the dry run's order

    def data(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.dtype.startswith("int"):
            return rng.integers(0, self.high, size=self.shape).astype(self.dtype)
        return rng.standard_normal(self.shape).astype(self.dtype)

    def hand_input(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return t.permute(0, 3, 1, 2) if self.channels_last else t


HANDS = [
    Hand("mlp", lambda: di.LazyModel([di.Dense(256), di.ReLU(), di.Dense(10)]),
         lambda: nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(10)), (2, 20)),
    Hand("bn_lenet", _lenet_spec, _lenet_hand, (2, 1, 28, 28)),
    Hand("resnet", BY_ID["residual"].make, lambda: nn.Sequential(
        nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), HandResidual(8), HandShortcutBlock(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(3)), (2, 3, 12, 12), to_hand=_mapped(_RESNET_NAMES)),
    Hand("inception_channels_last", _inception_spec, _inception_hand, (2, 11, 10, 3),
         to_hand=_mapped(_INCEPTION_NAMES), channels_last=True),
    Hand("embedding", BY_ID["embedding"].make,
         # torch has no lazy LayerNorm: a hand-written model states its size, 8
         lambda: nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Flatten(), nn.LazyLinear(3)), (2, 5), "int64"),
    Hand("tied", _tied_spec, _tied_hand, (2, 6)),
    # the sequence chapters, as the book writes them: time-major recurrent layers behind F.one_hot(X.T)
    Hand("gru_lm", _lm_spec("gru"), lambda: book.lm("gru", 12, 8), (2, 9), "int64", book._lm_name, high=12),
    Hand("lstm_deep_bi_no_bias", _lm_spec("lstm", num_layers=2, bidirectional=True, use_bias=False),
         lambda: book.lm("lstm", 12, 8, num_layers=2, bidirectional=True, bias=False), (3, 5), "int64", book._lm_name,
         high=12),
    Hand("rnn_relu_deep", _lm_spec("rnn", activation="relu", num_layers=2),
         lambda: book.lm("rnn", 12, 8, num_layers=2, nonlinearity="relu"), (2, 6), "int64", book._lm_name, high=12),
    Hand("transformer", lambda: zoo.transformer_encoder(**_TINY_TRANSFORMER),
         lambda: book.TransformerEncoder(**_TINY_TRANSFORMER),
         (2, 7), "int64", _by_order(lambda: zoo.transformer_encoder(**_TINY_TRANSFORMER),
                                    lambda: book.TransformerEncoder(**_TINY_TRANSFORMER), (2, 7), "int64")),
    # the book draws pos_embedding and the head's nn.Linear in its constructor, before the lazy layers
    Hand("vit", lambda: zoo.vit(**_TINY_VIT, emb_dropout=0.0, blk_dropout=0.0, num_classes=3),
         lambda: book.ViT(16, **_TINY_VIT, emb_dropout=0.0, blk_dropout=0.0, num_classes=3), (2, 3, 16, 16),
         to_hand=lambda n: book._vit_name(n, num_blks=1), same_draws=False),
]
HAND_IDS = [h.id for h in HANDS]
SAME_DRAWS = [h.id for h in HANDS if h.same_draws]
BY_HAND = {h.id: h for h in HANDS}


def _dry_run(h: Hand, seed: int | None = None) -> nn.Module:
    """The hand-built model after its own dry run (in eval mode, as the adapter's, so the dummy batch does not
    move the BatchNorm statistics)."""
    if seed is not None:
        torch.manual_seed(seed)
    net = h.hand()
    net.eval()
    with torch.no_grad():
        net(h.hand_input(h.data()))
    return net


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and statistics by torch's own names (a shared module once, at its first position)."""
    named = dict(net.named_parameters()) | dict(net.named_buffers())
    return {n: t for n, t in named.items() if not n.endswith("num_batches_tracked")}


def _load_hand(h: Hand, net: nn.Module, weights: dict[str, np.ndarray]) -> None:
    state = net.state_dict()
    with torch.no_grad():
        for name, w in weights.items():
            state[h.to_hand(name)].copy_(torch.from_numpy(w))


def _compiled(h: Hand, **kw) -> di.CompiledModel:  # type: ignore[no-untyped-def]
    model = di.compile(h.spec(), "torch")
    model.apply_init(h.data(), **kw)
    return model


def _no_lazy_left(net: nn.Module) -> None:
    assert not [n for n, m in net.named_modules() if isinstance(m, LazyModuleMixin)]
    tensors = list(net.parameters()) + list(net.buffers())
    assert not [t for t in tensors if isinstance(t, (UninitializedParameter, UninitializedBuffer)) or is_lazy(t)]


# ------------------------------------------------------------------------------------------ (a) names and shapes
@pytest.mark.parametrize("hid", HAND_IDS)
def test_native_names_and_shapes_equal_the_hand_built_dry_run(hid: str) -> None:
    h = BY_HAND[hid]
    report = _compiled(h).report
    hand = {n: tuple(t.shape) for n, t in _state(_dry_run(h)).items()}
    got = {h.to_hand(n): p.native_shape for n, p in report.params.items()}
    assert got == hand
    assert report.diff(di.infer_shapes(h.spec(), h.shape, dtype=h.dtype)) == []
    # a mirrored tree: torch's own names are the canonical ones, but for d2l's W_q... inside attention
    assert all(p.native_name == _native_name(n) for n, p in report.params.items())


def _native_name(name: str) -> str:
    return re.sub(r"\b(q|k|v|out)_(weight|bias)$", lambda m: f"W_{m[1][0]}.{m[2]}", name)


def test_bn_lenet_counts_as_in_d2l() -> None:
    report = _compiled(BY_HAND["bn_lenet"]).report
    assert report.trainable_params == 44_878 == sum(p.numel() for p in _dry_run(BY_HAND["bn_lenet"]).parameters())


@pytest.mark.parametrize("hid", SAME_DRAWS)
def test_default_init_with_a_key_is_torch_default_under_that_seed(hid: str) -> None:
    h = BY_HAND[hid]
    got = _compiled(h, key=7).export_weights()
    hand = _state(_dry_run(h, seed=7))
    for name, w in got.items():
        np.testing.assert_array_equal(w, hand[h.to_hand(name)].detach().numpy(), err_msg=name)


def test_a_key_neither_reads_nor_moves_the_global_rng() -> None:
    h = BY_HAND["mlp"]
    before = torch.get_rng_state()
    a, b = _compiled(h, key=1).export_weights(), _compiled(h, key=1).export_weights()
    assert torch.equal(before, torch.get_rng_state())
    assert all(np.array_equal(a[n], b[n]) for n in a)
    c = _compiled(h, key=2).export_weights()
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    gen = torch.Generator().manual_seed(1)  # torch's own key object seeds the same way
    assert np.array_equal(_compiled(h, key=gen).export_weights()["0.weight"], a["0.weight"])


def test_layer_norm_dim_is_torchs_own() -> None:
    # torch ships no lazy LayerNorm; ours infers its size in the dry run as LazyLinear does, then becomes the
    # plain nn.LayerNorm a hand-written model holds, so every shape in the report is torch's own
    model = _compiled(BY_HAND["embedding"])
    assert {n: p.source for n, p in model.report.params.items()} == {
        "0.weight": "native", "1.weight": "native", "1.bias": "native", "3.weight": "native", "3.bias": "native"}
    ln = model.native.get_submodule("1")
    assert type(ln) is torch.nn.LayerNorm and ln.normalized_shape == (model.report.params["1.weight"].shape[0],)


# ------------------------------------------------------------------------------------------ (b) outputs
@pytest.mark.parametrize("hid", HAND_IDS)
def test_outputs_equal_the_hand_built_model_with_the_same_weights(hid: str) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, init="xavier_uniform", key=3)
    hand = _dry_run(h)
    _load_hand(h, hand, model.export_weights())
    x = h.data(seed=5)
    y = model(x)
    assert isinstance(y, torch.Tensor)
    with torch.no_grad():
        want = hand(h.hand_input(x))
    np.testing.assert_allclose(model.to_numpy(y), want.numpy(), **TIGHT)


@pytest.mark.parametrize("hid", ["bn_lenet", "resnet", "inception_channels_last"])
def test_training_mode_outputs_and_statistics_equal_the_hand_built_model(hid: str) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, init="kaiming_uniform", key=1)
    hand = _dry_run(h)
    _load_hand(h, hand, model.export_weights())
    hand.train()
    for seed in (1, 2):
        x = h.data(seed=seed)
        y = model.to_numpy(model(x, training=True))
        np.testing.assert_allclose(y, hand(h.hand_input(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    hand_state = _state(hand)
    for name, w in model.export_weights().items():
        np.testing.assert_allclose(w, hand_state[h.to_hand(name)].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------ (c) BatchNorm rule
def test_batchnorm_training_updates_running_statistics_by_the_reference_rule() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3), di.BatchNorm(momentum=0.3, eps=1e-3), di.ReLU(), di.Flatten(),
                         di.Dense(5), di.BatchNorm(), di.Dense(2)])
    model = di.compile(spec, "torch")
    model.apply_init(np.zeros((6, 2, 5, 5), np.float32), init="xavier_normal", key=0)
    assert model.native[1].momentum == 0.3 and model.native[1].eps == 1e-3
    w = model.export_weights()
    w["1.running_mean"], w["1.running_var"] = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    model.load_weights(w)
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32)
    y = model.to_numpy(model(x, training=True))
    # the reference's kernels, step by step
    h = ops.conv(x, w["0.weight"], w["0.bias"], (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    conv_out = h
    h, m1, v1 = ops.batch_norm(h, 1, w["1.weight"], w["1.bias"], w["1.running_mean"], w["1.running_var"], 1e-3,
                               True, 0.3)
    h = np.maximum(h, 0).reshape(6, -1) @ w["4.weight"].T + w["4.bias"]
    h, m2, v2 = ops.batch_norm(h, 1, w["5.weight"], w["5.bias"], w["5.running_mean"], w["5.running_var"], 1e-5,
                               True, 0.1)
    np.testing.assert_allclose(y, h @ w["6.weight"].T + w["6.bias"], rtol=1e-4, atol=2e-5)
    got = model.export_weights()
    for name, want in (("1.running_mean", m1), ("1.running_var", v1), ("5.running_mean", m2), ("5.running_var", v2)):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    # and by hand: new = (1 - m) * old + m * batch, the variance unbiased (PyTorch's rule)
    c = conv_out.astype(np.float64)
    np.testing.assert_allclose(got["1.running_mean"], 0.7 * 0.5 + 0.3 * c.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(got["1.running_var"], 0.7 * 2.0 + 0.3 * c.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    # inference calls do not touch them
    model(x)
    assert all(np.array_equal(model.export_weights()[n], got[n]) for n in got)


def test_the_dry_run_leaves_batchnorm_statistics_at_their_initial_values() -> None:
    # d2l's own dry run runs in training mode and folds the dummy batch into the statistics; the adapter's
    # runs in eval mode, so apply_init gives torch's initial statistics whatever the dummy input.
    model = di.compile(_lenet_spec(), "torch")
    model.apply_init(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32) + 3)
    w = model.export_weights()
    for n in w:
        if n.endswith("running_mean"):
            assert not w[n].any()
        if n.endswith("running_var"):
            assert (w[n] == 1).all()
    assert all(int(m.num_batches_tracked) == 0 for m in model.native.modules() if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------------------------------ (d) gradients
@pytest.mark.parametrize("hid,training", [(i, False) for i in HAND_IDS] + [("bn_lenet", True),
                                                                          ("inception_channels_last", True)])
def test_gradients_equal_the_hand_built_models(hid: str, training: bool) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, init="xavier_uniform", key=4)
    hand = _dry_run(h)
    _load_hand(h, hand, model.export_weights())
    x = h.data(seed=9)
    grads = model.gradients(x, training=training)
    hand.train(training)
    hand(h.hand_input(x)).sum().backward()
    hand_params = dict(hand.named_parameters())
    assert set(grads) == {n for n, p in model.report.params.items() if p.trainable}
    for name, g in grads.items():
        assert g.dtype == np.float32 and g.shape == model.report.params[name].shape
        np.testing.assert_allclose(g, hand_params[h.to_hand(name)].grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    assert all(p.grad is None for p in model.native.parameters())  # no .grad left behind on the user's model


def test_gradients_match_the_reference_model_on_a_known_case() -> None:
    # d(sum(x @ W.T + b))/dW[i, j] = sum_n x[n, j]; /db[i] = N
    model = di.compile(di.LazyModel([di.Dense(3)]), "torch")
    model.apply_init(np.zeros((4, 5), np.float32))
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    g = model.gradients(x)
    np.testing.assert_allclose(g["0.weight"], np.tile(x.sum(axis=0), (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(g["0.bias"], np.full(3, 4.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------ (e) abstract init
@pytest.mark.parametrize("hid", HAND_IDS)
def test_abstract_init_gives_the_concrete_report_then_materializes_in_place(hid: str) -> None:
    h = BY_HAND[hid]
    model = di.compile(h.spec(), "torch")
    abstract = model.apply_init(di.ShapeDtype(h.shape, h.dtype), abstract=True)
    concrete = _compiled(h, key=5)
    assert abstract.diff(concrete.report) == []
    net = model.native
    assert all(t.is_meta for t in list(net.parameters()) + list(net.buffers()))
    _no_lazy_left(net)
    with pytest.raises(di.NotInitializedError):
        model(h.data())
    with pytest.raises(di.NotInitializedError):
        model.export_weights()
    model.materialize(key=5)
    assert model.native is net  # in place, no rebuild
    assert not any(t.is_meta for t in list(net.parameters()) + list(net.buffers()))
    _no_lazy_left(net)
    got, want = model.export_weights(), concrete.export_weights()
    for name in want:  # the same torch default init, drawn in the same order
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    x = h.data(seed=2)
    np.testing.assert_allclose(model.to_numpy(model(x)), concrete.to_numpy(concrete(x)), **TIGHT)


def test_abstract_init_then_portable_materialize_is_the_reference_init() -> None:
    case = BY_ID["concat"]
    model = di.compile(case.make(), "torch")
    model.apply_init(di.ShapeDtype(case.shape), abstract=True)
    model.materialize(init="xavier_uniform", key=3)
    ref = di.compile(case.make(), "numpy")
    ref.apply_init(case.data(), init="xavier_uniform", key=3)
    want = ref.export_weights()
    got = model.export_weights()
    assert all(np.array_equal(got[n], want[n]) for n in want)
    x = case.data(seed=1)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_abstract_init_of_1_6e9_parameters_allocates_nothing() -> None:
    warm = di.compile(di.LazyModel([di.Dense(4)]), "torch")  # the first meta run imports torch's meta kernels
    warm.apply_init(di.ShapeDtype((1, 3)), abstract=True)
    spec = di.LazyModel([di.Dense(8192, activation="relu") for _ in range(24)])
    model = di.compile(spec, "torch")
    before = _rss_mb()
    report = model.apply_init(di.ShapeDtype((1, 8192)), abstract=True)
    assert report.total_params == 24 * (8192 * 8192 + 8192)  # 6.4 GB of float32 if it were allocated
    assert _rss_mb() - before < 64
    assert all(p.is_meta for p in model.native.parameters())
    assert report.params["23.weight"].native_shape == (8192, 8192)


def test_varying_dims_are_inferred_on_meta_even_for_a_concrete_init() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, stride=2, padding="same"), di.Conv2D(4, 3), di.GlobalAvgPool2D(),
                         di.Dense(2)])
    model = di.compile(spec, "torch")
    # a stand-in size of 1 for the None dims would not fit the second 3x3 window
    report = model.apply_init(di.ShapeDtype((None, 3, None, None)), key=0)
    assert report.output_shape == (None, 2) and report.params["1.weight"].native_shape == (4, 4, 3, 3)
    other = di.compile(spec, "torch")
    other.apply_init(np.zeros((1, 3, 9, 9), np.float32), key=0)
    assert all(np.array_equal(a, other.export_weights()[n]) for n, a in model.export_weights().items())
    assert model.to_numpy(model(np.zeros((3, 3, 17, 9), np.float32))).shape == (3, 2)


# ------------------------------------------------------------------------------------------ (f) lazy leftovers
@pytest.mark.parametrize("hid", HAND_IDS)
def test_no_lazy_modules_or_uninitialized_tensors_after_apply_init(hid: str) -> None:
    h = BY_HAND[hid]
    model = di.compile(h.spec(), "torch")
    lazy = [m for m in model.native.modules() if isinstance(m, LazyModuleMixin)]
    assert lazy and all(m.has_uninitialized_params() for m in lazy)
    model.apply_init(h.data())
    _no_lazy_left(model.native)


def test_before_init_the_native_model_is_torchs_own_lazy_model() -> None:
    model = di.compile(_lenet_spec(), "torch")
    kinds = [type(m).__name__ for m in model.native]
    assert kinds[:2] == ["LazyConv2d", "LazyBatchNorm2d"] and "LazyLinear" in kinds and "LazyBatchNorm1d" in kinds
    assert isinstance(model.native[0].weight, UninitializedParameter)
    model.apply_init(np.zeros((1, 1, 28, 28), np.float32))
    assert [type(m).__name__ for m in model.native][:2] == ["Conv2d", "BatchNorm2d"]


# ------------------------------------------------------------------------------------------ (g) torch's own tools
def test_native_model_works_with_torchs_own_tools() -> None:
    h = BY_HAND["bn_lenet"]
    model = _compiled(h, init="xavier_uniform", key=0)
    net = model.native
    assert type(net) is nn.Sequential
    # state_dict: canonical names (plus torch's own num_batches_tracked), loadable into the hand-built model
    state = net.state_dict()
    assert {n for n in state if not n.endswith("num_batches_tracked")} == set(model.report.params)
    hand = _dry_run(h)
    hand.load_state_dict(state)
    x = h.data(seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(hand(torch.from_numpy(x)).numpy(), model.to_numpy(model(x)), **TIGHT)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = _compiled(h, key=9)
    fresh.native.load_state_dict(torch.load(buf))
    assert all(np.array_equal(a, model.export_weights()[n]) for n, a in fresh.export_weights().items())
    assert sum(p.numel() for p in net.parameters()) == model.report.trainable_params
    clone = copy.deepcopy(net).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(clone(torch.from_numpy(x)).numpy(), model.to_numpy(model(x)))
    # an optimizer on the native parameters moves the canonical weights
    before = model.export_weights()
    grads = model.gradients(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.zero_grad()
    net.eval()
    net(torch.from_numpy(x)).sum().backward()
    opt.step()
    after = model.export_weights()
    np.testing.assert_allclose(after["0.weight"], before["0.weight"] - 0.1 * grads["0.weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case_id", ["conv_options", "channels_last", "concat"])
def test_native_model_traces_with_torch_fx(case_id: str) -> None:
    case = BY_ID[case_id]  # strided "same" pads, permutes, Concat and Residual modules
    model = di.compile(case.make(), "torch")
    model.apply_init(case.data(), init="xavier_uniform", key=0)
    traced = torch.fx.symbolic_trace(model.native)
    for batch in (2, 3):
        x = case.data(seed=batch, batch=batch)
        with torch.no_grad():
            np.testing.assert_array_equal(traced(torch.from_numpy(x)).numpy(), model.to_numpy(model(x)))
    buf = io.BytesIO()
    torch.save(model.native, buf)  # the whole module pickles (its few classes are importable)
    buf.seek(0)
    x = torch.from_numpy(case.data(seed=1))
    assert torch.equal(torch.load(buf, weights_only=False)(x), model(x))


# ------------------------------------------------------------------------------------------ torch-specific behaviour
def test_tied_layer_is_one_module_as_in_d2l() -> None:
    h = BY_HAND["tied"]
    model = _compiled(h)
    net = model.native
    assert net[2] is net[4]
    assert len(list(net.parameters())) == 6
    with torch.no_grad():
        net[2].weight[0, 0] = 100.0
    assert net[4].weight[0, 0] == 100.0 and model.export_weights()["2.weight"][0, 0] == 100.0


def init_normal(module: nn.Module) -> None:  # d2l's
    if type(module) is nn.Linear:  # d2l writes ==
        nn.init.normal_(module.weight, mean=0, std=0.01)
        nn.init.zeros_(module.bias)


def check_init_functions_like_net_apply(h: Hand) -> None:
    """The MLP's ``apply_init(init=fn, key=3)`` against the hand-built dry run under seed 3, then ``fn`` applied by
    hand: d2l's module function with ``net.apply``, a ``torch.nn.init`` function on each Linear's weight."""
    for init in (init_normal, nn.init.xavier_uniform_):
        got = _compiled(h, init=init, key=3).export_weights()
        hand = _dry_run(h, seed=3)
        with torch.no_grad():
            if init is init_normal:
                hand.apply(init_normal)
            else:
                for m in (hand[0], hand[2]):
                    nn.init.xavier_uniform_(m.weight)
        for name, w in _state(hand).items():
            np.testing.assert_array_equal(got[name], w.detach().numpy(), err_msg=name)


def test_init_functions_are_applied_like_net_apply() -> None:
    h = BY_HAND["mlp"]
    check_init_functions_like_net_apply(h)
    model = di.compile(h.spec(), "torch")
    model.apply_init(di.ShapeDtype(h.shape), abstract=True)
    model.materialize(init=init_normal, key=0)
    assert model.export_weights()["0.bias"].tolist() == [0.0] * 256
    with pytest.raises(di.SpecError, match="torch backend expected"):
        model.apply_init(h.data(), init=3)


def test_mode_switches_only_when_the_mode_changes() -> None:
    model = _compiled(BY_HAND["bn_lenet"])
    net = model.native
    calls = []
    original = net.train
    net.train = lambda mode=True: calls.append(mode) or original(mode)  # type: ignore[method-assign]
    x = BY_HAND["bn_lenet"].data()
    model(x)
    model(x)
    assert calls == []
    model(x, training=True)
    model(x, training=True)
    assert calls == [True] and net[1].training
    model(x)
    assert calls == [True, False] and not net[1].training


def test_native_tensors_in_and_out_keep_autograd() -> None:
    model = _compiled(BY_HAND["mlp"])
    x = torch.randn(3, 20, requires_grad=True)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (3, 20)
    y64 = model(x.detach().double())  # other float dtypes are taken as float32, as numpy inputs are
    assert y64.dtype == torch.float32
    np.testing.assert_allclose(model.to_numpy(y64), model.to_numpy(y), **TIGHT)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(Dense\)"):
        model(torch.zeros(3, 7))
    with pytest.raises(di.DTypeError):
        model(torch.zeros(3, 20, dtype=torch.bool))
    emb = _compiled(BY_HAND["embedding"])
    idx = BY_HAND["embedding"].data()
    for dtype in (np.uint8, np.int32, np.int64):
        np.testing.assert_array_equal(emb.to_numpy(emb(idx.astype(dtype))), emb.to_numpy(emb(idx)))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_intermediates_equal_the_reference_backend(case_id: str) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), "torch")
    model.apply_init(case.data(), init="xavier_uniform", key=2)
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(model.export_weights(), input_shape=case.shape)
    x = case.data(seed=4)
    got, want = model.intermediates(x), ref.intermediates(x)
    assert list(got) == list(want) and set(got) == set(model.report.layers)
    for path in want:
        assert got[path].dtype == np.float32
        np.testing.assert_allclose(got[path], want[path], rtol=2e-4, atol=2e-5, err_msg=path)


def test_channels_last_permutes_only_where_the_layout_changes() -> None:
    model = di.compile(BY_ID["channels_last"].make(), "torch")
    names = list(model.native._modules)
    # Conv+ReLU, BatchNorm and MaxPool share one permute pair; Dense/Flatten run in the spec's layout
    assert names[:6] == ["0:to_cf", "0", "0:relu", "1", "2", "3:to_spec"]


def test_strided_and_asymmetric_same_padding_match_hand_derived_pads() -> None:
    spec = di.LazyModel([di.Conv1D(2, 4, padding="same"), di.Conv1D(3, 3, stride=3, padding="same")])
    model = di.compile(spec, "torch")
    model.apply_init(np.zeros((1, 2, 10), np.float32), init="xavier_uniform", key=0)
    w = model.export_weights()
    c1, c2 = nn.Conv1d(2, 2, 4), nn.Conv1d(2, 3, 3, stride=3)
    nn.Sequential(c1, c2).load_state_dict({n: torch.from_numpy(a) for n, a in w.items()})
    x = torch.randn(1, 2, 10)
    # k=4 stride 1: total 3 -> (1, 2); k=3 stride 3 on 10: out 4, total (4-1)*3+3-10 = 2 -> (1, 1)
    want = c2(F.pad(c1(F.pad(x, (1, 2))), (1, 1)))
    np.testing.assert_allclose(model.to_numpy(model(x)), want.detach().numpy(), **TIGHT)


def test_batchnorm_rank_is_torchs_and_a_rank_change_is_named() -> None:
    model = di.compile(di.LazyModel([di.Dense(5), di.BatchNorm()]), "torch")
    model.apply_init(np.zeros((4, 3), np.float32))
    assert type(model.native[1]) is nn.BatchNorm1d
    # BatchNorm1d would take (N, C, L) too, but a BatchNorm's rank is fixed at init on every backend (the shared rule)
    for shape in ((4, 5, 3), (2, 5, 3, 3)):
        with pytest.raises(di.ShapeMismatchError, match=r"layer '1' \(BatchNorm\) expected a rank-2 input"):
            model(np.zeros(shape, np.float32))
    bn = di.BatchNorm()
    shared = di.compile(di.LazyModel([di.Conv2D(4, 1), bn, di.Flatten(), bn]), "torch")
    with pytest.raises(di.UnsupportedLayerError, match=r"layer '3' \(BatchNorm\) on backend torch"):
        shared.apply_init(np.zeros((2, 4, 1, 1), np.float32))
    assert not shared.initialized


def test_layer_names_torch_reserves_still_work() -> None:
    spec = di.LazyModel([di.Dense(4, name="forward"), di.Concat([di.Dense(2, name="dim"), di.Dense(3, name="eval")],
                                                                name="training")])
    model = di.compile(spec, "torch")
    report = model.apply_init(np.zeros((2, 3), np.float32), init="normal", key=0)
    assert report.params["training.dim.weight"].native_name == "training~.dim~.weight"
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=(2, 3))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=1e-5, atol=1e-6)


def test_forward_is_the_native_module_and_nothing_more() -> None:
    # zero overhead by construction: a plain nn.Sequential of torch's own modules, each run once per call
    # (timings on a shared 2-core machine are too noisy to assert; measured: 24 us vs 20 us for this MLP)
    model = _compiled(BY_HAND["mlp"])
    net = model.native
    assert type(net) is nn.Sequential and all(type(m).__module__.startswith("torch.nn.") for m in net)
    calls: list[str] = []
    for name, m in net.named_modules():
        m.register_forward_pre_hook(lambda mod, args, name=name: calls.append(name))
    x = torch.randn(2, 20)
    y = model(x)
    assert calls == ["", "0", "1", "2"]
    calls.clear()
    assert torch.equal(net(x), y) and calls == ["", "0", "1", "2"]


# ------------------------------------------------------------------------------------------ sequence layers
SEQ_CASES = [
    Case("rnn_tanh_bi", lambda: di.LazyModel([di.RNN(6, bidirectional=True), di.Dense(3)]), (2, 5, 4)),
    Case("rnn_relu_deep_no_bias", lambda: di.LazyModel([di.RNN(6, activation="relu", num_layers=2, use_bias=False)]),
         (2, 5, 4)),
    Case("gru_deep_bi_dropout", lambda: di.LazyModel([di.GRU(5, num_layers=2, bidirectional=True, dropout=0.3)]),
         (3, 6, 4)),
    Case("lstm_one_hot", lambda: di.LazyModel([di.OneHot(50), di.LSTM(6, num_layers=2), di.Dense(5)]), (2, 6),
         "int64"),
    Case("attention", lambda: di.LazyModel([di.Dense(8), di.MultiHeadAttention(8, 2, use_bias=True),
                                            di.MultiHeadAttention(8, 1), di.LayerNorm()]), (2, 5, 3)),
    Case("tokens", lambda: di.LazyModel([di.Embedding(50, 8), di.Scale(2.0), di.PositionalEncoding(max_len=10),
                                         di.ClassToken(), di.PositionEmbedding(), di.Take(0), di.Dense(2)]),
         (2, 6), "int64"),
    Case("patches", lambda: di.LazyModel([di.Conv2D(4, 2, stride=2), di.Reshape((4, -1)), di.Permute((2, 1)),
                                          di.Reshape((-1,)), di.Dense(3)]), (2, 3, 6, 6)),
    # channels_last: permutes around the channels-first torch modules, none around the sequence layers
    Case("sequence_channels_last", lambda: di.LazyModel([
        di.Conv1D(4, 3, padding=1), di.GRU(5), di.BatchNorm(), di.Permute((2, 1)), di.Take(1, axis=2), di.Dense(2)],
        data_format="channels_last"), (2, 7, 3)),
    Case("patches_channels_last", lambda: di.LazyModel([
        di.Conv2D(4, 2, stride=2), di.Reshape((-1, 4)), di.ClassToken(), di.MultiHeadAttention(4, 2), di.Take(0),
        di.Dense(2)], data_format="channels_last"), (2, 6, 6, 3)),
]
SEQ = {c.id: c for c in SEQ_CASES}
_STOCHASTIC_OR_BN = {"gru_deep_bi_dropout", "sequence_channels_last"}


@pytest.mark.parametrize("case_id", list(SEQ))
def test_sequence_layers_equal_the_reference(case_id: str) -> None:
    case = SEQ[case_id]
    model = di.compile(case.make(), "torch")
    report = model.apply_init(case.data(), init="xavier_uniform", key=3)
    assert report.diff(di.infer_shapes(case.make(), case.shape, dtype=case.dtype)) == []
    # torch deferred every dim itself (LayerNorm through our LazyLayerNorm, torch having no lazy form of it)
    assert all(p.source == "native" for p in report.params.values())
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(model.export_weights(), input_shape=di.ShapeDtype(case.shape, case.dtype))
    x = case.data(seed=7, batch=3)
    np.testing.assert_allclose(model.to_numpy(model(x)), ref(x), rtol=2e-4, atol=2e-5)
    got, want = model.intermediates(x), ref.intermediates(x)
    assert list(got) == list(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=2e-4, atol=2e-5, err_msg=path)
    if case_id not in _STOCHASTIC_OR_BN:  # no dropout, no batch statistics: training mode computes the same
        np.testing.assert_allclose(model.to_numpy(model(x, training=True)), ref(x), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("case_id", [c for c in SEQ if c not in _STOCHASTIC_OR_BN])
def test_sequence_gradients_agree_with_the_reference_by_finite_differences(case_id: str) -> None:
    # the directional derivative of sum(reference(x)) along a random direction v, by central differences
    # (float64 sums of the float32 reference), against sum(gradient * v) from torch's autograd
    case = SEQ[case_id]
    model = di.compile(case.make(), "torch")
    model.apply_init(case.data(), init="xavier_uniform", key=5)
    x = case.data(seed=2)
    grads = model.gradients(x)
    w = model.export_weights()
    rng = np.random.default_rng(0)
    v = {n: rng.standard_normal(g.shape) for n, g in grads.items()}
    norm = np.sqrt(sum(float((d ** 2).sum()) for d in v.values()))
    v = {n: (d / norm).astype(np.float32) for n, d in v.items()}  # a unit direction: small steps, few ReLU kinks
    ref = di.compile(case.make(), "numpy")

    def f(eps: float) -> float:
        ref.load_weights({n: a + np.float32(eps) * v[n] if n in v else a for n, a in w.items()},
                         input_shape=di.ShapeDtype(case.shape, case.dtype))
        return float(ref(x).astype(np.float64).sum())

    eps = 1e-3
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = sum(float((grads[n].astype(np.float64) * v[n]).sum()) for n in grads)
    assert abs(numeric - analytic) <= 1e-2 * max(1.0, abs(analytic)), (numeric, analytic)


@pytest.mark.parametrize("kind,cls", [("RNN", nn.RNN), ("GRU", nn.GRU), ("LSTM", nn.LSTM)])
def test_recurrent_layers_are_deferred_by_torch_and_become_its_own_modules(kind: str, cls: type) -> None:
    spec = lambda: di.LazyModel([getattr(di, kind)(5, num_layers=2, bidirectional=True)])  # noqa: E731
    before = torch.get_rng_state()
    model = di.compile(spec(), "torch")
    lazy = model.native[0]
    assert torch.equal(before, torch.get_rng_state())  # built on meta: nothing drawn, nothing allocated
    assert isinstance(lazy, LazyModuleMixin) and lazy.input_size == 0 and lazy.batch_first
    assert all(isinstance(p, UninitializedParameter) for p in lazy.parameters())
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    model.apply_init(x, key=11)
    net = model.native[0]
    assert type(net) is cls and net.input_size == 4 and net.batch_first and net.bidirectional
    assert all(a is getattr(net, n) for a, n in zip(net._flat_weights, net._flat_weights_names))
    torch.manual_seed(11)  # torch's default init of the same module, under the same seed
    hand = cls(4, 5, 2, batch_first=True, bidirectional=True)
    assert [(n, tuple(p.shape)) for n, p in hand.named_parameters()] == \
        [(n, p.native_shape) for n, p in ((n.partition(".")[2], p) for n, p in model.report.params.items())]
    for name, w in model.export_weights().items():
        np.testing.assert_array_equal(w, getattr(hand, name.partition(".")[2]).detach().numpy(), err_msg=name)
    with torch.no_grad():
        np.testing.assert_array_equal(model.to_numpy(model(x)), hand(torch.from_numpy(x))[0].numpy())
    # abstract, then materialized in place: torch's RNNBase refreshes its flat weight list on to_empty
    abstract = di.compile(spec(), "torch")
    abstract.apply_init(di.ShapeDtype((2, 3, 4)), abstract=True)
    assert type(abstract.native[0]) is cls and all(p.is_meta for p in abstract.native.parameters())
    abstract.materialize(key=11)
    net = abstract.native[0]
    assert all(a is getattr(net, n) and not a.is_meta for a, n in zip(net._flat_weights, net._flat_weights_names))
    np.testing.assert_array_equal(abstract.to_numpy(abstract(x)), model.to_numpy(model(x)))


def test_attention_and_token_layers_are_deferred_by_torch() -> None:
    spec = lambda: di.LazyModel([di.Dense(6), di.PositionalEncoding(max_len=8), di.ClassToken(),  # noqa: E731
                                 di.PositionEmbedding(), di.MultiHeadAttention(6, 3, use_bias=True)])
    model = di.compile(spec(), "torch")
    net = model.native
    assert [type(m) for m in net][1:4] == [LazySinusoidalEncoding, LazyClassToken, LazyPositionEmbedding]
    assert type(net[4].W_q) is nn.LazyLinear and isinstance(net[3].weight, UninitializedParameter)
    report = model.apply_init(np.zeros((2, 5, 3), np.float32), key=4)
    net = model.native  # apply_init builds a fresh native model and runs its dry run
    assert [type(m) for m in net][1:4] == [SinusoidalEncoding, ClassTokenModule, PositionEmbeddingModule]
    assert type(net[4].W_q) is nn.Linear and net[4].W_q.in_features == 6
    assert report.params["3.weight"].native_shape == (1, 6, 6)  # T = 5 steps + the class token
    assert report.params["4.out_bias"].native_name == "4.W_o.bias"
    assert set(net.state_dict()) == {_native_name(n) for n in report.params}  # the sine table is not saved
    np.testing.assert_allclose(net[1].P[0, :8].numpy(), ops.sinusoidal(8, 6), rtol=1e-6, atol=1e-7)
    w = model.export_weights()
    assert not w["2.weight"].any()  # d2l's cls_token: zeros
    torch.manual_seed(4)  # d2l's pos_embedding: torch.randn, drawn after the first Dense's weight and bias
    nn.LazyLinear(6)(torch.zeros(1, 3))
    np.testing.assert_array_equal(w["3.weight"], torch.randn(1, 6, 6).numpy())
    # the attention's state_dict is d2l's MultiHeadAttention's
    d2l_mha = book.MultiHeadAttention(6, 3, 0.0, bias=True)
    x = torch.randn(2, 6, 6)
    d2l_mha(x, x, x)
    d2l_mha.load_state_dict({k.partition(".")[2]: t for k, t in net.state_dict().items() if k.startswith("4.")})
    with torch.no_grad():
        np.testing.assert_allclose(net[4](x).numpy(), d2l_mha(x, x, x).numpy(), **TIGHT)


def test_init_functions_reach_recurrent_and_attention_weights() -> None:
    def init_seq2seq(module: nn.Module) -> None:  # d2l's, for its encoder-decoder models
        if type(module) is nn.Linear:
            nn.init.xavier_uniform_(module.weight)
        if type(module) is nn.GRU:
            for param in module._flat_weights_names:
                if "weight" in param:
                    nn.init.xavier_uniform_(module._parameters[param])

    h = BY_HAND["gru_lm"]
    got = _compiled(h, init=init_seq2seq, key=2).export_weights()
    hand = _dry_run(h, seed=2)
    with torch.no_grad():
        hand.apply(init_seq2seq)
    hand_state = _state(hand)
    for name, w in got.items():
        np.testing.assert_array_equal(w, hand_state[h.to_hand(name)].detach().numpy(), err_msg=name)
    model = di.compile(di.LazyModel([di.GRU(4, bidirectional=True), di.MultiHeadAttention(8, 2, use_bias=True)]),
                       "torch")
    model.apply_init(np.ones((2, 3, 5), np.float32), init=nn.init.zeros_, key=0)
    w = model.export_weights()
    assert all(not w[n].any() for n in w if "weight" in n)  # every weight matrix, recurrent and attention
    assert all(w[n].any() for n in w if "bias" in n)  # the biases keep torch's default init


def test_varying_dims_get_the_smallest_stand_in_the_rules_accept() -> None:
    # a recurrent layer's meta dry run costs per step, and PositionalEncoding refuses more than max_len steps:
    # a (None, None) token input is dry-run with the smallest power of two that the rules accept
    seen: list[tuple] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(tuple(args[0].shape)) if isinstance(m, (LazyGRU, nn.GRU)) else None)
    try:
        model = di.compile(zoo.rnn_lm("gru"), "torch")
        model.apply_init(di.ShapeDtype((None, None), "int64"), key=0)
    finally:
        hook.remove()
    assert seen == [(1, 1, 28)]
    enc = di.compile(zoo.transformer_encoder(num_blks=1), "torch")
    enc.apply_init(di.ShapeDtype((None, None), "int64"), key=0)
    assert enc.to_numpy(enc(np.zeros((3, 1000), np.int64))).shape == (3, 1000, 24)  # max_len steps
    with pytest.raises(di.ShapeMismatchError, match=r"\(PositionalEncoding\).*at most max_len=1000 steps"):
        enc(np.zeros((1, 1001), np.int64))


@pytest.mark.parametrize("hid", ["gru_lm", "transformer", "vit"])
def test_sequence_models_trace_with_torch_fx_and_pickle(hid: str) -> None:
    h = BY_HAND[hid]
    model = _compiled(h, key=0)
    traced = torch.fx.symbolic_trace(model.native)
    x = torch.from_numpy(h.data(seed=1))
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    buf = io.BytesIO()
    torch.save(model.native, buf)
    buf.seek(0)
    with torch.no_grad():
        assert torch.equal(torch.load(buf, weights_only=False)(x), model(x))


def test_dropout_inside_recurrent_and_attention_layers_is_torchs_in_training_mode() -> None:
    # no reference exists for it (the parity tests compare inference only); torch's own dropout acts
    model = di.compile(di.LazyModel([di.GRU(16, num_layers=2, dropout=0.5), di.MultiHeadAttention(16, 2, dropout=0.5)]),
                       "torch")
    x = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)
    model.apply_init(x, key=0)
    assert model.native[0].dropout == 0.5 and model.native[2].dropout.p == 0.5  # [1] is "0:output"
    a, b = model.to_numpy(model(x, training=True)), model.to_numpy(model(x, training=True))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.to_numpy(model(x)), model.to_numpy(model(x)))
