"""The zoo on MXNet against the d2l book's models written by hand in Gluon.

Every model of ``zoo.MODELS`` is built here as the book's MXNet chapters build it (``nn.Sequential`` of
``gluon.nn`` layers with no input dims, the book's ``Residual``, ``Inception``, ``DenseBlock``, ``ResNeXtBlock``,
``MultiHeadAttention`` of four ``Dense(flatten=False)``, ``PositionalEncoding``, the concise ``RNNLM``...), with
the ARCHITECTURE of the PyTorch chapters, which is the spec. Where the book's MXNet code differs, the PyTorch
one is followed and the comment says so:

* AlexNet's first convolution has ``padding=1`` (the MXNet chapter has none; at 224x224 the shapes agree).
* RegNetX-32: the MXNet chapter's ``AnyNet.stage`` passes ``num_channels`` twice to every block after the
  first, which widens the network to 6,291,594 parameters where PyTorch has 179,290; the spec (PyTorch) is
  built here, and ``test_the_mxnet_chapters_regnetx32_as_printed_is_another_network`` measures the printed one.
* The Elman RNN is ``rnn.RNN(num_hiddens, activation="tanh")``: Gluon's default activation is ReLU, PyTorch's
  (and the spec's) tanh. The parameters are the same either way.
* The book's MXNet code runs under ``npx.set_np()`` (the NumPy-style interface); that switch is process-wide and
  would change what every other block in this process receives, so this file writes the same blocks with the
  classic ``nd`` operators. AlexNet and VGG-11 are ``HybridSequential`` (the book: ``Sequential``) so that Gluon
  can find their shapes symbolically. ViT has no MXNet chapter: it is the PyTorch chapter in Gluon's idiom.

Each is initialized with Gluon's own deferred initialization at the book's input: ``initialize()`` then a first
forward (AlexNet and VGG-11, 4.7e7 and 1.3e8 parameters, with ``HybridBlock.infer_shape`` on the book's side and
deferinit's abstract init on the other: shapes only, nothing allocated). The deferinit report on mxnet must
count what Gluon counts (``collect_params()``: trainable are those with a gradient, the total adds BatchNorm's
running statistics; the same numbers ``Block.summary`` prints), list the same shapes (Gluon's layouts are the
canonical ones), and agree with ``di.infer_shapes``; with the same weights, the outputs are equal.
Collected only when the mxnet backend is selected (see conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from typing import Any, Callable

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import init, nd, symbol
    from mxnet.gluon import nn, rnn

import deferinit as di
from deferinit import zoo

ABSTRACT = {"alexnet", "vgg11"}
TOL = {"rtol": 1e-5, "atol": 1e-5}  # the same MXNet operators on both sides


# ------------------------------------------------------------------------------------------ the book's CNNs
def mlp() -> nn.Block:
    net = nn.Sequential()
    net.add(nn.Dense(256, activation="relu"))
    net.add(nn.Dense(10))
    return net


def lenet() -> nn.Block:
    net = nn.Sequential()
    net.add(nn.Conv2D(channels=6, kernel_size=5, padding=2, activation="sigmoid"),
            nn.AvgPool2D(pool_size=2, strides=2),
            nn.Conv2D(channels=16, kernel_size=5, activation="sigmoid"),
            nn.AvgPool2D(pool_size=2, strides=2),
            # Gluon's Dense flattens its input itself (flatten=True): the book has no Flatten layer
            nn.Dense(120, activation="sigmoid"),
            nn.Dense(84, activation="sigmoid"),
            nn.Dense(10))
    return net


def bn_lenet() -> nn.Block:
    net = nn.Sequential()
    net.add(nn.Conv2D(6, kernel_size=5), nn.BatchNorm(), nn.Activation("sigmoid"),
            nn.AvgPool2D(pool_size=2, strides=2),
            nn.Conv2D(16, kernel_size=5), nn.BatchNorm(), nn.Activation("sigmoid"),
            nn.AvgPool2D(pool_size=2, strides=2),
            nn.Dense(120), nn.BatchNorm(), nn.Activation("sigmoid"),
            nn.Dense(84), nn.BatchNorm(), nn.Activation("sigmoid"),
            nn.Dense(10))
    return net


def alexnet() -> nn.Block:
    net = nn.HybridSequential()
    net.add(nn.Conv2D(96, kernel_size=11, strides=4, padding=1, activation="relu"),  # padding=1: PyTorch's
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Conv2D(256, kernel_size=5, padding=2, activation="relu"),
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Conv2D(384, kernel_size=3, padding=1, activation="relu"),
            nn.Conv2D(384, kernel_size=3, padding=1, activation="relu"),
            nn.Conv2D(256, kernel_size=3, padding=1, activation="relu"),
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Dense(4096, activation="relu"), nn.Dropout(0.5),
            nn.Dense(4096, activation="relu"), nn.Dropout(0.5),
            nn.Dense(10))
    return net


def vgg_block(num_convs: int, num_channels: int) -> nn.Block:
    blk = nn.HybridSequential()
    for _ in range(num_convs):
        blk.add(nn.Conv2D(num_channels, kernel_size=3, padding=1, activation="relu"))
    blk.add(nn.MaxPool2D(pool_size=2, strides=2))
    return blk


def vgg11() -> nn.Block:
    net = nn.HybridSequential()
    for b in ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)):
        net.add(vgg_block(*b))
    net.add(nn.Dense(4096, activation="relu"), nn.Dropout(0.5),
            nn.Dense(4096, activation="relu"), nn.Dropout(0.5),
            nn.Dense(10))
    return net


def nin_block(num_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Block:
    blk = nn.Sequential()
    blk.add(nn.Conv2D(num_channels, kernel_size, strides, padding, activation="relu"),
            nn.Conv2D(num_channels, kernel_size=1, activation="relu"),
            nn.Conv2D(num_channels, kernel_size=1, activation="relu"))
    return blk


def nin() -> nn.Block:
    net = nn.Sequential()
    net.add(nin_block(96, kernel_size=11, strides=4, padding=0), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(256, kernel_size=5, strides=1, padding=2), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(384, kernel_size=3, strides=1, padding=1), nn.MaxPool2D(pool_size=3, strides=2),
            nn.Dropout(0.5),
            nin_block(10, kernel_size=3, strides=1, padding=1),
            nn.GlobalAvgPool2D(), nn.Flatten())
    return net


class Inception(nn.Block):
    def __init__(self, c1: int, c2: tuple, c3: tuple, c4: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.b1_1 = nn.Conv2D(c1, kernel_size=1, activation="relu")
        self.b2_1 = nn.Conv2D(c2[0], kernel_size=1, activation="relu")
        self.b2_2 = nn.Conv2D(c2[1], kernel_size=3, padding=1, activation="relu")
        self.b3_1 = nn.Conv2D(c3[0], kernel_size=1, activation="relu")
        self.b3_2 = nn.Conv2D(c3[1], kernel_size=5, padding=2, activation="relu")
        self.b4_1 = nn.MaxPool2D(pool_size=3, strides=1, padding=1)
        self.b4_2 = nn.Conv2D(c4, kernel_size=1, activation="relu")

    def forward(self, x: nd.NDArray) -> nd.NDArray:
        b1 = self.b1_1(x)
        b2 = self.b2_2(self.b2_1(x))
        b3 = self.b3_2(self.b3_1(x))
        b4 = self.b4_2(self.b4_1(x))
        return nd.concat(b1, b2, b3, b4, dim=1)


def googlenet() -> nn.Block:
    b1 = nn.Sequential()
    b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3, activation="relu"),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b2 = nn.Sequential()
    b2.add(nn.Conv2D(64, kernel_size=1, activation="relu"),
           nn.Conv2D(192, kernel_size=3, padding=1, activation="relu"),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b3 = nn.Sequential()
    b3.add(Inception(64, (96, 128), (16, 32), 32), Inception(128, (128, 192), (32, 96), 64),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b4 = nn.Sequential()
    b4.add(Inception(192, (96, 208), (16, 48), 64), Inception(160, (112, 224), (24, 64), 64),
           Inception(128, (128, 256), (24, 64), 64), Inception(112, (144, 288), (32, 64), 64),
           Inception(256, (160, 320), (32, 128), 128), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b5 = nn.Sequential()
    b5.add(Inception(256, (160, 320), (32, 128), 128), Inception(384, (192, 384), (48, 128), 128),
           nn.GlobalAvgPool2D())
    net = nn.Sequential()
    net.add(b1, b2, b3, b4, b5, nn.Dense(10))
    return net


class Residual(nn.Block):
    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        Y = nd.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return nd.relu(Y + X)


def resnet18() -> nn.Block:
    def block(num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Block:
        blk = nn.Sequential()
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                blk.add(Residual(num_channels))
        return blk

    net = nn.Sequential()
    b1 = nn.Sequential()
    b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(b1)
    for i, b in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        net.add(block(*b, first_block=(i == 0)))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


def conv_block(num_channels: int) -> nn.Block:
    blk = nn.Sequential()
    blk.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(num_channels, kernel_size=3, padding=1))
    return blk


class DenseBlock(nn.Block):
    def __init__(self, num_convs: int, num_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential()
        for _ in range(num_convs):
            self.net.add(conv_block(num_channels))

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        for blk in self.net:
            Y = blk(X)
            X = nd.concat(X, Y, dim=1)  # concatenate input and output of each block along the channels
        return X


def transition_block(num_channels: int) -> nn.Block:
    blk = nn.Sequential()
    blk.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(num_channels, kernel_size=1),
            nn.AvgPool2D(pool_size=2, strides=2))
    return blk


def densenet(num_channels: int = 64, growth_rate: int = 32, arch: tuple = (4, 4, 4, 4)) -> nn.Block:
    net = nn.Sequential()
    b1 = nn.Sequential()
    b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(b1)
    for i, num_convs in enumerate(arch):
        net.add(DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            net.add(transition_block(num_channels))
    net.add(nn.BatchNorm(), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


class ResNeXtBlock(nn.Block):
    def __init__(self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False, strides: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.Conv2D(bot_channels, kernel_size=1, padding=0, strides=1)
        self.conv2 = nn.Conv2D(bot_channels, kernel_size=3, padding=1, strides=strides,
                               groups=bot_channels // groups)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, padding=0, strides=1)
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()
        self.bn3 = nn.BatchNorm()
        if use_1x1conv:
            self.conv4 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
            self.bn4 = nn.BatchNorm()
        else:
            self.conv4 = None

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        Y = nd.relu(self.bn1(self.conv1(X)))
        Y = nd.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return nd.relu(Y + X)


def regnetx32(as_printed: bool = False) -> nn.Block:
    """The book's AnyNet with RegNetX-32's arguments. ``as_printed``: the MXNet chapter's ``stage`` as printed,
    ``ResNeXtBlock(num_channels, num_channels, groups, bot_mul)`` after the first block (so groups becomes the
    channel count, bot_mul 16 and use_1x1conv 1); otherwise PyTorch's ``ResNeXtBlock(num_channels, groups, bot_mul)``."""
    def stage(depth: int, num_channels: int, groups: int, bot_mul: float) -> nn.Block:
        net = nn.Sequential()
        for i in range(depth):
            if i == 0:
                net.add(ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv=True, strides=2))
            elif as_printed:
                net.add(ResNeXtBlock(num_channels, num_channels, groups, bot_mul))
            else:
                net.add(ResNeXtBlock(num_channels, groups, bot_mul))
        return net

    stem_channels, groups, bot_mul = 32, 16, 1
    depths, channels = (4, 6), (32, 80)
    net = nn.Sequential()
    stem = nn.Sequential()
    stem.add(nn.Conv2D(stem_channels, kernel_size=3, padding=1, strides=2), nn.BatchNorm(), nn.Activation("relu"))
    net.add(stem)
    for s in ((depths[0], channels[0], groups, bot_mul), (depths[1], channels[1], groups, bot_mul)):
        net.add(stage(*s))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


# ------------------------------------------------------------------------------------------ sequence chapters
class RNNLM(nn.Block):
    """d2l's concise RNN language model: one-hot of ``X.T`` (time-major, Gluon's default ``TNC`` layout), the
    recurrent layer, a ``Dense(flatten=False)`` whose output is swapped back to batch-major."""

    def __init__(self, rnn_layer: nn.Block, vocab_size: int) -> None:
        super().__init__()
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.linear = nn.Dense(vocab_size, flatten=False)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        embs = nd.one_hot(X.T, self.vocab_size)
        rnn_outputs = self.rnn(embs)
        return nd.swapaxes(self.linear(rnn_outputs), 0, 1)


def lm(kind: str, vocab_size: int = 28, num_hiddens: int = 32, **kw: Any) -> nn.Block:
    if kind == "rnn":
        kw["activation"] = "tanh"  # Gluon's default is relu; PyTorch's (the spec's) tanh
    return RNNLM({"rnn": rnn.RNN, "gru": rnn.GRU, "lstm": rnn.LSTM}[kind](num_hiddens, **kw), vocab_size)


class DotProductAttention(nn.Block):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: nd.NDArray, keys: nd.NDArray, values: nd.NDArray) -> nd.NDArray:
        d = queries.shape[-1]
        scores = nd.batch_dot(queries, keys, transpose_b=True) / math.sqrt(d)
        self.attention_weights = nd.softmax(scores, axis=-1)  # masked_softmax without valid_lens
        return nd.batch_dot(self.dropout(self.attention_weights), values)


class MultiHeadAttention(nn.Block):
    def __init__(self, num_hiddens: int, num_heads: int, dropout: float, use_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = nn.Dense(num_hiddens, use_bias=use_bias, flatten=False)
        self.W_k = nn.Dense(num_hiddens, use_bias=use_bias, flatten=False)
        self.W_v = nn.Dense(num_hiddens, use_bias=use_bias, flatten=False)
        self.W_o = nn.Dense(num_hiddens, use_bias=use_bias, flatten=False)

    def forward(self, queries: nd.NDArray, keys: nd.NDArray, values: nd.NDArray) -> nd.NDArray:
        queries = self.transpose_qkv(self.W_q(queries))
        keys = self.transpose_qkv(self.W_k(keys))
        values = self.transpose_qkv(self.W_v(values))
        output = self.attention(queries, keys, values)
        return self.W_o(self.transpose_output(output))

    def transpose_qkv(self, X: nd.NDArray) -> nd.NDArray:
        X = X.reshape((X.shape[0], X.shape[1], self.num_heads, -1))
        X = X.transpose((0, 2, 1, 3))
        return X.reshape((-1, X.shape[2], X.shape[3]))

    def transpose_output(self, X: nd.NDArray) -> nd.NDArray:
        X = X.reshape((-1, self.num_heads, X.shape[1], X.shape[2]))
        X = X.transpose((0, 2, 1, 3))
        return X.reshape((X.shape[0], X.shape[1], -1))


class PositionalEncoding(nn.Block):
    def __init__(self, num_hiddens: int, dropout: float, max_len: int = 1000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.P = nd.zeros((1, max_len, num_hiddens))
        X = nd.arange(max_len).reshape((-1, 1)) / nd.power(10000, nd.arange(0, num_hiddens, 2) / num_hiddens)
        self.P[:, :, 0::2] = nd.sin(X)
        self.P[:, :, 1::2] = nd.cos(X)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        X = X + self.P[:, :X.shape[1], :].as_in_context(X.context)
        return self.dropout(X)


class AddNorm(nn.Block):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm()

    def forward(self, X: nd.NDArray, Y: nd.NDArray) -> nd.NDArray:
        return self.ln(self.dropout(Y) + X)


class PositionWiseFFN(nn.Block):
    def __init__(self, ffn_num_hiddens: int, ffn_num_outputs: int) -> None:
        super().__init__()
        self.dense1 = nn.Dense(ffn_num_hiddens, flatten=False, activation="relu")
        self.dense2 = nn.Dense(ffn_num_outputs, flatten=False)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        return self.dense2(self.dense1(X))


class TransformerEncoderBlock(nn.Block):
    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float,
                 use_bias: bool = False) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.addnorm1 = AddNorm(dropout)
        self.ffn = PositionWiseFFN(ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(dropout)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        Y = self.addnorm1(X, self.attention(X, X, X))
        return self.addnorm2(Y, self.ffn(Y))


class TransformerEncoder(nn.Block):
    def __init__(self, vocab_size: int = 200, num_hiddens: int = 24, ffn_num_hiddens: int = 48, num_heads: int = 8,
                 num_blks: int = 2, dropout: float = 0.5, use_bias: bool = False) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blks = nn.Sequential()
        for _ in range(num_blks):
            self.blks.add(TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout, use_bias))

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        X = self.pos_encoding(self.embedding(X) * math.sqrt(self.num_hiddens))
        for blk in self.blks:
            X = blk(X)
        return X


class PatchEmbedding(nn.Block):
    def __init__(self, img_size: int = 96, patch_size: int = 16, num_hiddens: int = 512) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) * (img_size // patch_size)
        self.conv = nn.Conv2D(num_hiddens, kernel_size=patch_size, strides=patch_size)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        return self.conv(X).reshape((0, 0, -1)).transpose((0, 2, 1))  # (N, D, h, w) -> (N, h*w, D)


class ViTMLP(nn.Block):
    def __init__(self, mlp_num_hiddens: int, mlp_num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dense1 = nn.Dense(mlp_num_hiddens, flatten=False)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.dense2 = nn.Dense(mlp_num_outputs, flatten=False)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: nd.NDArray) -> nd.NDArray:
        return self.dropout2(self.dense2(self.dropout1(self.gelu(self.dense1(x)))))


class ViTBlock(nn.Block):
    def __init__(self, num_hiddens: int, mlp_num_hiddens: int, num_heads: int, dropout: float,
                 use_bias: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.ln2 = nn.LayerNorm()
        self.mlp = ViTMLP(mlp_num_hiddens, num_hiddens, dropout)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        X = X + self.attention(*([self.ln1(X)] * 3))
        return X + self.mlp(self.ln2(X))


class ViT(nn.Block):
    def __init__(self, img_size: int = 96, patch_size: int = 16, num_hiddens: int = 512, mlp_num_hiddens: int = 2048,
                 num_heads: int = 8, num_blks: int = 2, emb_dropout: float = 0.1, blk_dropout: float = 0.1,
                 use_bias: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(img_size, patch_size, num_hiddens)
        self.cls_token = self.params.get("cls_token", shape=(1, 1, num_hiddens), init=init.Zero())
        num_steps = self.patch_embedding.num_patches + 1  # add the cls token
        self.pos_embedding = self.params.get("pos_embedding", shape=(1, num_steps, num_hiddens),
                                             init=init.Normal(1.0))
        self.dropout = nn.Dropout(emb_dropout)
        self.blks = nn.Sequential()
        for _ in range(num_blks):
            self.blks.add(ViTBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout, use_bias))
        self.head = nn.Sequential()
        self.head.add(nn.LayerNorm(), nn.Dense(num_classes))

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        X = self.patch_embedding(X)
        cls = nd.broadcast_to(self.cls_token.data(X.context), shape=(X.shape[0], 1, X.shape[2]))
        X = self.dropout(nd.concat(cls, X, dim=1) + self.pos_embedding.data(X.context))
        for blk in self.blks:
            X = blk(X)
        return self.head(X[:, 0])


BOOK: dict[str, Callable[[], nn.Block]] = {
    "mlp": mlp, "lenet": lenet, "bn_lenet": bn_lenet, "alexnet": alexnet, "vgg11": vgg11, "nin": nin,
    "googlenet": googlenet, "resnet18": resnet18, "densenet": densenet, "regnetx32": regnetx32,
    "rnn_lm": lambda: lm("rnn"), "gru_lm": lambda: lm("gru"), "lstm_lm": lambda: lm("lstm"),
    "deep_gru_lm": lambda: lm("gru", num_layers=2), "bi_lstm_lm": lambda: lm("lstm", bidirectional=True),
    "transformer_encoder": TransformerEncoder, "vit": ViT,
}


# ------------------------------------------------------------------------------------------ name tables
def _attr(report: di.ShapeReport, name: str) -> str:
    """A canonical parameter's attribute as Gluon's block holds it."""
    owner, _, attr = name.rpartition(".")
    kind = report.layers[owner].type
    if kind in ("BatchNorm", "LayerNorm"):
        return {"weight": "gamma", "bias": "beta"}.get(attr, attr)
    if kind in ("RNN", "GRU", "LSTM"):  # weight_ih_l1_reverse -> r1_i2h_weight
        m = re.fullmatch(r"(weight|bias)_(ih|hh)_l(\d+)(_reverse)?", attr)
        assert m is not None, attr
        return f"{'r' if m[4] else 'l'}{m[3]}_{m[2][0]}2h_{m[1]}"
    if kind == "MultiHeadAttention":  # q_weight -> W_q.weight
        proj, _, rest = attr.partition("_")
        return f"W_{'o' if proj == 'out' else proj}.{rest}"
    return attr


def _block_name(body: dict[str, str]) -> Callable[[str, di.ShapeReport], str]:
    """ResNet/RegNet: canonical ``1.0.body.0.weight`` -> the book's ``1.0.conv1.weight``; the stem and the head
    sit at the same positions of the book's ``nn.Sequential`` as of the spec."""
    def rename(name: str, report: di.ShapeReport) -> str:
        parts = name.rpartition(".")[0].split(".")
        if len(parts) <= 2:
            return ".".join(parts) + "." + _attr(report, name)
        return f"{parts[0]}.{parts[1]}.{body['.'.join(parts[2:])]}.{_attr(report, name)}"
    return rename


def _lm_name(name: str, report: di.ShapeReport) -> str:
    return {"1": "rnn.", "2": "linear."}[name.partition(".")[0]] + _attr(report, name)


def _vit_name(name: str, report: di.ShapeReport, num_blks: int = 2) -> str:
    """The book's ViT holds its own cls_token and pos_embedding; the rest follows the spec's tree."""
    table = {"1.weight": "cls_token", "2.weight": "pos_embedding"}
    if name in table:
        return table[name]
    parts, attr = name.split("."), _attr(report, name)
    if parts[0] == "0":
        return "patch_embedding.conv." + attr
    head = 4 + num_blks + 1  # the blocks start at 4; Take(0), then the head's LayerNorm and Dense
    if int(parts[0]) >= head:
        return f"head.{int(parts[0]) - head}.{attr}"
    blk, res, layer = int(parts[0]) - 4, parts[1], parts[3]
    sub = {"0": "ln1", "1": "attention"}[layer] if res == "0" else {"0": "ln2", "1": "mlp.dense1", "4": "mlp.dense2"}[layer]
    return f"blks.{blk}.{sub}.{attr}"


# models whose book code holds its parameters in another order than the spec: matched by name; the others in order
_RESNET_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}
_REGNET_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "body.6": "conv3",
                "body.7": "bn3", "shortcut.0": "conv4", "shortcut.1": "bn4"}
BY_NAME: dict[str, Callable[[str, di.ShapeReport], str]] = {
    "resnet18": _block_name(_RESNET_BODY), "regnetx32": _block_name(_REGNET_BODY), "vit": _vit_name,
    **{n: _lm_name for n in ("rnn_lm", "gru_lm", "lstm_lm", "deep_gru_lm", "bi_lstm_lm")}}


# ------------------------------------------------------------------------------------------ helpers
def _data(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name in zoo.INT_INPUTS:
        return rng.integers(0, 28 if name.endswith("_lm") else 200, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _nd(x: np.ndarray) -> nd.NDArray:
    return nd.array(x, dtype=x.dtype)  # nd.array alone would make token ids float32


def _book(name: str, x: np.ndarray, abstract: bool = False) -> tuple[nn.Block, tuple]:
    """The book's model after Gluon's own deferred initialization at ``x`` (symbolic, shapes only, when abstract),
    and the shape of its output."""
    mx.random.seed(0)
    net = BOOK[name]()
    if abstract:
        net.infer_shape(nd.zeros(x.shape))  # Gluon's whole-graph infer_shape fills every Parameter's shape
        _, (out,), _ = net(symbol.var("data")).infer_shape(data=x.shape)
        return net, tuple(out)
    net.initialize()
    return net, tuple(net(_nd(x)).shape)


def _params(block: nn.Block, prefix: str = "") -> dict[str, Any]:
    """Structural parameter names (``1.0.conv1.weight``: the attribute path, as ``save_parameters`` names them,
    except that recurrent layers keep their own ``l0_i2h_weight`` rather than Gluon 1.x's legacy
    ``_unfused.0.i2h_weight`` file names) -> Parameter, in Gluon's registration order."""
    out = {prefix + key: p for key, p in block._reg_params.items()}
    for name, child in block._children.items():
        out.update(_params(child, f"{prefix}{name}."))
    return out


def _counts(net: nn.Block) -> tuple[int, int]:
    """(trainable, total) as Gluon counts them: every Parameter of ``collect_params()``; trainable ones have a
    gradient (``grad_req != 'null'``), BatchNorm's running statistics do not."""
    params = list(net.collect_params().values())
    return (sum(math.prod(p.shape) for p in params if p.grad_req != "null"), sum(math.prod(p.shape) for p in params))


def _summary_counts(net: nn.Block, x: np.ndarray) -> tuple[int, int]:
    """What ``Block.summary`` prints (it runs a forward with hooks on every layer)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        net.summary(_nd(x))
    text = out.getvalue()
    return (int(re.search(r"Trainable params: (\d+)", text)[1]),  # type: ignore[index]
            int(re.search(r"Total params: (\d+)", text)[1]))  # type: ignore[index]


def _noisy(weights: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical weights moved off Gluon's defaults (zero biases and means, unit scales and variances), so that
    a swapped BatchNorm scale and shift or mean and variance cannot go unnoticed; variances stay positive."""
    rng = np.random.default_rng(seed)
    return {n: (w * (1 + 0.1 * rng.standard_normal(w.shape)) + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
            for n, w in weights.items()}


def _load_book(name: str, net: nn.Block, report: di.ShapeReport, weights: dict[str, np.ndarray]) -> None:
    params = _params(net)
    if name in BY_NAME:
        pairs = [(params[BY_NAME[name](n, report)], w) for n, w in weights.items()]
    else:
        assert [p.shape for p in params.values()] == [w.shape for w in weights.values()]
        pairs = list(zip(params.values(), weights.values()))
    assert len(pairs) == len(params)
    for p, w in pairs:  # set_data's in-place copy is refused where oneDNN holds a conv weight in its own layout
        p.initialize(init.Constant(nd.array(w)), ctx=p.list_ctx(), force_reinit=True)


def _unallocated(net: nn.Block) -> bool:
    return all(p._data is None for p in net.collect_params().values())


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_counts_and_shapes_equal_the_books_gluon_code(name: str) -> None:
    shape, abstract = zoo.BOOK_INPUTS[name], name in ABSTRACT
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    x = _data(name, shape)
    book, out_shape = _book(name, x, abstract)
    model = di.compile(zoo.MODELS[name](), "mxnet")
    report = model.apply_init(di.ShapeDtype(shape, dtype) if abstract else x, abstract=abstract)
    # nothing left deferred on either side
    for net in (book, model.native):
        assert all(0 not in p.shape and -1 not in p.shape for p in net.collect_params().values())
    # counts as Gluon counts them
    assert report.trainable_params == _counts(book)[0] == _counts(model.native)[0]
    assert report.total_params == _counts(book)[1] == _counts(model.native)[1]
    # the same shapes (Gluon's layouts are the canonical ones), and where the trees differ, the same names
    book_params = _params(book)
    if name in BY_NAME:
        assert {BY_NAME[name](n, report): p.native_shape for n, p in report.params.items()} == \
            {n: p.shape for n, p in book_params.items()}
    else:
        assert [p.native_shape for p in report.params.values()] == [p.shape for p in book_params.values()]
    assert all(p.shape == p.native_shape and p.source == "native" for p in report.params.values())
    assert report.diff(di.infer_shapes(zoo.MODELS[name](), shape, dtype=dtype)) == []
    assert report.output_shape == out_shape
    if abstract:  # shapes only, on both sides
        assert _unallocated(book) and _unallocated(model.native)
        return
    assert _summary_counts(book, x) == _counts(book)
    # the same weights give the same outputs (inference mode)
    weights = _noisy(model.export_weights())
    model.load_weights(weights)
    _load_book(name, book, report, weights)
    xs = _data(name, (2,) + shape[1:], seed=3)
    np.testing.assert_allclose(model.to_numpy(model(xs)), book(_nd(xs)).asnumpy(), **TOL)


def test_the_mxnet_chapters_regnetx32_as_printed_is_another_network() -> None:
    """FRAMEWORK-NOTES: the book's MXNet RegNetX-32 counts 6,291,594 parameters where PyTorch's counts 179,290;
    the spec (and ``regnetx32()`` above) is PyTorch's."""
    x = _data("regnetx32", zoo.BOOK_INPUTS["regnetx32"])
    counts = {}
    for printed in (False, True):
        net = regnetx32(as_printed=printed)
        net.initialize()
        net(nd.array(x))
        counts[printed] = _counts(net)[0]
    assert counts == {False: 179_290, True: 6_291_594}
    assert di.infer_shapes(zoo.regnetx32(), x.shape).trainable_params == 179_290


def test_resnet18_initialized_at_96_runs_at_64_and_128() -> None:
    x96 = _data("resnet18", (1, 1, 96, 96))
    model = di.compile(zoo.resnet18(), "mxnet")
    model.apply_init(x96, key=0)
    model.load_weights(_noisy(model.export_weights()))
    before = model.export_weights()
    book, _ = _book("resnet18", x96)
    _load_book("resnet18", book, model.report, before)
    for size in (64, 128):
        x = _data("resnet18", (2, 1, size, size), seed=size)
        y = model(x)
        assert tuple(y.shape) == (2, 10)
        np.testing.assert_allclose(model.to_numpy(y), book(_nd(x)).asnumpy(), **TOL)
    assert model.report.input_shape == (1, 1, 96, 96)  # no re-initialization: the same parameters
    after = model.export_weights()
    assert all(np.array_equal(after[n], w) for n, w in before.items())


@pytest.mark.parametrize("unknown", [False, True])
def test_gru_language_model_runs_at_any_sequence_length(unknown: bool) -> None:
    model = di.compile(zoo.MODELS["gru_lm"](), "mxnet")
    if unknown:  # initialized with no batch size or sequence length at all
        model.apply_init(di.ShapeDtype((None, None), "int64"), key=0)
        assert model.report.output_shape == (None, None, 28)
    else:
        model.apply_init(_data("gru_lm", (2, 35)), key=0)
    model.load_weights(_noisy(model.export_weights()))
    book, _ = _book("gru_lm", _data("gru_lm", (2, 35)))
    _load_book("gru_lm", book, model.report, model.export_weights())
    for steps in (1, 7, 35, 120):
        x = _data("gru_lm", (3, steps), seed=steps)
        y = model(x)
        assert tuple(y.shape) == (3, steps, 28)
        np.testing.assert_allclose(model.to_numpy(y), book(_nd(x)).asnumpy(), **TOL)
