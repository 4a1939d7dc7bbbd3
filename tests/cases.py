"""Specs that together use every layer, option and combinator of the core, with small inputs.

Shared by the contract suite (every backend) and the parity checks. Each case is (id, spec factory, input
shape, dtype).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

import deferinit as di


class Case(NamedTuple):
    id: str
    make: Callable[[], di.LazyModel]
    shape: tuple
    dtype: str = "float32"

    def data(self, seed: int = 0, batch: int | None = None) -> np.ndarray:
        shape = self.shape if batch is None else (batch,) + tuple(self.shape[1:])
        rng = np.random.default_rng(seed)
        if self.dtype.startswith("int"):
            return rng.integers(0, 50, size=shape).astype(self.dtype)
        return rng.standard_normal(shape).astype(self.dtype)


def _tied() -> di.LazyModel:
    shared = di.Dense(8, activation="tanh")
    return di.LazyModel([di.Dense(8), shared, shared, di.Dense(3)])


CASES = [
    Case("mlp", lambda: di.LazyModel([di.Dense(16, activation="relu"), di.Dense(4)]), (2, 20)),
    Case("dense_options", lambda: di.LazyModel([
        di.Dense(7, use_bias=False, activation="sigmoid"), di.Dense(5, activation="tanh", in_features=7),
        di.Dense(6, activation="gelu"), di.Dense(3, activation="softmax")]), (3, 9)),
    Case("dense_rank3", lambda: di.LazyModel([di.Dense(6, activation="relu"), di.LayerNorm(), di.Dense(2)]), (2, 5, 4)),
    Case("activations", lambda: di.LazyModel([
        di.Dense(6), di.ReLU(), di.Dense(6), di.Sigmoid(), di.Dense(6), di.Tanh(), di.Dense(6), di.GELU(),
        di.Activation("silu"), di.Dropout(0.5), di.Identity(), di.Dense(4), di.Softmax()]), (2, 5)),
    Case("lenet", lambda: di.LazyModel([
        di.Conv2D(6, 5, padding=2, activation="sigmoid"), di.AvgPool2D(2, stride=2),
        di.Conv2D(16, 5, activation="sigmoid"), di.AvgPool2D(2, stride=2), di.Flatten(),
        di.Dense(120, activation="sigmoid"), di.Dense(84, activation="sigmoid"), di.Dense(10)]), (2, 1, 28, 28)),
    Case("conv_options", lambda: di.LazyModel([
        di.Conv2D(8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), activation="relu"),
        di.Conv2D(8, 3, groups=4, padding="same", use_bias=False), di.Conv2D(6, 3, stride=2, padding="same"),
        di.Conv2D(4, 1, padding="valid", in_channels=6), di.MaxPool2D(3, stride=2, padding=1),
        di.AvgPool2D(2, stride=1, padding=1), di.GlobalAvgPool2D(), di.Dense(3)]), (2, 3, 17, 15)),
    Case("conv1d", lambda: di.LazyModel([
        di.Conv1D(8, 3, padding=1, activation="relu"), di.Conv1D(8, 3, stride=2, groups=2, dilation=2),
        di.BatchNorm(), di.Flatten(), di.Dense(4)]), (2, 4, 16)),
    Case("batchnorm", lambda: di.LazyModel([
        di.Conv2D(6, 3), di.BatchNorm(eps=1e-3, momentum=0.2), di.ReLU(), di.Flatten(), di.Dense(5),
        di.BatchNorm(), di.Dense(2)]), (4, 3, 8, 8)),
    Case("residual", lambda: di.LazyModel([
        di.Conv2D(8, 3, padding=1), di.BatchNorm(), di.ReLU(),
        di.Residual(di.Sequential([di.Conv2D(8, 3, padding=1), di.BatchNorm(), di.ReLU(),
                                   di.Conv2D(8, 3, padding=1), di.BatchNorm()]), activation="relu"),
        di.Residual(di.Sequential([di.Conv2D(16, 3, stride=2, padding=1), di.BatchNorm()]),
                    shortcut=di.Conv2D(16, 1, stride=2), activation="relu"),
        di.GlobalAvgPool2D(), di.Dense(3)]), (2, 3, 12, 12)),
    Case("concat", lambda: di.LazyModel([
        di.Conv2D(4, 3, padding=1, activation="relu"),
        di.Concat([di.Conv2D(3, 1, activation="relu"),
                   di.Sequential([di.Conv2D(2, 1, activation="relu"), di.Conv2D(5, 3, padding=1, activation="relu")]),
                   di.Sequential([di.MaxPool2D(3, stride=1, padding=1), di.Conv2D(2, 1)])]),
        di.GlobalAvgPool2D(), di.Dense(3)]), (2, 3, 10, 10)),
    Case("tied", _tied, (2, 6)),
    Case("named", lambda: di.LazyModel([
        di.Dense(8, name="hidden", activation="relu"),
        di.Sequential([di.Dense(8, name="inner"), di.ReLU()], name="block"), di.Dense(2, name="head")]), (2, 5)),
    Case("nested_model", lambda: di.LazyModel([
        di.LazyModel([di.Dense(6, activation="relu"), di.Dense(6)]), di.Residual(di.Dense(6)), di.Dense(2)]), (2, 4)),
    Case("embedding", lambda: di.LazyModel([di.Embedding(50, 8), di.LayerNorm(), di.Flatten(), di.Dense(3)]),
         (2, 5), "int64"),
    Case("channels_last", lambda: di.LazyModel([
        di.Conv2D(6, 3, padding=1, activation="relu"), di.BatchNorm(), di.MaxPool2D(2),
        di.Concat([di.Conv2D(3, 1), di.Conv2D(2, 3, padding=1)]),
        di.Residual(di.Conv2D(5, 3, padding="same")), di.AvgPool2D(2), di.Flatten(), di.Dense(4)],
        data_format="channels_last"), (2, 12, 10, 3)),
]

BY_ID = {c.id: c for c in CASES}

# --- layers-a ---
# the layers of deferinit.layers_extra and the new options of the pools, LayerNorm, GELU and the recurrent layers
CASES += [
    Case("activations_extra", lambda: di.LazyModel([
        di.Dense(8), di.Scale(6.0), di.ReLU6(), di.Dense(8), di.SiLU(), di.Dense(8), di.Scale(4.0), di.HardSwish(),
        di.Dense(8), di.Scale(4.0), di.HardSigmoid(), di.Dense(8), di.LeakyReLU(0.2), di.Dense(8, activation="leaky_relu"),
        di.GELU(approximate="tanh"), di.Dense(8, activation="gelu_tanh"), di.Scale(6.0),
        di.Dense(8, activation="relu6"), di.Dense(8, activation="hard_swish"), di.Activation("hard_sigmoid"),
        di.Dense(3, activation="silu")]), (2, 5)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("recurrent_last", lambda: di.LazyModel([
        di.Embedding(50, 6), di.LSTM(5, return_sequences=True), di.Take(-1), di.Dense(4)]), (2, 7), "int64"),
    Case("recurrent_last_bidirectional", lambda: di.LazyModel([
        di.Embedding(50, 6), di.GRU(5, bidirectional=True, num_layers=2, return_sequences=False),
        di.Dense(4)]), (2, 7), "int64"),
    Case("recurrent_last_rnn", lambda: di.LazyModel([
        di.RNN(4, bidirectional=True, return_sequences=False), di.Dense(3)]), (3, 5, 2)),
    Case("take_negative", lambda: di.LazyModel([di.Dense(4), di.Take(-2, axis=1), di.Dense(3)]), (2, 5, 3)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("pools_extra", lambda: di.LazyModel([
        di.Conv2D(4, 3, padding=1), di.MaxPool2D(3, stride=2, padding=1, ceil_mode=True),
        di.AvgPool2D(2, stride=2, padding=1, ceil_mode=True),
        di.AvgPool2D(3, stride=2, padding=1, count_include_pad=False),
        di.AvgPool2D(2, stride=3, padding=1, ceil_mode=True, count_include_pad=False), di.AdaptiveAvgPool2D((3, 2)),
        di.Flatten(), di.Dense(3)]), (2, 3, 23, 21)),
    Case("adaptive_pool", lambda: di.LazyModel([
        di.Conv2D(4, 3), di.AdaptiveAvgPool2D(3), di.Conv2D(3, 1), di.AdaptiveAvgPool2D((4, 5)), di.Flatten(),
        di.Dense(2)]), (2, 3, 12, 9)),
    Case("pools_extra_channels_last", lambda: di.LazyModel([
        di.Conv2D(4, 3), di.MaxPool2D(2, ceil_mode=True), di.AvgPool2D(3, stride=2, padding=1, ceil_mode=True,
                                                                      count_include_pad=False),
        di.AdaptiveAvgPool2D((2, 3)), di.Flatten(), di.Dense(3)], data_format="channels_last"), (2, 12, 11, 3)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("groupnorm", lambda: di.LazyModel([
        di.Conv2D(8, 3, padding=1), di.GroupNorm(4), di.ReLU(), di.Conv2D(6, 3), di.GroupNorm(3, eps=1e-3),
        di.Conv2D(4, 1), di.GroupNorm(1), di.GroupNorm(4), di.Flatten(), di.Dense(6), di.GroupNorm(2),
        di.Dense(3)]), (2, 3, 8, 7)),
    Case("groupnorm_channels_last", lambda: di.LazyModel([
        di.Conv2D(6, 3), di.GroupNorm(3), di.Conv2D(4, 1), di.GroupNorm(2),
        di.GlobalAvgPool2D(), di.Dense(2)], data_format="channels_last"), (2, 7, 8, 3)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("layernorm_axis", lambda: di.LazyModel([
        di.Conv2D(6, 3, padding=1), di.LayerNorm(axis="channels"), di.Conv2D(4, 1), di.LayerNorm(axis=1, eps=1e-6),
        di.LayerNorm(axis=2), di.LayerNorm(axis=-2), di.LayerNorm(), di.Flatten(), di.Dense(5),
        di.LayerNorm(axis="channels"), di.Dense(3)]), (2, 3, 5, 7)),
    Case("layernorm_axis_channels_last", lambda: di.LazyModel([
        di.Conv2D(6, 3), di.LayerNorm(axis="channels"), di.LayerNorm(axis=1), di.Conv2D(4, 1),
        di.Flatten(), di.Dense(2)], data_format="channels_last"), (2, 7, 8, 3)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("layerscale_droppath", lambda: di.LazyModel([
        di.Conv2D(6, 3, padding=1),
        di.Residual(di.Sequential([di.Conv2D(6, 3, padding=1, groups=6), di.LayerNorm(axis="channels"),
                                   di.Conv2D(12, 1, activation="gelu"), di.Conv2D(6, 1), di.LayerScale(0.5),
                                   di.DropPath(0.2)])),
        di.LayerScale(), di.GlobalAvgPool2D(), di.LayerScale(2.0), di.Dense(3)]), (2, 3, 6, 5)),
    Case("layerscale_channels_last", lambda: di.LazyModel([
        di.Conv2D(6, 3), di.LayerScale(0.25), di.DropPath(0.5), di.Conv2D(4, 1), di.LayerScale(3.0), di.Flatten(),
        di.Dense(2)],
        data_format="channels_last"), (2, 7, 8, 3)),
]
BY_ID = {c.id: c for c in CASES}
# --- merges ---
# Add and Multiply (deferinit.merges): squeeze-and-excitation's broadcast product, a three-way sum, a merge inside
# a Residual, and the channels-last layout
CASES += [
    Case("merges", lambda: di.LazyModel([
        di.Conv2D(6, 3, padding=1),
        di.Multiply([di.Identity(), di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(3, 1, activation="relu"),
                                                   di.Conv2D(6, 1), di.Sigmoid()])], name="se"),
        di.Add([di.Conv2D(6, 1), di.Identity(), di.Sequential([di.Conv2D(6, 3, padding=1), di.BatchNorm()])]),
        di.Residual(di.Multiply([di.Conv2D(6, 1, activation="tanh"), di.Conv2D(6, 1, activation="sigmoid")])),
        di.GlobalAvgPool2D(), di.Dense(3)]), (2, 3, 7, 6)),
    Case("merges_dense", lambda: di.LazyModel([
        di.Dense(8), di.Add([di.Dense(8, activation="tanh"), di.Dense(8)]),
        di.Multiply([di.Dense(8, activation="sigmoid"), di.Identity(), di.Dense(1)]), di.Dense(3)]), (3, 5)),
    Case("merges_channels_last", lambda: di.LazyModel([
        di.Conv2D(4, 3),
        di.Multiply([di.Identity(), di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(4, 1, activation="sigmoid")])]),
        di.Add([di.Conv2D(4, 1), di.Identity()]), di.Flatten(), di.Dense(2)],
        data_format="channels_last"), (2, 7, 6, 3)),
]
BY_ID = {c.id: c for c in CASES}
# --- position table ---
# PositionEmbedding(max_len=): a (1, max_len, D) table of which an input of T steps gets the first T rows
CASES += [
    Case("position_table", lambda: di.LazyModel([
        di.Embedding(50, 8), di.PositionEmbedding(max_len=12), di.LayerNorm(), di.Dense(3)]), (2, 7), "int64"),
]
BY_ID = {c.id: c for c in CASES}
# --- layers-b ---
# GlobalAvgPool2D(keepdims=True), Conv1DTranspose/Conv2DTranspose and Upsample2D (deferinit.layers_up)
CASES += [
    Case("gap_keepdims", lambda: di.LazyModel([
        di.Conv2D(6, 3, padding=1), di.GlobalAvgPool2D(keepdims=True), di.Conv2D(4, 1, activation="relu"),
        di.Conv2D(5, 1), di.Flatten(), di.Dense(3)]), (2, 3, 6, 5)),
    Case("gap_keepdims_channels_last", lambda: di.LazyModel([
        di.Conv2D(6, 3), di.GlobalAvgPool2D(keepdims=True), di.Conv2D(4, 1), di.Flatten(), di.Dense(2)],
        data_format="channels_last"), (2, 7, 8, 3)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("conv_transpose", lambda: di.LazyModel([
        di.Conv2D(4, 3, padding=1), di.Conv2DTranspose(5, 3, stride=2, padding=1, output_padding=1, activation="relu"),
        di.Conv2DTranspose(3, (2, 3), stride=(2, 1), use_bias=False), di.Conv2DTranspose(2, 3, dilation=2, padding=1),
        di.Flatten(), di.Dense(3)]), (2, 3, 4, 3)),
    Case("conv_transpose_channels_last", lambda: di.LazyModel([
        di.Conv2DTranspose(4, 4, stride=2, padding=1), di.Conv2D(3, 3), di.Flatten(), di.Dense(2)],
        data_format="channels_last"), (2, 3, 4, 3)),
    Case("conv1d_transpose", lambda: di.LazyModel([
        di.Conv1D(4, 3), di.Conv1DTranspose(6, 3, stride=3, padding=1, output_padding=2, activation="tanh"),
        di.Conv1DTranspose(3, 5, in_channels=6), di.Flatten(), di.Dense(2)]), (2, 3, 6)),
]
BY_ID = {c.id: c for c in CASES}
CASES += [
    Case("upsample", lambda: di.LazyModel([
        di.Conv2D(4, 3, padding=1), di.Upsample2D(2, mode="bilinear"), di.Conv2D(3, 3, stride=2),
        di.Upsample2D((2, 3)), di.Conv2DTranspose(2, 2, stride=2), di.Upsample2D((3, 1), mode="bilinear"),
        di.Flatten(), di.Dense(3)]), (2, 3, 4, 3)),
    Case("upsample_channels_last", lambda: di.LazyModel([
        di.Conv2D(4, 1), di.Upsample2D((2, 3), mode="bilinear"), di.Conv2D(3, 3), di.Upsample2D(2),
        di.Flatten(), di.Dense(2)], data_format="channels_last"), (2, 3, 4, 3)),
]
BY_ID = {c.id: c for c in CASES}
