"""The zoo on PyTorch against the d2l book's own PyTorch chapter code, written out here by hand.

Every model of ``zoo.MODELS`` is built as the book builds it (``nn.LazyConv2d``, ``nn.LazyLinear``, the
book's ``Residual``, ``Inception``, ``DenseBlock``, ``ResNeXtBlock``, ``MultiHeadAttention``, ``ViT``...) and
initialized with its own dry run at the book's input. The deferinit report on torch must count what torch
counts (``parameters()``; plus the BatchNorm running statistics for the total) and list the same shapes, and
agree with ``di.infer_shapes``. Where the parameters line up, the same weights give the same outputs.
AlexNet and VGG-11 (4.7e7 and 1.3e8 parameters) are initialized on the meta device on both sides.
Collected only when the torch backend is selected (see conftest.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from d2l_attention import MultiHeadAttention, TransformerEncoder
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

import deferinit as di
from deferinit import zoo

ABSTRACT = {"alexnet", "vgg11"}


# ------------------------------------------------------------------------------------------ the book's CNNs
def lenet() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.Sigmoid(), nn.LazyLinear(84), nn.Sigmoid(), nn.LazyLinear(10))


def bn_lenet() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.LazyBatchNorm1d(), nn.Sigmoid(), nn.LazyLinear(84), nn.LazyBatchNorm1d(),
        nn.Sigmoid(), nn.LazyLinear(10))


def alexnet() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(96, kernel_size=11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LazyConv2d(256, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(), nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(),
        nn.LazyConv2d(256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(),
        nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5), nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.LazyLinear(10))


def vgg_block(num_convs: int, out_channels: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.LazyConv2d(out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg11() -> nn.Module:
    arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    return nn.Sequential(*[vgg_block(*b) for b in arch], nn.Flatten(), nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
                         nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5), nn.LazyLinear(10))


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Module:
    return nn.Sequential(nn.LazyConv2d(out_channels, kernel_size, strides, padding), nn.ReLU(),
                         nn.LazyConv2d(out_channels, kernel_size=1), nn.ReLU(),
                         nn.LazyConv2d(out_channels, kernel_size=1), nn.ReLU())


def nin() -> nn.Module:
    return nn.Sequential(
        nin_block(96, kernel_size=11, strides=4, padding=0), nn.MaxPool2d(3, stride=2),
        nin_block(256, kernel_size=5, strides=1, padding=2), nn.MaxPool2d(3, stride=2),
        nin_block(384, kernel_size=3, strides=1, padding=1), nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5), nin_block(10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


class Inception(nn.Module):
    def __init__(self, c1: int, c2: tuple, c3: tuple, c4: int) -> None:
        super().__init__()
        self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
        self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
        self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
        self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


def googlenet() -> nn.Module:
    b1 = nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.LazyConv2d(64, kernel_size=1), nn.ReLU(), nn.LazyConv2d(192, kernel_size=3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(64, (96, 128), (16, 32), 32), Inception(128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(192, (96, 208), (16, 48), 64), Inception(160, (112, 224), (24, 64), 64),
                       Inception(128, (128, 256), (24, 64), 64), Inception(112, (144, 288), (32, 64), 64),
                       Inception(256, (160, 320), (32, 128), 128), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(256, (160, 320), (32, 128), 128), Inception(384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.LazyLinear(10))


class Residual(nn.Module):
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


def resnet18() -> nn.Module:
    def block(num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Module:
        return nn.Sequential(*[Residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block
                               else Residual(num_channels) for i in range(num_residuals)])

    net = nn.Sequential(nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.LazyBatchNorm2d(),
                                      nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    for i, b in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        net.add_module(f"b{i + 2}", block(*b, first_block=(i == 0)))
    net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(10)))
    return net


def conv_block(num_channels: int) -> nn.Module:
    return nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs: int, num_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*[conv_block(num_channels) for _ in range(num_convs)])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # concatenate input and output of each block along the channels
        return X


def transition_block(num_channels: int) -> nn.Module:
    return nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


def densenet(num_channels: int = 64, growth_rate: int = 32, arch: tuple = (4, 4, 4, 4)) -> nn.Module:
    net = nn.Sequential(nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.LazyBatchNorm2d(),
                                      nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    for i, num_convs in enumerate(arch):
        net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            net.add_module(f"tran_blk{i + 1}", transition_block(num_channels))
    net.add_module("last", nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                                         nn.LazyLinear(10)))
    return net


class ResNeXtBlock(nn.Module):
    def __init__(self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                 strides: int = 1) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(bot_channels, kernel_size=3, stride=strides, padding=1,
                                   groups=bot_channels // groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1, self.bn2, self.bn3 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
            self.bn4 = nn.LazyBatchNorm2d()
        else:
            self.conv4 = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


def regnetx32() -> nn.Module:
    def stage(depth: int, num_channels: int, groups: int, bot_mul: float) -> nn.Module:
        return nn.Sequential(*[ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv=True, strides=2) if i == 0
                               else ResNeXtBlock(num_channels, groups, bot_mul) for i in range(depth)])

    stem_channels, groups, bot_mul = 32, 16, 1
    depths, channels = (4, 6), (32, 80)
    net = nn.Sequential(nn.Sequential(nn.LazyConv2d(stem_channels, kernel_size=3, stride=2, padding=1),
                                      nn.LazyBatchNorm2d(), nn.ReLU()))
    for i, s in enumerate(((depths[0], channels[0], groups, bot_mul), (depths[1], channels[1], groups, bot_mul))):
        net.add_module(f"stage{i + 1}", stage(*s))
    net.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(10)))
    return net


# ------------------------------------------------------------------------------------------ sequence chapters
class RNNLM(nn.Module):
    """d2l's concise RNN language model: one-hot of ``X.T`` (time-major), the recurrent layer, a LazyLinear
    whose output is swapped back to batch-major."""

    def __init__(self, rnn: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.linear = nn.LazyLinear(vocab_size)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        embs = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        rnn_outputs, _ = self.rnn(embs)
        return self.linear(rnn_outputs).swapaxes(0, 1)


def lm(kind: str, vocab_size: int = 28, num_hiddens: int = 32, **kw) -> nn.Module:  # type: ignore[no-untyped-def]
    return RNNLM({"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](vocab_size, num_hiddens, **kw), vocab_size)


class PatchEmbedding(nn.Module):
    def __init__(self, img_size: int = 96, patch_size: int = 16, num_hiddens: int = 512) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) * (img_size // patch_size)
        self.conv = nn.LazyConv2d(num_hiddens, kernel_size=patch_size, stride=patch_size)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.conv(X).flatten(2).transpose(1, 2)


class ViTMLP(nn.Module):
    def __init__(self, mlp_num_hiddens: int, mlp_num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dense1 = nn.LazyLinear(mlp_num_hiddens)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.dense2 = nn.LazyLinear(mlp_num_outputs)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.dense2(self.dropout1(self.gelu(self.dense1(x)))))


class ViTBlock(nn.Module):
    def __init__(self, num_hiddens: int, norm_shape: int, mlp_num_hiddens: int, num_heads: int, dropout: float,
                 use_bias: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(norm_shape)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.ln2 = nn.LayerNorm(norm_shape)
        self.mlp = ViTMLP(mlp_num_hiddens, num_hiddens, dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X + self.attention(*([self.ln1(X)] * 3))
        return X + self.mlp(self.ln2(X))


class ViT(nn.Module):
    def __init__(self, img_size: int = 96, patch_size: int = 16, num_hiddens: int = 512, mlp_num_hiddens: int = 2048,
                 num_heads: int = 8, num_blks: int = 2, emb_dropout: float = 0.1, blk_dropout: float = 0.1,
                 use_bias: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(img_size, patch_size, num_hiddens)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, num_hiddens))
        num_steps = self.patch_embedding.num_patches + 1  # add the cls token
        self.pos_embedding = nn.Parameter(torch.randn(1, num_steps, num_hiddens))
        self.dropout = nn.Dropout(emb_dropout)
        self.blks = nn.Sequential()
        for i in range(num_blks):
            self.blks.add_module(f"{i}", ViTBlock(num_hiddens, num_hiddens, mlp_num_hiddens, num_heads, blk_dropout,
                                                  use_bias))
        self.head = nn.Sequential(nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, num_classes))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.patch_embedding(X)
        X = torch.cat((self.cls_token.expand(X.shape[0], -1, -1), X), 1)
        X = self.dropout(X + self.pos_embedding)
        for blk in self.blks:
            X = blk(X)
        return self.head(X[:, 0])


BOOK: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(10)),
    "lenet": lenet, "bn_lenet": bn_lenet, "alexnet": alexnet, "vgg11": vgg11, "nin": nin, "googlenet": googlenet,
    "resnet18": resnet18, "densenet": densenet, "regnetx32": regnetx32,
    "rnn_lm": lambda: lm("rnn"), "gru_lm": lambda: lm("gru"), "lstm_lm": lambda: lm("lstm"),
    "deep_gru_lm": lambda: lm("gru", num_layers=2), "bi_lstm_lm": lambda: lm("lstm", bidirectional=True),
    "transformer_encoder": TransformerEncoder, "vit": ViT,
}


# ------------------------------------------------------------------------------------------ name tables
def _resnet_name(name: str) -> str:
    """Canonical ResNet-18 name -> the book's (``1.0.body.0.weight`` -> ``b2.0.conv1.weight``)."""
    parts = name.split(".")
    if parts[0] == "6":
        return "last.2." + parts[-1]
    if parts[0] == "0":
        return name
    body = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}
    rest = ".".join(parts[2:-1])
    return f"b{int(parts[0]) + 1}.{parts[1]}.{body[rest]}.{parts[-1]}"


def _regnet_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "4":
        return "head.2." + parts[-1]
    if parts[0] == "0":
        return name
    body = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "body.6": "conv3",
            "body.7": "bn3", "shortcut.0": "conv4", "shortcut.1": "bn4"}
    return f"stage{parts[0]}.{parts[1]}.{body['.'.join(parts[2:-1])]}.{parts[-1]}"


def _lm_name(name: str) -> str:
    owner, _, attr = name.partition(".")
    return {"1": "rnn.", "2": "linear."}[owner] + attr


def _vit_name(name: str, num_blks: int = 2) -> str:
    """The book's ViT registers its own cls_token and pos_embedding first; the rest follows the spec."""
    table = {"1.weight": "cls_token", "2.weight": "pos_embedding"}
    if name in table:
        return table[name]
    parts = name.split(".")
    if parts[0] == "0":
        return "patch_embedding.conv." + parts[-1]
    head = 4 + num_blks + 1  # the blocks start at 4; Take(0), then the head's LayerNorm and Dense
    if int(parts[0]) >= head:
        return f"head.{int(parts[0]) - head}.{parts[-1]}"
    blk, res = int(parts[0]) - 4, parts[1]
    if res == "0":
        sub = {"0": "ln1", "1": "attention"}[parts[3]]
    else:
        sub = {"0": "ln2", "1": "mlp.dense1", "4": "mlp.dense2"}[parts[3]]
    attr = parts[4]
    if sub == "attention":
        proj, _, kind = attr.partition("_")
        attr = {"q": "W_q", "k": "W_k", "v": "W_v", "out": "W_o"}[proj] + "." + kind
    return f"blks.{blk}.{sub}.{attr}"


# models whose book code registers parameters in the spec's order load by position; the others by name
BY_NAME: dict[str, Callable[[str], str]] = {"resnet18": _resnet_name, "regnetx32": _regnet_name, "vit": _vit_name,
                                            **{n: _lm_name for n in ("rnn_lm", "gru_lm", "lstm_lm", "deep_gru_lm",
                                                                     "bi_lstm_lm")}}


# ------------------------------------------------------------------------------------------ helpers
def _data(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name in zoo.INT_INPUTS:
        return rng.integers(0, 28 if name.endswith("_lm") else 200, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _book(name: str, x: np.ndarray, abstract: bool = False, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The book's model after its own dry run (eval mode; on the meta device when abstract)."""
    torch.manual_seed(seed)
    if abstract:
        with torch.device("meta"):
            net = BOOK[name]()
            net.eval()
            y = net(torch.empty(x.shape, dtype=torch.from_numpy(x[:0]).dtype))
        return net, y
    net = BOOK[name]()
    net.eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x))
    return net, y


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm statistics, as torch names them (its num_batches_tracked counters aside)."""
    return {n: t for n, t in net.state_dict(keep_vars=True).items() if not n.endswith("num_batches_tracked")}


def _no_lazy_left(net: nn.Module) -> None:
    assert not [n for n, m in net.named_modules() if isinstance(m, LazyModuleMixin)]
    assert not [n for n, t in _state(net).items() if is_lazy(t)]


def _load_book(name: str, net: nn.Module, weights: dict[str, np.ndarray]) -> None:
    state = _state(net)
    if name in BY_NAME:
        pairs = [(state[BY_NAME[name](n)], w) for n, w in weights.items()]
    else:
        assert [tuple(t.shape) for t in state.values()] == [w.shape for w in weights.values()]
        pairs = list(zip(state.values(), weights.values()))
    assert len(pairs) == len(state)
    with torch.no_grad():
        for t, w in pairs:
            t.copy_(torch.from_numpy(w))


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_counts_and_shapes_equal_the_books_pytorch_code(name: str) -> None:
    shape, abstract = zoo.BOOK_INPUTS[name], name in ABSTRACT
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    x = _data(name, shape)
    book, y_book = _book(name, x, abstract)
    model = di.compile(zoo.MODELS[name](), "torch")
    report = model.apply_init(di.ShapeDtype(shape, dtype) if abstract else x, abstract=abstract)
    _no_lazy_left(book)
    _no_lazy_left(model.native)
    # counts as torch counts them: parameters(); the total adds the BatchNorm running statistics
    trainable = sum(p.numel() for p in book.parameters())
    assert report.trainable_params == trainable == sum(p.numel() for p in model.native.parameters())
    total = sum(t.numel() for t in _state(book).values())
    assert report.total_params == total == sum(t.numel() for t in _state(model.native).values())
    # the same shapes (torch's layouts are the canonical ones), and torch's own names where the trees agree
    book_state = _state(book)
    if name in BY_NAME:
        assert {BY_NAME[name](n): p.native_shape for n, p in report.params.items()} == \
            {n: tuple(t.shape) for n, t in book_state.items()}
    else:
        assert [p.native_shape for p in report.params.values()] == [tuple(t.shape) for t in book_state.values()]
    assert all(p.shape == p.native_shape and p.source == "native" for p in report.params.values())  # LayerNorm too
    assert report.diff(di.infer_shapes(zoo.MODELS[name](), shape, dtype=dtype)) == []
    assert report.output_shape == tuple(y_book.shape)
    if abstract:
        assert all(t.is_meta for t in _state(model.native).values())
        return
    # the same weights (torch's default init, drawn by deferinit's dry run) give the same outputs
    _load_book(name, book, model.export_weights())
    xs = _data(name, shape, seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(model.to_numpy(model(xs)), book(torch.from_numpy(xs)).numpy(), rtol=1e-5, atol=1e-5)


def test_resnet18_initialized_at_96_runs_at_64_and_128() -> None:
    x96 = _data("resnet18", (1, 1, 96, 96))
    model = di.compile(zoo.resnet18(), "torch")
    model.apply_init(x96, key=0)
    book, _ = _book("resnet18", x96)
    _load_book("resnet18", book, model.export_weights())
    for size in (64, 128):
        x = _data("resnet18", (2, 1, size, size), seed=size)
        y = model(x)
        assert tuple(y.shape) == (2, 10)
        with torch.no_grad():
            np.testing.assert_allclose(model.to_numpy(y), book(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert model.report.input_shape == (1, 1, 96, 96)  # no re-initialization: the same parameters


@pytest.mark.parametrize("varying", [False, True])
def test_gru_language_model_runs_at_any_sequence_length(varying: bool) -> None:
    model = di.compile(zoo.MODELS["gru_lm"](), "torch")
    if varying:  # initialized with no sequence length at all
        model.apply_init(di.ShapeDtype((None, None), "int64"), key=0)
        assert model.report.output_shape == (None, None, 28)
    else:
        model.apply_init(_data("gru_lm", (2, 35)), key=0)
    book, _ = _book("gru_lm", _data("gru_lm", (2, 35)))
    _load_book("gru_lm", book, model.export_weights())
    for steps in (1, 7, 35, 120):
        x = _data("gru_lm", (3, steps), seed=steps)
        y = model(x)
        assert tuple(y.shape) == (3, steps, 28)
        with torch.no_grad():
            np.testing.assert_allclose(model.to_numpy(y), book(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
