"""The zoo on TensorFlow (Keras 3) against the d2l book's models written by hand in Keras.

Every model of ``zoo.MODELS`` is built here as the book's TensorFlow chapters build it (``keras.Sequential``
of layers with no input shape, the book's subclassed ``Residual``, ``Inception``, ``DenseBlock``,
``ResNeXtBlock``, ``MultiHeadAttention`` of four Dense layers, ``PositionalEncoding``...), with the
ARCHITECTURE of the PyTorch chapters, which is the spec. Where the book's TensorFlow code differs from its
PyTorch code, the PyTorch one is followed and the comment says so; the recurring cases:

* TensorFlow's ``padding="same"`` pads the odd pixel after; PyTorch pads symmetrically. They agree for
  stride 1 (used as the book does), not for stride 2: there the PyTorch pads are written as ``ZeroPadding2D``
  (before a max pool too: every such pool follows a ReLU, so zero padding never wins, as -inf would not).
* Data are channels-first (the spec's format): every spatial layer takes ``data_format="channels_first"``,
  BatchNormalization ``axis=1``; and BatchNormalization/LayerNormalization take PyTorch's ``epsilon=1e-5``
  and ``momentum=0.9`` (Keras: 1e-3 and 0.99).
* Keras 3 RNN layers are batch-major (the book's TensorFlow 2 code ran them ``time_major``).

Each is initialized with its own build on first call at the book's input (AlexNet and VGG-11, 4.7e7 and
1.3e8 parameters, symbolically with no values on both sides: ``keras.StatelessScope``). The deferinit report
on tensorflow must count what Keras counts, list the same shapes after layout translation, and agree with
``di.infer_shapes``; with the same weights, the outputs are equal. Collected only with ``--backend tensorflow``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import pytest

import deferinit as di
from deferinit import zoo

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers as L  # noqa: E402
from keras.src.backend.common import global_state  # noqa: E402

CF = "channels_first"
ABSTRACT = {"alexnet", "vgg11"}
TOL = {"rtol": 1e-4, "atol": 2e-5}


def bn() -> Any:
    return L.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5)


def ln() -> Any:
    return L.LayerNormalization(epsilon=1e-5)


def conv(c: int, k: int, s: int = 1, pad: int = 0, **kw: Any) -> Any:
    """Conv2D with PyTorch's symmetric padding: the book's ``padding="same"`` where that is the same thing."""
    if pad and s == 1 and 2 * pad == k - 1:
        return L.Conv2D(c, k, padding="same", data_format=CF, **kw)
    if pad:
        return keras.Sequential([L.ZeroPadding2D(pad, data_format=CF), L.Conv2D(c, k, strides=s, data_format=CF, **kw)])
    return L.Conv2D(c, k, strides=s, data_format=CF, **kw)


def max_pool(k: int, s: int, pad: int = 0) -> Any:
    if pad and s == 1:  # TensorFlow's "same" max pooling never lets padding win: PyTorch's -inf padding
        return L.MaxPooling2D(k, s, padding="same", data_format=CF)
    if pad:
        return keras.Sequential([L.ZeroPadding2D(pad, data_format=CF), L.MaxPooling2D(k, s, data_format=CF)])
    return L.MaxPooling2D(k, s, data_format=CF)


def relu(x: Any) -> Any:
    return keras.activations.relu(x)


# ------------------------------------------------------------------------------------------ the book's CNNs
def lenet() -> Any:
    return keras.Sequential([
        L.Conv2D(6, 5, activation="sigmoid", padding="same", data_format=CF), L.AveragePooling2D(2, 2, data_format=CF),
        L.Conv2D(16, 5, activation="sigmoid", data_format=CF), L.AveragePooling2D(2, 2, data_format=CF),
        L.Flatten(),  # Keras's default Flatten is a plain reshape: the (C, H, W) order of the spec
        L.Dense(120, activation="sigmoid"), L.Dense(84, activation="sigmoid"), L.Dense(10)])


def bn_lenet() -> Any:
    return keras.Sequential([
        L.Conv2D(6, 5, data_format=CF), bn(), L.Activation("sigmoid"), L.AveragePooling2D(2, 2, data_format=CF),
        L.Conv2D(16, 5, data_format=CF), bn(), L.Activation("sigmoid"), L.AveragePooling2D(2, 2, data_format=CF),
        L.Flatten(), L.Dense(120), bn(), L.Activation("sigmoid"), L.Dense(84), bn(), L.Activation("sigmoid"),
        L.Dense(10)])


def alexnet() -> Any:
    return keras.Sequential([
        conv(96, 11, 4, pad=1, activation="relu"),  # the book's TensorFlow AlexNet has no padding here; PyTorch's 1
        L.MaxPooling2D(3, 2, data_format=CF),
        L.Conv2D(256, 5, padding="same", activation="relu", data_format=CF), L.MaxPooling2D(3, 2, data_format=CF),
        L.Conv2D(384, 3, padding="same", activation="relu", data_format=CF),
        L.Conv2D(384, 3, padding="same", activation="relu", data_format=CF),
        L.Conv2D(256, 3, padding="same", activation="relu", data_format=CF), L.MaxPooling2D(3, 2, data_format=CF),
        L.Flatten(), L.Dense(4096, activation="relu"), L.Dropout(0.5), L.Dense(4096, activation="relu"),
        L.Dropout(0.5), L.Dense(10)])


def vgg_block(num_convs: int, num_channels: int) -> Any:
    blk = keras.Sequential()
    for _ in range(num_convs):
        blk.add(L.Conv2D(num_channels, 3, padding="same", activation="relu", data_format=CF))
    blk.add(L.MaxPooling2D(2, 2, data_format=CF))
    return blk


def vgg11() -> Any:
    net = keras.Sequential([vgg_block(n, c) for n, c in ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))])
    for layer in (L.Flatten(), L.Dense(4096, activation="relu"), L.Dropout(0.5), L.Dense(4096, activation="relu"),
                  L.Dropout(0.5), L.Dense(10)):
        net.add(layer)
    return net


def nin_block(num_channels: int, kernel_size: int, strides: int, padding: str) -> Any:
    return keras.Sequential([
        L.Conv2D(num_channels, kernel_size, strides=strides, padding=padding, activation="relu", data_format=CF),
        L.Conv2D(num_channels, 1, activation="relu", data_format=CF),
        L.Conv2D(num_channels, 1, activation="relu", data_format=CF)])


def nin() -> Any:
    # the book's TensorFlow NiN ends with Reshape((1, 1, 10)) and Flatten after the pool: the same (N, 10)
    return keras.Sequential([
        nin_block(96, 11, 4, "valid"), L.MaxPooling2D(3, 2, data_format=CF),
        nin_block(256, 5, 1, "same"), L.MaxPooling2D(3, 2, data_format=CF),
        nin_block(384, 3, 1, "same"), L.MaxPooling2D(3, 2, data_format=CF), L.Dropout(0.5),
        nin_block(10, 3, 1, "same"), L.GlobalAveragePooling2D(data_format=CF)])


class Inception(keras.Model):
    def __init__(self, c1: int, c2: tuple, c3: tuple, c4: int) -> None:
        super().__init__()
        self.b1_1 = L.Conv2D(c1, 1, activation="relu", data_format=CF)
        self.b2_1 = L.Conv2D(c2[0], 1, activation="relu", data_format=CF)
        self.b2_2 = L.Conv2D(c2[1], 3, padding="same", activation="relu", data_format=CF)
        self.b3_1 = L.Conv2D(c3[0], 1, activation="relu", data_format=CF)
        self.b3_2 = L.Conv2D(c3[1], 5, padding="same", activation="relu", data_format=CF)
        self.b4_1 = max_pool(3, 1, pad=1)
        self.b4_2 = L.Conv2D(c4, 1, activation="relu", data_format=CF)

    def call(self, x: Any) -> Any:
        b1 = self.b1_1(x)
        b2 = self.b2_2(self.b2_1(x))
        b3 = self.b3_2(self.b3_1(x))
        b4 = self.b4_2(self.b4_1(x))
        return keras.layers.Concatenate(axis=1)([b1, b2, b3, b4])  # the book: axis=-1, its channels_last axis

    def spec_order(self) -> list:
        return [self.b1_1, self.b2_1, self.b2_2, self.b3_1, self.b3_2, self.b4_2]


def googlenet() -> Any:
    # the book's TensorFlow b1 and pools pad "same" at stride 2; PyTorch's pads are symmetric
    b1 = keras.Sequential([conv(64, 7, 2, pad=3, activation="relu"), max_pool(3, 2, pad=1)])
    b2 = keras.Sequential([L.Conv2D(64, 1, activation="relu", data_format=CF),
                           L.Conv2D(192, 3, padding="same", activation="relu", data_format=CF), max_pool(3, 2, pad=1)])
    b3 = keras.Sequential([Inception(64, (96, 128), (16, 32), 32), Inception(128, (128, 192), (32, 96), 64),
                           max_pool(3, 2, pad=1)])
    b4 = keras.Sequential([Inception(192, (96, 208), (16, 48), 64), Inception(160, (112, 224), (24, 64), 64),
                           Inception(128, (128, 256), (24, 64), 64), Inception(112, (144, 288), (32, 64), 64),
                           Inception(256, (160, 320), (32, 128), 128), max_pool(3, 2, pad=1)])
    b5 = keras.Sequential([Inception(256, (160, 320), (32, 128), 128), Inception(384, (192, 384), (48, 128), 128),
                           L.GlobalAveragePooling2D(data_format=CF), L.Flatten()])
    return keras.Sequential([b1, b2, b3, b4, b5, L.Dense(10)])


class Residual(keras.Model):
    """The book's TensorFlow Residual; its stride-2 conv pads "same", PyTorch's (the spec) pads 1 each side."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = conv(num_channels, 3, strides, pad=1)
        self.conv2 = L.Conv2D(num_channels, 3, padding="same", data_format=CF)
        self.conv3 = L.Conv2D(num_channels, 1, strides=strides, data_format=CF) if use_1x1conv else None
        self.bn1, self.bn2 = bn(), bn()

    def call(self, X: Any, training: Any = None) -> Any:
        Y = relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return relu(Y + X)

    def spec_order(self) -> list:
        return [self.conv1, self.bn1, self.conv2, self.bn2] + ([self.conv3] if self.conv3 is not None else [])


def stem(channels: int = 64) -> Any:
    return keras.Sequential([conv(channels, 7, 2, pad=3), bn(), L.Activation("relu"), max_pool(3, 2, pad=1)])


def resnet18() -> Any:
    net = keras.Sequential([stem()])
    for i, (num_residuals, channels) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        net.add(keras.Sequential([Residual(channels, use_1x1conv=True, strides=2) if j == 0 and i != 0
                                  else Residual(channels) for j in range(num_residuals)]))
    net.add(L.GlobalAveragePooling2D(data_format=CF))
    net.add(L.Dense(10))
    return net


class ConvBlock(keras.layers.Layer):
    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bn, self.relu = bn(), L.ReLU()
        self.conv = L.Conv2D(num_channels, 3, padding="same", data_format=CF)
        self.listLayers = [self.bn, self.relu, self.conv]

    def call(self, x: Any, training: Any = None) -> Any:
        y = self.conv(self.relu(self.bn(x, training=training)))
        return keras.layers.concatenate([x, y], axis=1)


class DenseBlock(keras.layers.Layer):
    def __init__(self, num_convs: int, num_channels: int) -> None:
        super().__init__()
        self.listLayers = [ConvBlock(num_channels) for _ in range(num_convs)]

    def call(self, x: Any, training: Any = None) -> Any:
        for layer in self.listLayers:
            x = layer(x, training=training)
        return x

    def spec_order(self) -> list:
        return [sub for blk in self.listLayers for sub in (blk.bn, blk.conv)]


def transition_block(num_channels: int) -> Any:
    return keras.Sequential([bn(), L.ReLU(), L.Conv2D(num_channels, 1, data_format=CF),
                             L.AveragePooling2D(2, 2, data_format=CF)])


def densenet() -> Any:
    net = stem()
    num_channels, growth_rate = 64, 32
    for i, num_convs in enumerate((4, 4, 4, 4)):
        net.add(DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != 3:
            num_channels //= 2
            net.add(transition_block(num_channels))
    for layer in (bn(), L.ReLU(), L.GlobalAveragePooling2D(data_format=CF), L.Dense(10)):
        net.add(layer)
    return net


class ResNeXtBlock(keras.Model):
    def __init__(self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                 strides: int = 1) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = L.Conv2D(bot_channels, 1, strides=1, data_format=CF)
        self.conv2 = conv(bot_channels, 3, strides, pad=1, groups=bot_channels // groups)
        self.conv3 = L.Conv2D(num_channels, 1, strides=1, data_format=CF)
        self.bn1, self.bn2, self.bn3 = bn(), bn(), bn()
        self.conv4 = L.Conv2D(num_channels, 1, strides=strides, data_format=CF) if use_1x1conv else None
        self.bn4 = bn() if use_1x1conv else None

    def call(self, X: Any, training: Any = None) -> Any:
        Y = relu(self.bn1(self.conv1(X), training=training))
        Y = relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X), training=training)
        return relu(Y + X)

    def spec_order(self) -> list:
        extra = [self.conv4, self.bn4] if self.conv4 is not None else []
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3] + extra


def regnetx32() -> Any:
    def stage(depth: int, num_channels: int, groups: int, bot_mul: float) -> Any:
        blk = keras.Sequential()
        for i in range(depth):
            blk.add(ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv=True, strides=2) if i == 0
                    else ResNeXtBlock(num_channels, groups, bot_mul))
        return blk

    net = keras.Sequential([keras.Sequential([conv(32, 3, 2, pad=1), bn(), L.Activation("relu")])])
    for depth, channels in ((4, 32), (6, 80)):
        net.add(stage(depth, channels, 16, 1))
    net.add(keras.Sequential([L.GlobalAveragePooling2D(data_format=CF), L.Dense(10)]))
    return net


# ------------------------------------------------------------------------------------------ sequence chapters
class RNNLM(keras.Model):
    """The book's concise language model: one-hot tokens, the recurrent layer, a Dense over the vocabulary."""

    def __init__(self, rnn: Any, vocab_size: int = 28) -> None:
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.linear = L.Dense(vocab_size)

    def call(self, X: Any) -> Any:
        return self.linear(self.rnn(tf.one_hot(X, self.vocab_size)))

    def spec_order(self) -> list:
        return [self.rnn, self.linear]


def lm(kind: str) -> Any:
    h = 32
    if kind == "deep_gru":  # the book's deep GRU: a stack of cells in one RNN layer
        return RNNLM(L.RNN([L.GRUCell(h) for _ in range(2)], return_sequences=True))
    if kind == "bi_lstm":
        return RNNLM(L.Bidirectional(L.LSTM(h, return_sequences=True)))
    return RNNLM({"rnn": L.SimpleRNN, "gru": L.GRU, "lstm": L.LSTM}[kind](h, return_sequences=True))


class DotProductAttention(keras.layers.Layer):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = L.Dropout(dropout)

    def call(self, queries: Any, keys: Any, values: Any, training: Any = None) -> Any:
        d = queries.shape[-1]
        scores = tf.matmul(queries, keys, transpose_b=True) / tf.math.sqrt(tf.cast(d, dtype=tf.float32))
        self.attention_weights = tf.nn.softmax(scores, axis=-1)  # masked_softmax with no valid_lens
        return tf.matmul(self.dropout(self.attention_weights, training=training), values)


class MultiHeadAttention(keras.layers.Layer):
    def __init__(self, num_hiddens: int, num_heads: int, dropout: float, bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = L.Dense(num_hiddens, use_bias=bias)
        self.W_k = L.Dense(num_hiddens, use_bias=bias)
        self.W_v = L.Dense(num_hiddens, use_bias=bias)
        self.W_o = L.Dense(num_hiddens, use_bias=bias)

    def call(self, queries: Any, keys: Any, values: Any, training: Any = None) -> Any:
        queries = self.transpose_qkv(self.W_q(queries))
        keys = self.transpose_qkv(self.W_k(keys))
        values = self.transpose_qkv(self.W_v(values))
        output = self.attention(queries, keys, values, training=training)
        return self.W_o(self.transpose_output(output))

    def transpose_qkv(self, X: Any) -> Any:
        X = tf.reshape(X, shape=(X.shape[0], X.shape[1], self.num_heads, -1))
        X = tf.transpose(X, perm=(0, 2, 1, 3))
        return tf.reshape(X, shape=(-1, X.shape[2], X.shape[3]))

    def transpose_output(self, X: Any) -> Any:
        X = tf.reshape(X, shape=(-1, self.num_heads, X.shape[1], X.shape[2]))
        X = tf.transpose(X, perm=(0, 2, 1, 3))
        return tf.reshape(X, shape=(X.shape[0], X.shape[1], -1))

    def spec_order(self) -> list:
        return [self.W_q, self.W_k, self.W_v, self.W_o]


class PositionalEncoding(keras.layers.Layer):
    def __init__(self, num_hiddens: int, dropout: float, max_len: int = 1000) -> None:
        super().__init__()
        self.dropout = L.Dropout(dropout)
        self.P = np.zeros((1, max_len, num_hiddens))
        X = np.arange(max_len, dtype=np.float32).reshape(-1, 1) / np.power(
            10000, np.arange(0, num_hiddens, 2, dtype=np.float32) / num_hiddens)
        self.P[:, :, 0::2] = np.sin(X)
        self.P[:, :, 1::2] = np.cos(X)

    def call(self, X: Any, training: Any = None) -> Any:
        X = X + self.P[:, :X.shape[1], :].astype(np.float32)
        return self.dropout(X, training=training)


class AddNorm(keras.layers.Layer):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = L.Dropout(dropout)
        self.ln = ln()  # the book's TensorFlow AddNorm keeps Keras's epsilon (1e-3); PyTorch's is 1e-5

    def call(self, X: Any, Y: Any, training: Any = None) -> Any:
        return self.ln(self.dropout(Y, training=training) + X)


class PositionWiseFFN(keras.layers.Layer):
    def __init__(self, ffn_num_hiddens: int, ffn_num_outputs: int) -> None:
        super().__init__()
        self.dense1 = L.Dense(ffn_num_hiddens)
        self.relu = L.ReLU()
        self.dense2 = L.Dense(ffn_num_outputs)

    def call(self, X: Any) -> Any:
        return self.dense2(self.relu(self.dense1(X)))


class TransformerEncoderBlock(keras.layers.Layer):
    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float,
                 bias: bool = False) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(dropout)
        self.ffn = PositionWiseFFN(ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(dropout)

    def call(self, X: Any, training: Any = None) -> Any:
        Y = self.addnorm1(X, self.attention(X, X, X, training=training), training=training)
        return self.addnorm2(Y, self.ffn(Y), training=training)

    def spec_order(self) -> list:
        return [self.attention, self.addnorm1.ln, self.ffn.dense1, self.ffn.dense2, self.addnorm2.ln]


class TransformerEncoder(keras.Model):
    def __init__(self, vocab_size: int = 200, num_hiddens: int = 24, ffn_num_hiddens: int = 48, num_heads: int = 8,
                 num_blks: int = 2, dropout: float = 0.5, use_bias: bool = False) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.embedding = L.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blks = [TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout, use_bias)
                     for _ in range(num_blks)]

    def call(self, X: Any, training: Any = None) -> Any:
        X = self.pos_encoding(self.embedding(X) * tf.math.sqrt(tf.cast(self.num_hiddens, dtype=tf.float32)),
                              training=training)
        for blk in self.blks:
            X = blk(X, training=training)
        return X

    def spec_order(self) -> list:
        return [self.embedding, *self.blks]


class PatchEmbedding(keras.layers.Layer):
    def __init__(self, patch_size: int = 16, num_hiddens: int = 512) -> None:
        super().__init__()
        self.conv = L.Conv2D(num_hiddens, patch_size, strides=patch_size, data_format=CF)

    def call(self, X: Any) -> Any:
        Y = self.conv(X)  # (N, C, h, w) -> (N, h * w, C), as PyTorch's flatten(2).transpose(1, 2)
        return tf.transpose(tf.reshape(Y, (tf.shape(Y)[0], Y.shape[1], -1)), (0, 2, 1))


class ViTMLP(keras.layers.Layer):
    def __init__(self, mlp_num_hiddens: int, mlp_num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dense1 = L.Dense(mlp_num_hiddens)
        self.gelu = L.Activation(lambda x: keras.activations.gelu(x, approximate=False))  # PyTorch's nn.GELU()
        self.dropout1 = L.Dropout(dropout)
        self.dense2 = L.Dense(mlp_num_outputs)
        self.dropout2 = L.Dropout(dropout)

    def call(self, x: Any, training: Any = None) -> Any:
        x = self.dropout1(self.gelu(self.dense1(x)), training=training)
        return self.dropout2(self.dense2(x), training=training)


class ViTBlock(keras.layers.Layer):
    def __init__(self, num_hiddens: int, mlp_num_hiddens: int, num_heads: int, dropout: float,
                 use_bias: bool = False) -> None:
        super().__init__()
        self.ln1 = ln()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.ln2 = ln()
        self.mlp = ViTMLP(mlp_num_hiddens, num_hiddens, dropout)

    def call(self, X: Any, training: Any = None) -> Any:
        Y = self.ln1(X)
        X = X + self.attention(Y, Y, Y, training=training)
        return X + self.mlp(self.ln2(X), training=training)

    def spec_order(self) -> list:
        return [self.ln1, self.attention, self.ln2, self.mlp.dense1, self.mlp.dense2]


class ViT(keras.Model):
    """No TensorFlow ViT in the book: its PyTorch ViT in Keras. The class token and position embedding are
    made in ``build`` (Keras's deferred form) instead of from ``img_size`` in the constructor."""

    def __init__(self, patch_size: int = 16, num_hiddens: int = 512, mlp_num_hiddens: int = 2048, num_heads: int = 8,
                 num_blks: int = 2, emb_dropout: float = 0.1, blk_dropout: float = 0.1, use_bias: bool = False,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(patch_size, num_hiddens)
        self.dropout = L.Dropout(emb_dropout)
        self.blks = [ViTBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout, use_bias) for _ in range(num_blks)]
        self.head = keras.Sequential([ln(), L.Dense(num_classes)])

    def build(self, input_shape: Any) -> None:
        d = self.patch_embedding.conv.filters
        steps = (input_shape[2] // self.patch_embedding.conv.kernel_size[0]) * \
            (input_shape[3] // self.patch_embedding.conv.kernel_size[1]) + 1  # the patches and the class token
        self.cls_token = self.add_weight(shape=(1, 1, d), initializer="zeros", name="cls_token")
        self.pos_embedding = self.add_weight(shape=(1, steps, d), initializer="random_normal", name="pos_embedding")

    def call(self, X: Any, training: Any = None) -> Any:
        X = self.patch_embedding(X)
        X = tf.concat([tf.broadcast_to(self.cls_token, (tf.shape(X)[0], 1, X.shape[2])), X], 1)
        X = self.dropout(X + self.pos_embedding, training=training)
        for blk in self.blks:
            X = blk(X, training=training)
        return self.head(X[:, 0])

    def spec_order(self) -> list:
        return [self.patch_embedding.conv, self.cls_token, self.pos_embedding, *self.blks, self.head]


BOOK: dict[str, Callable[[], Any]] = {
    "mlp": lambda: keras.Sequential([L.Dense(256, activation="relu"), L.Dense(10)]),
    "lenet": lenet, "bn_lenet": bn_lenet, "alexnet": alexnet, "vgg11": vgg11, "nin": nin, "googlenet": googlenet,
    "resnet18": resnet18, "densenet": densenet, "regnetx32": regnetx32,
    "rnn_lm": lambda: lm("rnn"), "gru_lm": lambda: lm("gru"), "lstm_lm": lambda: lm("lstm"),
    "deep_gru_lm": lambda: lm("deep_gru"), "bi_lstm_lm": lambda: lm("bi_lstm"),
    "transformer_encoder": TransformerEncoder, "vit": ViT,
}


# ------------------------------------------------------------------------------------------ layout knowledge
def _gru_gates(w: np.ndarray) -> np.ndarray:
    """PyTorch's GRU gates (r, z, n) stacked on axis 0 -> Keras's (z, r, h)."""
    r, z, n = np.split(w, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def _cells(layer: Any) -> list:
    """The recurrent cells of a Keras RNN layer in PyTorch's parameter order (l0, l0_reverse, l1, ...)."""
    if isinstance(layer, L.Bidirectional):
        return [layer.forward_layer.cell, layer.backward_layer.cell]
    cell = layer.cell
    return list(cell.cells) if isinstance(cell, L.StackedRNNCells) else [cell]


def slots(item: Any) -> list[tuple[int, Any, Callable[..., np.ndarray]]]:
    """``(number of canonical parameters, Keras variable, canonical arrays -> its value)`` for one leaf."""
    same = lambda w: w  # noqa: E731
    if isinstance(item, keras.Variable):
        return [(1, item, same)]
    if isinstance(item, L.Conv2D):
        kernel = (1, item.kernel, lambda w: np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO
        return [kernel] + ([(1, item.bias, same)] if item.use_bias else [])
    if isinstance(item, L.Dense):
        return [(1, item.kernel, lambda w: w.T)] + ([(1, item.bias, same)] if item.use_bias else [])
    if isinstance(item, L.BatchNormalization):
        return [(1, v, same) for v in (item.gamma, item.beta, item.moving_mean, item.moving_variance)]
    if isinstance(item, L.LayerNormalization):
        return [(1, item.gamma, same), (1, item.beta, same)]
    if isinstance(item, L.Embedding):
        return [(1, item.embeddings, same)]
    out: list = []
    for cell in _cells(item):
        gates = _gru_gates if isinstance(cell, L.GRUCell) else same
        out += [(1, cell.kernel, lambda w, g=gates: g(w).T), (1, cell.recurrent_kernel, lambda w, g=gates: g(w).T)]
        if cell.use_bias and isinstance(cell, L.GRUCell):  # rows: input bias, recurrent bias
            out.append((2, cell.bias, lambda bi, bh: np.stack([_gru_gates(bi), _gru_gates(bh)])))
        elif cell.use_bias:  # one bias per gate holds b_ih + b_hh
            out.append((2, cell.bias, lambda bi, bh: bi + bh))
    return out


def leaves(layer: Any) -> list:
    """The hand-built model's parameter-holding leaves, in the spec's order."""
    if isinstance(layer, keras.Variable):
        return [layer]
    if hasattr(layer, "spec_order"):
        return [leaf for sub in layer.spec_order() for leaf in leaves(sub)]
    if isinstance(layer, keras.Sequential):
        return [leaf for sub in layer.layers for leaf in leaves(sub)]
    return [layer] if layer.weights else []


def pairs(hand: Any, names: list[str]) -> list[tuple[list[str], Any, Callable[..., np.ndarray]]]:
    """Canonical names matched in order with the hand-built variables that hold them."""
    out, rest = [], list(names)
    for leaf in leaves(hand):
        for count, var, fn in slots(leaf):
            out.append((rest[:count], var, fn))
            rest = rest[count:]
    assert not rest, f"no hand-built variable for {rest}"
    return out


# ------------------------------------------------------------------------------------------ helpers
def _data(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name in zoo.INT_INPUTS:
        return rng.integers(0, 28 if name.endswith("_lm") else 200, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _book(name: str, x: np.ndarray, abstract: bool = False) -> tuple[Any, tuple]:
    """The book's model after its own build on first call (symbolic with no values when abstract), and the
    shape of its output."""
    net = BOOK[name]()
    if abstract:
        with keras.StatelessScope(initialize_variables=False):
            net.build(x.shape)
        # Keras would give these values at the next symbolic call anywhere in the process: keep them abstract
        pending = global_state.get_global_attribute("uninitialized_variables") or []
        ours = {id(v) for v in net.variables}
        global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])
        return net, tuple(net.compute_output_shape(x.shape))
    return net, tuple(net(x, training=False).shape)


def _load_book(book: Any, report: di.ShapeReport, weights: dict[str, np.ndarray]) -> None:
    for names, var, fn in pairs(book, list(report.params)):
        var.assign(fn(*[weights[n] for n in names]))


def _count(variables: list) -> int:
    return sum(math.prod(v.shape) for v in variables)


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_counts_and_shapes_equal_the_books_keras_code(name: str) -> None:
    shape, abstract = zoo.BOOK_INPUTS[name], name in ABSTRACT
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    x = _data(name, shape)
    book, out_shape = _book(name, x, abstract)
    model = di.compile(zoo.MODELS[name](), "tensorflow")
    # (portable weights for the output check below; Keras infers the shapes either way)
    report = model.apply_init(di.ShapeDtype(shape, dtype), abstract=True) if abstract else \
        model.apply_init(x, init="xavier_uniform", key=1)
    assert report.diff(di.infer_shapes(zoo.MODELS[name](), shape, dtype=dtype)) == []
    assert all(p.source == "native" for p in report.params.values())  # Keras defers every dim itself
    assert all(info.source == "native" for info in report.layers.values())  # each layer's shape: Keras's own
    matched = pairs(book, list(report.params))
    # the same shapes after layout translation: each canonical shape, laid out as the book's Keras holds it
    for names, var, fn in matched:
        views = [np.broadcast_to(np.float32(0), report.params[n].shape) for n in names]  # no memory
        assert fn(*views).shape == tuple(var.shape), names
    assert len(matched) == len(book.weights)  # every book variable holds spec parameters
    # counts as Keras counts them. Keras's SimpleRNN and LSTM keep one bias per gate where PyTorch (the spec)
    # keeps two, b_ih and b_hh: the report counts both, Keras one, the same function either way
    folded = sum(sum(math.prod(report.params[n].shape) for n in names) - math.prod(var.shape)
                 for names, var, _ in matched)
    lm_folds = {"rnn_lm": 32, "lstm_lm": 4 * 32, "bi_lstm_lm": 2 * 4 * 32}
    assert folded == lm_folds.get(name, 0)
    assert report.trainable_params == _count(book.trainable_weights) + folded
    assert report.total_params == book.count_params() + folded
    assert model.native.count_params() == book.count_params()
    assert report.output_shape == out_shape
    if abstract:
        assert all(v._value is None for v in model.native.variables if "seed" not in v.path)
        return
    # the same weights give the same outputs (inference mode)
    _load_book(book, report, model.export_weights())
    xs = _data(name, (2,) + shape[1:], seed=3)
    np.testing.assert_allclose(model.to_numpy(model(xs)), np.asarray(book(xs, training=False)), **TOL)


def test_resnet18_initialized_at_96_runs_at_64_and_128() -> None:
    x96 = _data("resnet18", (1, 1, 96, 96))
    model = di.compile(zoo.resnet18(), "tensorflow")
    model.apply_init(x96, key=0)
    book, _ = _book("resnet18", x96)
    _load_book(book, model.report, model.export_weights())
    for size in (64, 128):
        x = _data("resnet18", (2, 1, size, size), seed=size)
        y = model(x)
        assert tuple(y.shape) == (2, 10)
        np.testing.assert_allclose(model.to_numpy(y), np.asarray(book(x, training=False)), **TOL)
    assert model.report.input_shape == (1, 1, 96, 96)  # no re-initialization: the same parameters


@pytest.mark.parametrize("varying", [False, True])
def test_gru_language_model_runs_at_any_sequence_length(varying: bool) -> None:
    model = di.compile(zoo.MODELS["gru_lm"](), "tensorflow")
    if varying:  # initialized with no sequence length at all
        model.apply_init(di.ShapeDtype((None, None), "int64"), key=0)
        assert model.report.output_shape == (None, None, 28)
    else:
        model.apply_init(_data("gru_lm", (2, 35)), key=0)
    book, _ = _book("gru_lm", _data("gru_lm", (2, 35)))
    _load_book(book, model.report, model.export_weights())
    for steps in (1, 7, 35, 120):
        x = _data("gru_lm", (3, steps), seed=steps)
        y = model(x)
        assert tuple(y.shape) == (3, steps, 28)
        np.testing.assert_allclose(model.to_numpy(y), np.asarray(book(x)), **TOL)
