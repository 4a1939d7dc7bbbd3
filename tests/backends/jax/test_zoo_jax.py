"""The zoo on JAX against the d2l book's models written by hand in Flax linen, in the book's JAX idiom.

Every model of ``zoo.MODELS`` is built as the book's JAX chapters build it (``nn.Sequential`` of ``nn.Conv``
and ``nn.Dense`` on NHWC images, the book's ``Residual``, ``Inception``, ``DenseBlock``, ``ResNeXtBlock``,
``MultiHeadAttention``, ``ViT`` as Flax modules, recurrent layers as ``nn.scan`` over Flax's cells) but with
the PyTorch chapters' architecture, which the spec follows where the book's JAX code differs: BN-LeNet's
convolutions are VALID (the JAX chapter leaves them at Flax's SAME: 108,238 parameters instead of 44,878),
DenseNet's transition channels accumulate (the JAX chapter's do not: 700,586 instead of 758,226),
convolutions pad as PyTorch's do (``padding=1``, not ``'same'``, which pads strided convolutions
differently), LayerNorm's epsilon is 1e-5 (Flax's default is 1e-6), and Flatten takes PyTorch's (C, H, W)
order (the JAX chapters flatten NHWC data as (H, W, C): the same count, the next Dense's rows permuted).

Each hand-built model is initialized by Flax's own ``init`` (traced by ``jax.eval_shape``: shapes only), and
the test lists its parameterized modules in the order its forward pass first calls them (Flax's
``intercept_methods``), translated to canonical layouts by the test's own layout knowledge. The deferinit report
on jax must count what Flax counts and list the same shapes, and agree with ``di.infer_shapes``. Flax's cells
hold one bias per gate where PyTorch has two (``b_ih + b_hh``; the GRU's n gate keeps both), so for the
language models the report's PyTorch count exceeds Flax's by exactly those folded halves, which the native
model does not hold either. Where cheap, the same weights give the same outputs.
Collected only when the jax backend is selected (see conftest.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deferinit as di
from deferinit import zoo

KEY = jax.random.PRNGKey(0)
ABSTRACT = {"alexnet", "vgg11"}  # 4.7e7 and 1.3e8 parameters: shapes only, on both sides
RUN = {"mlp", "lenet", "bn_lenet", "nin", "rnn_lm", "gru_lm", "lstm_lm", "deep_gru_lm", "bi_lstm_lm",
       "transformer_encoder", "vit"}  # the same weights give the same outputs (ResNet-18 in its own test)


# ------------------------------------------------------------------------------------------ the book's CNNs
def _flatten(x: Any) -> Any:  # PyTorch's (C, H, W) order, as the spec flattens
    return jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)


def _max_pool(k: int, s: int, p: int = 0) -> Callable:
    return lambda x: nn.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))


def _avg_pool(x: Any) -> Any:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _global_avg_pool(x: Any) -> Any:
    return nn.avg_pool(x, window_shape=x.shape[1:3]).reshape(x.shape[0], -1)


def _bn() -> nn.Module:
    return nn.BatchNorm(use_running_average=True)  # d2l: nn.BatchNorm(not self.training)


def mlp() -> nn.Module:
    return nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)])


def lenet() -> nn.Module:
    return nn.Sequential([
        nn.Conv(6, (5, 5), padding="SAME"), nn.sigmoid, _avg_pool, nn.Conv(16, (5, 5), padding="VALID"), nn.sigmoid,
        _avg_pool, _flatten, nn.Dense(120), nn.sigmoid, nn.Dense(84), nn.sigmoid, nn.Dense(10)])


def bn_lenet() -> nn.Module:
    return nn.Sequential([
        nn.Conv(6, (5, 5), padding="VALID"), _bn(), nn.sigmoid, _avg_pool,
        nn.Conv(16, (5, 5), padding="VALID"), _bn(), nn.sigmoid, _avg_pool, _flatten,
        nn.Dense(120), _bn(), nn.sigmoid, nn.Dense(84), _bn(), nn.sigmoid, nn.Dense(10)])


def alexnet() -> nn.Module:
    return nn.Sequential([
        nn.Conv(96, (11, 11), strides=4, padding=1), nn.relu, _max_pool(3, 2),
        nn.Conv(256, (5, 5), padding=2), nn.relu, _max_pool(3, 2),
        nn.Conv(384, (3, 3), padding=1), nn.relu, nn.Conv(384, (3, 3), padding=1), nn.relu,
        nn.Conv(256, (3, 3), padding=1), nn.relu, _max_pool(3, 2), _flatten,
        nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=True), nn.Dense(4096), nn.relu,
        nn.Dropout(0.5, deterministic=True), nn.Dense(10)])


def vgg_block(num_convs: int, out_channels: int) -> nn.Module:
    layers: list = []
    for _ in range(num_convs):
        layers += [nn.Conv(out_channels, (3, 3), padding=1), nn.relu]
    return nn.Sequential(layers + [_max_pool(2, 2)])


def vgg11() -> nn.Module:
    arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    return nn.Sequential([vgg_block(*b) for b in arch] + [
        _flatten, nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=True), nn.Dense(4096), nn.relu,
        nn.Dropout(0.5, deterministic=True), nn.Dense(10)])


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Module:
    return nn.Sequential([
        nn.Conv(out_channels, (kernel_size, kernel_size), strides=strides, padding=padding), nn.relu,
        nn.Conv(out_channels, (1, 1)), nn.relu, nn.Conv(out_channels, (1, 1)), nn.relu])


def nin() -> nn.Module:
    return nn.Sequential([
        nin_block(96, 11, 4, 0), _max_pool(3, 2), nin_block(256, 5, 1, 2), _max_pool(3, 2),
        nin_block(384, 3, 1, 1), _max_pool(3, 2), nn.Dropout(0.5, deterministic=True), nin_block(10, 3, 1, 1),
        _global_avg_pool])


class Inception(nn.Module):
    c1: int
    c2: tuple
    c3: tuple
    c4: int

    def setup(self) -> None:
        self.b1_1 = nn.Conv(self.c1, (1, 1))
        self.b2_1 = nn.Conv(self.c2[0], (1, 1))
        self.b2_2 = nn.Conv(self.c2[1], (3, 3), padding=1)
        self.b3_1 = nn.Conv(self.c3[0], (1, 1))
        self.b3_2 = nn.Conv(self.c3[1], (5, 5), padding=2)
        self.b4_1 = _max_pool(3, 1, 1)
        self.b4_2 = nn.Conv(self.c4, (1, 1))

    def __call__(self, x: Any) -> Any:
        b1 = nn.relu(self.b1_1(x))
        b2 = nn.relu(self.b2_2(nn.relu(self.b2_1(x))))
        b3 = nn.relu(self.b3_2(nn.relu(self.b3_1(x))))
        b4 = nn.relu(self.b4_2(self.b4_1(x)))
        return jnp.concatenate((b1, b2, b3, b4), axis=-1)


def googlenet() -> nn.Module:
    b1 = nn.Sequential([nn.Conv(64, (7, 7), strides=2, padding=3), nn.relu, _max_pool(3, 2, 1)])
    b2 = nn.Sequential([nn.Conv(64, (1, 1)), nn.relu, nn.Conv(192, (3, 3), padding=1), nn.relu, _max_pool(3, 2, 1)])
    b3 = nn.Sequential([Inception(64, (96, 128), (16, 32), 32), Inception(128, (128, 192), (32, 96), 64),
                        _max_pool(3, 2, 1)])
    b4 = nn.Sequential([Inception(192, (96, 208), (16, 48), 64), Inception(160, (112, 224), (24, 64), 64),
                        Inception(128, (128, 256), (24, 64), 64), Inception(112, (144, 288), (32, 64), 64),
                        Inception(256, (160, 320), (32, 128), 128), _max_pool(3, 2, 1)])
    b5 = nn.Sequential([Inception(256, (160, 320), (32, 128), 128), Inception(384, (192, 384), (48, 128), 128),
                        _global_avg_pool])
    return nn.Sequential([b1, b2, b3, b4, b5, nn.Dense(10)])


class Residual(nn.Module):
    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1

    def setup(self) -> None:
        self.conv1 = nn.Conv(self.num_channels, (3, 3), padding=1, strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, (3, 3), padding=1)
        self.conv3 = nn.Conv(self.num_channels, (1, 1), strides=self.strides) if self.use_1x1conv else None
        self.bn1, self.bn2 = _bn(), _bn()

    def __call__(self, X: Any) -> Any:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return nn.relu(Y + X)


def _stem(channels: int = 64) -> nn.Module:
    return nn.Sequential([nn.Conv(channels, (7, 7), strides=2, padding=3), _bn(), nn.relu, _max_pool(3, 2, 1)])


def resnet18() -> nn.Module:
    stages = [nn.Sequential([Residual(c, use_1x1conv=True, strides=2) if j == 0 and i != 0 else Residual(c)
                             for j in range(n)]) for i, (n, c) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512)))]
    return nn.Sequential([_stem(), *stages, _global_avg_pool, nn.Dense(10)])


class ConvBlock(nn.Module):
    num_channels: int

    @nn.compact
    def __call__(self, X: Any) -> Any:
        Y = nn.Conv(self.num_channels, (3, 3), padding=1)(nn.relu(_bn()(X)))
        return jnp.concatenate((X, Y), axis=-1)


class DenseBlock(nn.Module):
    num_convs: int
    num_channels: int

    def setup(self) -> None:
        self.net = [ConvBlock(self.num_channels) for _ in range(self.num_convs)]

    def __call__(self, X: Any) -> Any:
        for blk in self.net:
            X = blk(X)
        return X


class TransitionBlock(nn.Module):
    num_channels: int

    @nn.compact
    def __call__(self, X: Any) -> Any:
        return _avg_pool(nn.Conv(self.num_channels, (1, 1))(nn.relu(_bn()(X))))


def densenet(num_channels: int = 64, growth_rate: int = 32, arch: tuple = (4, 4, 4, 4)) -> nn.Module:
    layers: list = [_stem()]
    for i, num_convs in enumerate(arch):
        layers.append(DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate  # the PyTorch chapter's count (the JAX chapter's never grows)
        if i != len(arch) - 1:
            num_channels //= 2
            layers.append(TransitionBlock(num_channels))
    return nn.Sequential(layers + [_bn(), nn.relu, _global_avg_pool, nn.Dense(10)])


class ResNeXtBlock(nn.Module):
    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: int = 1

    def setup(self) -> None:
        bot = int(round(self.num_channels * self.bot_mul))
        self.conv1 = nn.Conv(bot, (1, 1))
        self.conv2 = nn.Conv(bot, (3, 3), strides=self.strides, padding=1, feature_group_count=bot // self.groups)
        self.conv3 = nn.Conv(self.num_channels, (1, 1))
        self.bn1, self.bn2, self.bn3 = _bn(), _bn(), _bn()
        if self.use_1x1conv:
            self.conv4, self.bn4 = nn.Conv(self.num_channels, (1, 1), strides=self.strides), _bn()

    def __call__(self, X: Any) -> Any:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.use_1x1conv:
            X = self.bn4(self.conv4(X))
        return nn.relu(Y + X)


def regnetx32() -> nn.Module:
    stem = nn.Sequential([nn.Conv(32, (3, 3), strides=2, padding=1), _bn(), nn.relu])
    stages = [nn.Sequential([ResNeXtBlock(c, 16, 1, use_1x1conv=True, strides=2)]
                            + [ResNeXtBlock(c, 16, 1) for _ in range(depth - 1)]) for depth, c in ((4, 32), (6, 80))]
    return nn.Sequential([stem, *stages, _global_avg_pool, nn.Dense(10)])


# ------------------------------------------------------------------------------------------ sequence chapters
class ScanRNN(nn.Module):
    """d2l's JAX ``RNN``/``GRU``/``LSTM``: ``nn.scan`` over a Flax cell, time-major, zero initial state; layers
    stacked with dropout between (none here: inference)."""

    cell: Any
    num_hiddens: int
    num_layers: int = 1

    @nn.compact
    def __call__(self, X: Any) -> Any:
        for _ in range(self.num_layers):
            state = self.cell(features=self.num_hiddens).initialize_carry(KEY, (X.shape[1], self.num_hiddens))
            scan = nn.scan(self.cell, variable_broadcast="params", in_axes=0, out_axes=0, split_rngs={"params": False})
            state, X = scan(features=self.num_hiddens)(state, X)
        return X


class RNNLM(nn.Module):
    """d2l's concise RNN language model: one-hot of ``X.T`` (time-major), the recurrent block, a Dense whose
    output is swapped back to batch-major."""

    rnn: nn.Module
    vocab_size: int = 28

    @nn.compact
    def __call__(self, X: Any) -> Any:
        outputs = self.rnn(jax.nn.one_hot(X.T, self.vocab_size))
        return jnp.swapaxes(nn.Dense(self.vocab_size)(outputs), 0, 1)


def _bi_lstm() -> nn.Module:  # nn.Bidirectional over time-major nn.RNNs
    return nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(32)), nn.RNN(nn.OptimizedLSTMCell(32)), time_major=True)


class DotProductAttention(nn.Module):
    dropout: float

    @nn.compact
    def __call__(self, queries: Any, keys: Any, values: Any) -> Any:
        scores = queries @ keys.swapaxes(1, 2) / math.sqrt(queries.shape[-1])
        weights = nn.softmax(scores, axis=-1)  # d2l's masked_softmax without valid_lens
        return nn.Dropout(self.dropout, deterministic=True)(weights) @ values


class MultiHeadAttention(nn.Module):
    num_hiddens: int
    num_heads: int
    dropout: float
    bias: bool = False

    def setup(self) -> None:
        self.attention = DotProductAttention(self.dropout)
        self.W_q = nn.Dense(self.num_hiddens, use_bias=self.bias)
        self.W_k = nn.Dense(self.num_hiddens, use_bias=self.bias)
        self.W_v = nn.Dense(self.num_hiddens, use_bias=self.bias)
        self.W_o = nn.Dense(self.num_hiddens, use_bias=self.bias)

    def __call__(self, queries: Any, keys: Any, values: Any) -> Any:
        queries = self.transpose_qkv(self.W_q(queries))
        keys = self.transpose_qkv(self.W_k(keys))
        values = self.transpose_qkv(self.W_v(values))
        return self.W_o(self.transpose_output(self.attention(queries, keys, values)))

    def transpose_qkv(self, X: Any) -> Any:
        X = X.reshape((X.shape[0], X.shape[1], self.num_heads, -1)).transpose(0, 2, 1, 3)
        return X.reshape((-1, X.shape[2], X.shape[3]))

    def transpose_output(self, X: Any) -> Any:
        X = X.reshape((-1, self.num_heads, X.shape[1], X.shape[2])).transpose(0, 2, 1, 3)
        return X.reshape((X.shape[0], X.shape[1], -1))


class PositionalEncoding(nn.Module):
    num_hiddens: int
    max_len: int = 1000

    def setup(self) -> None:
        X = jnp.arange(self.max_len, dtype=jnp.float32).reshape(-1, 1) / jnp.power(
            10000, jnp.arange(0, self.num_hiddens, 2, dtype=jnp.float32) / self.num_hiddens)
        P = jnp.zeros((1, self.max_len, self.num_hiddens))
        self.P = P.at[:, :, 0::2].set(jnp.sin(X)).at[:, :, 1::2].set(jnp.cos(X))

    def __call__(self, X: Any) -> Any:
        return X + self.P[:, :X.shape[1], :]


class AddNorm(nn.Module):
    @nn.compact
    def __call__(self, X: Any, Y: Any) -> Any:
        return nn.LayerNorm(epsilon=1e-5)(Y + X)


class TransformerEncoderBlock(nn.Module):
    num_hiddens: int
    ffn_num_hiddens: int
    num_heads: int
    dropout: float
    use_bias: bool = False

    def setup(self) -> None:
        self.attention = MultiHeadAttention(self.num_hiddens, self.num_heads, self.dropout, self.use_bias)
        self.addnorm1 = AddNorm()
        self.dense1, self.dense2 = nn.Dense(self.ffn_num_hiddens), nn.Dense(self.num_hiddens)
        self.addnorm2 = AddNorm()

    def __call__(self, X: Any) -> Any:
        Y = self.addnorm1(X, self.attention(X, X, X))
        return self.addnorm2(Y, self.dense2(nn.relu(self.dense1(Y))))


class TransformerEncoder(nn.Module):
    vocab_size: int = 200
    num_hiddens: int = 24
    ffn_num_hiddens: int = 48
    num_heads: int = 8
    num_blks: int = 2
    dropout: float = 0.5

    def setup(self) -> None:
        self.embedding = nn.Embed(self.vocab_size, self.num_hiddens)
        self.pos_encoding = PositionalEncoding(self.num_hiddens)
        self.blks = [TransformerEncoderBlock(self.num_hiddens, self.ffn_num_hiddens, self.num_heads, self.dropout)
                     for _ in range(self.num_blks)]

    def __call__(self, X: Any) -> Any:
        X = self.pos_encoding(self.embedding(X) * math.sqrt(self.num_hiddens))
        for blk in self.blks:
            X = blk(X)
        return X


class ViTBlock(nn.Module):
    num_hiddens: int
    mlp_num_hiddens: int
    num_heads: int
    dropout: float
    use_bias: bool = False

    def setup(self) -> None:
        self.attention = MultiHeadAttention(self.num_hiddens, self.num_heads, self.dropout, self.use_bias)
        self.dense1, self.dense2 = nn.Dense(self.mlp_num_hiddens), nn.Dense(self.num_hiddens)

    @nn.compact
    def __call__(self, X: Any) -> Any:
        X = X + self.attention(*([nn.LayerNorm(epsilon=1e-5)(X)] * 3))
        return X + self.dense2(nn.gelu(self.dense1(nn.LayerNorm(epsilon=1e-5)(X)), approximate=False))


class ViT(nn.Module):
    patch_size: int = 16
    num_hiddens: int = 512
    mlp_num_hiddens: int = 2048
    num_heads: int = 8
    num_blks: int = 2

    def setup(self) -> None:
        self.patch_embedding = nn.Conv(self.num_hiddens, (self.patch_size,) * 2, strides=self.patch_size,
                                       padding="VALID")
        self.cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, self.num_hiddens))
        self.pos_embedding = self.param("pos_embed", nn.initializers.normal(), (1, (96 // self.patch_size) ** 2 + 1,
                                                                               self.num_hiddens))
        self.blks = [ViTBlock(self.num_hiddens, self.mlp_num_hiddens, self.num_heads, 0.1)
                     for _ in range(self.num_blks)]
        self.head = nn.Sequential([nn.LayerNorm(epsilon=1e-5), nn.Dense(10)])

    def __call__(self, X: Any) -> Any:
        X = self.patch_embedding(X)
        X = X.reshape((X.shape[0], -1, X.shape[3]))
        X = jnp.concatenate((jnp.tile(self.cls_token, (X.shape[0], 1, 1)), X), 1) + self.pos_embedding
        for blk in self.blks:
            X = blk(X)
        return self.head(X[:, 0])


BOOK: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp, "lenet": lenet, "bn_lenet": bn_lenet, "alexnet": alexnet, "vgg11": vgg11, "nin": nin,
    "googlenet": googlenet, "resnet18": resnet18, "densenet": densenet, "regnetx32": regnetx32,
    "rnn_lm": lambda: RNNLM(ScanRNN(nn.SimpleCell, 32)), "gru_lm": lambda: RNNLM(ScanRNN(nn.GRUCell, 32)),
    "lstm_lm": lambda: RNNLM(ScanRNN(nn.OptimizedLSTMCell, 32)),
    "deep_gru_lm": lambda: RNNLM(ScanRNN(nn.GRUCell, 32, num_layers=2)),
    "bi_lstm_lm": lambda: RNNLM(_bi_lstm()), "transformer_encoder": TransformerEncoder, "vit": ViT,
}
#: per model, the bias entries Flax folds (b_ih + b_hh in one variable): RNN H, GRU 2H, LSTM 4H per layer-direction
FOLDED = {"rnn_lm": 32, "gru_lm": 64, "lstm_lm": 128, "deep_gru_lm": 2 * 64, "bi_lstm_lm": 2 * 128}


# ------------------------------------------------------------------------------------------ the test's layouts
_GATES = {nn.SimpleCell: (("i",), ("h",)), nn.GRUCell: (("ir", "iz", "in"), ("hr", "hz", "hn")),
          nn.OptimizedLSTMCell: (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"))}


_CELLS = tuple(cls.__name__ for cls in _GATES)


def _kind(module: nn.Module) -> str:
    for cls, kind in ((nn.Dense, "dense"), (nn.Conv, "conv"), (nn.BatchNorm, "bn"), (nn.LayerNorm, "ln"),
                      (nn.Embed, "embed")):
        if isinstance(module, cls):
            return kind
    return next((cls.__name__ for cls in _GATES if isinstance(module, cls)), "own")


def _own(tree: dict, path: tuple, collection: str = "params") -> dict:
    """A module's variables: its cell's whole subtree, else its own leaves (not its children's)."""
    node = tree.get(collection, {})
    for k in path:
        node = node.get(k, {})
    return node


def _units(net: nn.Module, x: Any) -> tuple[dict, list[tuple[tuple, str]]]:
    """The hand model's variables after its own init (shapes only), and its modules that hold variables (a
    recurrent cell as one) in the order its forward pass first calls them."""
    called: list[tuple[tuple, nn.Module]] = []

    def record(next_fun: Callable, args: Any, kwargs: Any, context: Any) -> Any:
        if context.method_name == "__call__" and all(p != context.module.path for p, _ in called):
            called.append((context.module.path, context.module))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        found = jax.eval_shape(net.init, KEY, x)
    units: list[tuple[tuple, str]] = []
    for path, module in called:
        kind = _kind(module)
        if any(path[:len(p)] == p for p, k in units if k in _CELLS):
            continue  # a cell's own Dense layers: the cell is the unit
        own = _own(found, path)
        if kind in _CELLS or any(not isinstance(v, dict) for v in own.values()):
            units.append((path, kind))
    return found, units


def _leaves(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, dict)}


def _to_canonical(kind: str, params: dict, stats: dict) -> list[np.ndarray]:
    """One hand unit's variables -> its canonical parameters, in the spec's order."""
    a = {k: np.asarray(v) for k, v in _leaves(params).items()}
    bias = [a["bias"]] if "bias" in a else []
    if kind == "dense":
        return [a["kernel"].T] + bias
    if kind == "conv":  # HWIO -> OIHW
        return [np.moveaxis(a["kernel"], (-1, -2), (0, 1))] + bias
    if kind == "bn":
        return [a["scale"], a["bias"], np.asarray(stats["mean"]), np.asarray(stats["var"])]
    if kind == "ln":
        return [a["scale"], a["bias"]]
    if kind == "embed":
        return [a["embedding"]]
    if kind == "own":  # the book's self.param declarations
        return [a[k] for k in sorted(a)]
    ins, hids = next(g for cls, g in _GATES.items() if cls.__name__ == kind)
    k = {g: np.asarray(params[g]["kernel"]) for g in ins + hids}
    b = {g: np.asarray(params[g]["bias"]) for g in ins + hids if "bias" in params[g]}
    w_ih, w_hh = np.concatenate([k[g].T for g in ins]), np.concatenate([k[g].T for g in hids])
    if kind == "GRUCell":  # b_ir, b_iz hold b_ih + b_hh (exported as b_ih, b_hh zero); n keeps b_in and b_hn
        zero = np.zeros_like(b["hn"])
        return [w_ih, w_hh, np.concatenate([b[g] for g in ins]), np.concatenate([zero, zero, b["hn"]])]
    b_ih = np.concatenate([b[g] for g in (ins if kind == "SimpleCell" else hids)])  # one bias per gate
    return [w_ih, w_hh, b_ih, np.zeros_like(b_ih)]


def _to_hand(kind: str, ws: list[np.ndarray], names: list[str]) -> tuple[dict, dict]:
    """Canonical parameters of one unit -> its (params, batch_stats) in the hand model's layout."""
    if kind in ("dense", "conv"):
        k = ws[0].T if kind == "dense" else np.moveaxis(ws[0], (0, 1), (-1, -2))
        return {"kernel": k, **({"bias": ws[1]} if len(ws) > 1 else {})}, {}
    if kind == "bn":
        return {"scale": ws[0], "bias": ws[1]}, {"mean": ws[2], "var": ws[3]}
    if kind == "ln":
        return {"scale": ws[0], "bias": ws[1]}, {}
    if kind == "embed":
        return {"embedding": ws[0]}, {}
    if kind == "own":
        return dict(zip(sorted(names), ws)), {}
    ins, hids = next(g for cls, g in _GATES.items() if cls.__name__ == kind)
    w_ih, w_hh, b_ih, b_hh = ws
    out: dict = {g: {"kernel": blk.T} for g, blk in zip(ins, np.split(w_ih, len(ins)))}
    out.update({g: {"kernel": blk.T} for g, blk in zip(hids, np.split(w_hh, len(hids)))})
    bi, bh = np.split(b_ih, len(ins)), np.split(b_hh, len(ins))
    if kind == "GRUCell":
        out["ir"]["bias"], out["iz"]["bias"] = bi[0] + bh[0], bi[1] + bh[1]
        out["in"]["bias"], out["hn"]["bias"] = bi[2], bh[2]
    else:
        for g, x, y in zip(ins if kind == "SimpleCell" else hids, bi, bh):
            out[g]["bias"] = x + y
    return out, {}


def _vit_order(items: list) -> list:
    # the book's ViT declares cls_token and pos_embed on itself (its first unit); the spec has them after the stem
    return items[2:4] + items[:2] + items[4:]


def _hand_canonical(name: str, found: dict, units: list) -> list[np.ndarray]:
    empty = jax.tree_util.tree_map(lambda s: np.empty(s.shape, np.float32), found)  # shapes only: never touched
    out = [a for path, kind in units for a in _to_canonical(kind, _own(empty, path), _own(empty, path, "batch_stats"))]
    return _vit_order(out) if name == "vit" else out


def _load_hand(name: str, found: dict, units: list, weights: dict[str, np.ndarray]) -> dict:
    """Canonical weights (in the spec's order) written into the hand model's variables, unit by unit."""
    values = list(weights.values())
    values = _vit_order(values) if name == "vit" else values
    flat: dict = {}
    for path, kind in units:
        own = _own(found, path)
        n = len(_to_canonical(kind, jax.tree_util.tree_map(lambda s: np.empty(s.shape), own),
                              {"mean": 0, "var": 0}))
        (params, stats), values = _to_hand(kind, values[:n], list(_leaves(own))), values[n:]
        flat.update({("params",) + path + k: v for k, v in flax.traverse_util.flatten_dict(params).items()})
        flat.update({("batch_stats",) + path + k: v for k, v in flax.traverse_util.flatten_dict(stats).items()})
    assert not values
    return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def _data(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name in zoo.INT_INPUTS:
        return rng.integers(0, 28 if name.endswith("_lm") else 200, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _hand_input(x: np.ndarray) -> Any:
    return jnp.asarray(np.moveaxis(x, 1, -1) if x.ndim == 4 else x)  # the book's JAX chapters take NHWC images


def _count(tree: dict, *collections: str) -> int:
    return sum(a.size for c in collections for a in jax.tree_util.tree_leaves(tree.get(c, {})))


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_counts_and_shapes_equal_the_books_flax_code(name: str) -> None:
    shape, abstract = zoo.BOOK_INPUTS[name], name in ABSTRACT
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    x = _data(name, shape)
    book = BOOK[name]()
    found, units = _units(book, _hand_input(x))
    model = di.compile(zoo.MODELS[name](), "jax")
    # a portable init: numpy draws them, no random draw is compiled (Flax's defaults: test_native_jax.py)
    report = model.apply_init(di.ShapeDtype(shape, dtype) if abstract else x, init="xavier_uniform", key=1,
                              abstract=abstract)
    # counts as Flax counts them: the params collection; the total adds batch_stats
    folded = FOLDED.get(name, 0)
    assert report.trainable_params == _count(found, "params") + folded
    assert report.total_params == _count(found, "params", "batch_stats") + folded
    assert _count(model.variables, "params") == _count(found, "params")  # the native model holds Flax's count
    assert _count(model.variables, "params", "batch_stats") == _count(found, "params", "batch_stats")
    # the same shapes, translated to the canonical layouts, and every dim found by Flax's own init
    assert [p.shape for p in report.params.values()] == [a.shape for a in _hand_canonical(name, found, units)]
    assert all(p.source == "native" for p in report.params.values())
    assert report.diff(di.infer_shapes(zoo.MODELS[name](), shape, dtype=dtype)) == []
    out = jax.eval_shape(book.apply, found, _hand_input(x))
    assert report.output_shape == tuple(out.shape)
    if abstract:
        assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree_util.tree_leaves(model.variables))
        return
    if name in RUN:  # the same weights give the same outputs
        weights = {n: w + 0.1 if "bias" in n else w for n, w in model.export_weights().items()}
        model.load_weights(weights)
        xs = _data(name, shape, seed=3)
        want = jax.jit(book.apply)(_load_hand(name, found, units, weights), _hand_input(xs))
        np.testing.assert_allclose(model.to_numpy(model(xs)), np.asarray(want), rtol=2e-4, atol=2e-5)


def test_resnet18_initialized_at_96_runs_at_64_and_128() -> None:
    x96 = _data("resnet18", (1, 1, 96, 96))
    model = di.compile(zoo.resnet18(), "jax")
    model.apply_init(x96, init="kaiming_uniform", key=0)
    book = resnet18()
    found, units = _units(book, _hand_input(x96))
    variables = _load_hand("resnet18", found, units, model.export_weights())
    for size in (64, 128):
        x = _data("resnet18", (2, 1, size, size), seed=size)
        y = model(x)
        assert tuple(y.shape) == (2, 10)
        np.testing.assert_allclose(model.to_numpy(y), np.asarray(jax.jit(book.apply)(variables, _hand_input(x))),
                                   rtol=2e-4, atol=2e-5)
    assert model.report.input_shape == (1, 1, 96, 96)  # no re-initialization: the same parameters


@pytest.mark.parametrize("unknown", [False, True])
def test_gru_language_model_runs_at_any_sequence_length(unknown: bool) -> None:
    model = di.compile(zoo.MODELS["gru_lm"](), "jax")
    if unknown:  # initialized with no sequence length at all
        assert model.apply_init(di.ShapeDtype((None, None), "int64"), abstract=True).output_shape == (None, None, 28)
        model.materialize(init="xavier_uniform", key=0)
    else:
        model.apply_init(_data("gru_lm", (2, 35)), init="xavier_uniform", key=0)
    book = BOOK["gru_lm"]()
    found, units = _units(book, _hand_input(_data("gru_lm", (2, 35))))
    variables = _load_hand("gru_lm", found, units, model.export_weights())
    apply = jax.jit(book.apply)
    for steps in (1, 7, 35, 120):
        x = _data("gru_lm", (3, steps), seed=steps)
        y = model(x)
        assert tuple(y.shape) == (3, steps, 28)
        np.testing.assert_allclose(model.to_numpy(y), np.asarray(apply(variables, jnp.asarray(x))), rtol=2e-4, atol=2e-5)
    fn = model._st(model.native).fns["infer"]  # type: ignore[attr-defined]
    assert fn._cache_size() == 4  # jax.jit compiles once per length...
    model._checked.update({("seen", i): () for i in range(300)})  # ...until the base class drops its 256 checks
    model(_data("gru_lm", (3, 2)))
    assert model._st(model.native).fns["infer"] is not fn  # type: ignore[attr-defined]  # and the compiled ones
