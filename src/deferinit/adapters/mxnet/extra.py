# mypy: allow-subclassing-any
"""The Gluon builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Gluon's own
blocks wherever Gluon has one."""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import gluon, symbol
from mxnet.gluon import nn

from ...extend import register_builder
from ...layers import AvgPool2D, LayerNorm, MaxPool2D
from ...layers_extra import AdaptiveAvgPool2D, DropPath, GroupNorm, HardSigmoid, HardSwish, LayerScale, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from . import modules, nan, sequence
from .graph import frozen, traced_rank
from .leaves import Built, _activation

register_builder("mxnet", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register_builder("mxnet", LeakyReLU)
def _leaky_relu(layer: LeakyReLU, fmt: str) -> Built:
    return nn.LeakyReLU(layer.negative_slope), {}


class LastStep(gluon.HybridBlock):
    """The recurrent block, then ``(N, T, H * directions) -> (N, H * directions)``: the forward direction's last
    step and the backward direction's first (its last), as Keras's ``return_sequences=False``."""

    def __init__(self, inner: gluon.HybridBlock, directions: int) -> None:
        super().__init__()
        self.directions = directions
        with self.name_scope():
            self.inner = inner

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        y = self.inner(x)
        last = F.squeeze(F.slice_axis(y, axis=1, begin=-1, end=None), axis=1)
        if self.directions == 1:
            return last
        first = F.squeeze(F.slice_axis(y, axis=1, begin=0, end=1), axis=1)
        fwd, _ = F.split(last, num_outputs=2, axis=-1)
        _, bwd = F.split(first, num_outputs=2, axis=-1)
        return F.concat(fwd, bwd, dim=-1)


@register_builder("mxnet", RNN, GRU, LSTM)
def _recurrent_last(layer: Any, fmt: str) -> Built:
    block, params = sequence._recurrent(layer, fmt)
    if layer.return_sequences:
        return block, params
    return LastStep(block, len(layer.directions)), params


class CeilCrop(gluon.HybridBlock):
    """Gluon's ceil-mode pooling (``pooling_convention="full"``), whose windows and divisors are PyTorch's, cut to
    PyTorch's size: MXNet keeps a last window that starts in the right padding, PyTorch drops it. PyTorch's size
    is ``1 + floor((n + m) / s)``, ``m = min(2p - k + s - 1, p - 1)``: the length of a stride-``s`` slice of the
    input padded by ``m + 1`` before (or started at ``-(m + 1)``), which ``slice_like`` copies."""

    def __init__(self, pool: gluon.HybridBlock, kernel: tuple, stride: tuple, padding: tuple, fmt: str) -> None:
        super().__init__()
        with self.name_scope():
            self.pool = pool
        self.axes = (2, 3) if fmt == "channels_first" else (1, 2)
        self.stride = tuple(stride)
        self.m = tuple(min(2 * p - k + s - 1, p - 1) for k, s, p in zip(kernel, stride, padding))

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        y = self.pool(x)
        ref = x
        for axis, s, m in zip(self.axes, self.stride, self.m):
            if m + 1 > 0:  # pad the axis before by m + 1 (a concat of zeros: F.pad wants every axis at once)
                zeros = F.zeros_like(F.slice_axis(ref, axis=axis, begin=0, end=1))
                ref = F.concat(*([zeros] * (m + 1) + [ref]), dim=axis)
                start = 0
            else:
                start = -(m + 1)
            ref = F.slice_axis(ref, axis=axis, begin=start, end=None)
            begin, end, step = [None] * 4, [None] * 4, [1] * 4
            step[axis] = s
            ref = F.slice(ref, begin=tuple(begin), end=tuple(end), step=tuple(step))
        return F.slice_like(y, ref, axes=self.axes)


@register_builder("mxnet", MaxPool2D, AvgPool2D)
def _pool(layer: Any, fmt: str) -> Built:
    include = getattr(layer, "count_include_pad", True)
    common = dict(strides=layer.strides, padding=layer.padding, layout="NCHW" if fmt == "channels_first" else "NHWC",
                  ceil_mode=layer.ceil_mode)
    if isinstance(layer, MaxPool2D):
        pool = nan.MaxPool2D(layer.pool_size, **common)
    else:
        pool = nn.AvgPool2D(layer.pool_size, count_include_pad=include, **common)
    if not layer.ceil_mode:
        return pool, {}
    return CeilCrop(pool, layer.pool_size, layer.strides, layer.padding, fmt), {}


class AdaptiveAvgPool(gluon.HybridBlock):
    """MXNet's own ``contrib.AdaptiveAvgPooling2D`` (PyTorch's bins; channels-first only, so channels-last data is
    transposed around it)."""

    def __init__(self, output_size: tuple, fmt: str) -> None:
        super().__init__()
        self.output_size, self.channels_last = tuple(output_size), fmt == "channels_last"

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        if self.channels_last:
            x = F.transpose(x, axes=(0, 3, 1, 2))
        y = F.contrib.AdaptiveAvgPooling2D(x, output_size=self.output_size)
        return F.transpose(y, axes=(0, 2, 3, 1)) if self.channels_last else y


@register_builder("mxnet", AdaptiveAvgPool2D)
def _adaptive_avg_pool(layer: AdaptiveAvgPool2D, fmt: str) -> Built:
    return AdaptiveAvgPool(layer.output_size, fmt), {}


class GroupNormBlock(gluon.HybridBlock):
    """MXNet's ``GroupNorm`` operator with a unit scale and zero shift per group, then the spec's per-channel
    ``gamma``/``beta`` (Gluon's ``nn.GroupNorm`` holds them per group); their size is deferred to Gluon's shape
    inference. Channels-last data is transposed around it; (N, C) data is normalized as (N, C, 1)."""

    def __init__(self, num_groups: int, eps: float, fmt: str) -> None:
        super().__init__()
        self.num_groups, self.eps, self.channels_last = num_groups, eps, fmt == "channels_last"
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=(0,), init="ones", allow_deferred_init=True)
            self.beta = self.params.get("beta", shape=(0,), init="zeros", allow_deferred_init=True)

    def hybrid_forward(self, F, x, gamma, beta):  # type: ignore[no-untyped-def]
        rank = x.ndim if F is not symbol else (traced_rank(x) or 4)
        last = self.channels_last and rank > 2
        if last:
            x = F.transpose(x, axes=(0, rank - 1) + tuple(range(1, rank - 1)))
        like = F.sum(x, axis=1, exclude=True)  # (C,)
        gamma = F._internal._identity_with_attr_like_rhs(gamma, like)
        beta = F._internal._identity_with_attr_like_rhs(beta, like)
        data = F.reshape(x, shape=(0, 0, -1))  # (N, C, L): any rank, (N, C) included
        g = self.num_groups
        y = F.GroupNorm(data, F.ones(shape=(g,)), F.zeros(shape=(g,)), num_groups=g, eps=self.eps)
        y = F.broadcast_add(F.broadcast_mul(y, F.reshape(gamma, shape=(1, -1, 1))), F.reshape(beta, shape=(1, -1, 1)))
        y = F.reshape_like(y, x)
        return F.transpose(y, axes=(0,) + tuple(range(2, rank)) + (1,)) if last else y


@register_builder("mxnet", GroupNorm)
def _group_norm(layer: GroupNorm, fmt: str) -> Built:
    block = GroupNormBlock(layer.num_groups, layer.eps, fmt)
    return block, {"weight": block.gamma, "bias": block.beta}


@register_builder("mxnet", LayerNorm)
def _layer_norm(layer: LayerNorm, fmt: str) -> Built:
    axis = layer.axis if layer.axis != "channels" else (1 if fmt == "channels_first" else -1)  # (N, C): 1 is -1
    ln = nn.LayerNorm(axis=axis, epsilon=layer.eps, in_channels=0)
    return ln, {"weight": ln.gamma, "bias": ln.beta}


class LayerScaleBlock(gluon.HybridBlock):
    """``x * gamma`` along the channel axis, ``gamma (C,)`` starting at ``init_value`` (its own initializer, which
    Gluon keeps over a model-wide one); the size is deferred to Gluon's shape inference."""

    def __init__(self, init_value: float, fmt: str) -> None:
        super().__init__()
        self.channels_last = fmt == "channels_last"
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=(0,), init=mx.init.Constant(init_value),
                                         allow_deferred_init=True)

    def hybrid_forward(self, F, x, gamma):  # type: ignore[no-untyped-def]
        if self.channels_last:  # (N, ..., C): broadcast on the last axis; (N, C) either way
            gamma = F._internal._identity_with_attr_like_rhs(gamma, F.sum(x, axis=-1, exclude=True))
            return F.broadcast_mul(x, gamma)
        gamma = F._internal._identity_with_attr_like_rhs(gamma, F.sum(x, axis=1, exclude=True))
        y = F.broadcast_mul(F.reshape(x, shape=(0, 0, -1)), F.reshape(gamma, shape=(1, -1, 1)))
        return F.reshape_like(y, x)


@register_builder("mxnet", LayerScale)
def _layer_scale(layer: LayerScale, fmt: str) -> Built:
    block = LayerScaleBlock(layer.init_value, fmt)
    return block, {"weight": block.gamma}


class DropPathBlock(modules.Dropout):
    """Stochastic depth as Gluon's own Dropout with its mask shared along axis 1 of the input seen as
    ``(N, everything else)``: one keep/drop per sample; the identity in inference (and under
    ``graph.inference_layers``, as ``modules.Dropout``)."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, axes=(1,))

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        if frozen():
            return F.identity(x)
        return F.reshape_like(super().hybrid_forward(F, F.reshape(x, shape=(0, -1))), x)


@register_builder("mxnet", DropPath)
def _drop_path(layer: DropPath, fmt: str) -> Built:
    return DropPathBlock(layer.rate), {}
