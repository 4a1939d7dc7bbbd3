# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Flax's own
modules and functions wherever Flax has one."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...extend import register_builder
from ...layers import AvgPool2D, LayerNorm, MaxPool2D
from ...layers_extra import (
    AdaptiveAvgPool2D,
    DropPath,
    GroupNorm,
    HardSigmoid,
    HardSwish,
    LayerScale,
    LeakyReLU,
    ReLU6,
    SiLU,
    pool_out,
)
from ...layers_seq import GRU, LSTM, RNN
from ...ops_extra import adaptive_bins, pool_divisor
from ...shapes import Node
from . import modules as M
from . import params as T
from . import sequence as seq
from .leaves import _activation
from .leaves import _pool as _pool_floor

register_builder("jax", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


class LeakyReLUModule(nn.Module):
    negative_slope: float = 0.01

    def __call__(self, x: Any, train: bool = False) -> Any:
        return nn.leaky_relu(x, negative_slope=self.negative_slope)


@register_builder("jax", LeakyReLU)
def _leaky_relu(node: Node, cf: bool, name: str) -> T.Made:
    return LeakyReLUModule(node.layer.negative_slope, name=name), {}  # type: ignore[attr-defined]


def last_step(y: Any, directions: int) -> Any:
    """``(N, T, H * directions) -> (N, H * directions)``: the forward direction's last step and the backward
    direction's first (its last), as Keras's ``return_sequences=False``."""
    if directions == 1:
        return y[:, -1]
    h = y.shape[-1] // 2
    return jnp.concatenate([y[:, -1, :h], y[:, 0, h:]], axis=-1)


_LAST: dict[tuple[type, int], type] = {}


def _last_class(cls: type, directions: int) -> type:
    """``cls`` (the recurrent module the builder made) whose call returns the last step only: a subclass, so the
    module keeps its variables, names and fields (the directions are the class's: Flax clones modules from their
    fields)."""
    if (cls, directions) not in _LAST:
        def __call__(self: Any, x: Any, train: bool = False) -> Any:
            return last_step(cls.__call__(self, x, train), directions)

        _LAST[cls, directions] = type(f"{cls.__name__}LastStep", (cls,), {"__call__": __call__})
    return _LAST[cls, directions]


@register_builder("jax", RNN, GRU, LSTM)
def _recurrent_last(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    module, out = seq._recurrent(node, cf, name)
    if layer.return_sequences:
        return module, out
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.init and f.name != "parent"}
    return _last_class(type(module), len(layer.directions))(**fields), out


class PoolExtra(nn.Module):
    """PyTorch's ceil mode and ``count_include_pad=False``: Flax's own ``max_pool``/``avg_pool`` over the input
    padded by ``p`` before and ``p + e`` after (``e`` the ceil-mode overhang; ``max_pool`` pads with -inf), the
    output cut to PyTorch's size; an average is Flax's (over the whole window) times the window's size, divided
    by what PyTorch divides by (a constant of the static spatial size)."""

    kind: str = "max"
    window: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: tuple = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        xl = jnp.transpose(x, (0, 2, 3, 1)) if self.channels_first else x
        sizes = xl.shape[1:3]
        outs, pads = [], []
        for n, k, s, p in zip(sizes, self.window, self.strides, self.padding):
            o = pool_out(n, k, s, p, self.ceil_mode)
            outs.append(o)
            pads.append((p, p + max((o - 1) * s + k - (n + 2 * p), 0)))
        if self.kind == "max":
            y = nn.max_pool(xl, self.window, self.strides, tuple(pads))[:, :outs[0], :outs[1]]
        else:
            y = nn.avg_pool(xl, self.window, self.strides, tuple(pads), count_include_pad=True)[:, :outs[0], :outs[1]]
            divisor = pool_divisor(sizes, self.window, self.strides, self.padding, self.ceil_mode,
                                   self.count_include_pad)
            y = y * jnp.asarray((float(np.prod(self.window)) / divisor)[None, :, :, None], y.dtype)
        return jnp.transpose(y, (0, 3, 1, 2)) if self.channels_first else y


@register_builder("jax", MaxPool2D, AvgPool2D)
def _pool(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    include = getattr(layer, "count_include_pad", True)
    if not layer.ceil_mode and include:
        return _pool_floor(node, cf, name)
    return PoolExtra("max" if isinstance(layer, MaxPool2D) else "avg", tuple(layer.pool_size), tuple(layer.strides),
                     tuple(layer.padding), layer.ceil_mode, include, cf, name=name), {}


class AdaptiveAvgPool(nn.Module):
    """PyTorch's adaptive average pooling: the mean of each bin ``[floor(i * n / out), ceil((i + 1) * n / out))``
    (Flax has no adaptive pooling; the bins are static slices of the traced shape)."""

    output_size: tuple = (1, 1)
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        ha, wa = (2, 3) if self.channels_first else (1, 2)
        rows = []
        for h0, h1 in adaptive_bins(x.shape[ha], self.output_size[0]):
            band = jax.lax.slice_in_dim(x, h0, h1, axis=ha)
            rows.append(jnp.stack([jnp.mean(jax.lax.slice_in_dim(band, w0, w1, axis=wa), axis=(ha, wa))
                                   for w0, w1 in adaptive_bins(x.shape[wa], self.output_size[1])], axis=-1))
        y = jnp.stack(rows, axis=-2)  # (N, C, h, w)
        return y if self.channels_first else jnp.transpose(y, (0, 2, 3, 1))


@register_builder("jax", AdaptiveAvgPool2D)
def _adaptive_avg_pool(node: Node, cf: bool, name: str) -> T.Made:
    return AdaptiveAvgPool(tuple(node.layer.output_size), cf, name=name), {}  # type: ignore[attr-defined]


class GroupNormModule(nn.GroupNorm):
    """Flax's own ``nn.GroupNorm`` (channels last: channels-first data is transposed around it);
    ``use_fast_variance=False`` as for LayerNorm: ``E[x^2] - E[x]^2`` loses digits the reference keeps."""

    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        if not self.channels_first or x.ndim == 2:
            return super().__call__(x)
        to_last = (0,) + tuple(range(2, x.ndim)) + (1,)
        to_first = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        return jnp.transpose(super().__call__(jnp.transpose(x, to_last)), to_first)


@register_builder("jax", GroupNorm)
def _group_norm(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    m = GroupNormModule(num_groups=layer.num_groups, epsilon=layer.eps, use_fast_variance=False, channels_first=cf,
                        name=name)
    return m, {"weight": T.One(T.Leaf("params", "scale", m.scale_init)),
               "bias": T.One(T.Leaf("params", "bias", m.bias_init))}


@register_builder("jax", LayerNorm)
def _layer_norm(node: Node, cf: bool, name: str) -> T.Made:
    # Flax's own LayerNorm over one axis: reduction and feature axes both that axis ("channels": 1 for
    # channels-first data, which is also the last of (N, C) data)
    layer: Any = node.layer
    axis = layer.axis if layer.axis != "channels" else (1 if cf else -1)
    m = M.LayerNorm(epsilon=layer.eps, use_fast_variance=False, reduction_axes=axis, feature_axes=axis, name=name)
    return m, {"weight": T.One(T.Leaf("params", "scale", m.scale_init)),
               "bias": T.One(T.Leaf("params", "bias", m.bias_init))}


class LayerScaleModule(nn.Module):
    """``x * scale`` along the channel axis, ``scale (C,)`` starting at ``init_value`` (Flax has no LayerScale)."""

    init_value: float = 1e-6
    channels_first: bool = True

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        axis = 1 if self.channels_first or x.ndim == 2 else x.ndim - 1
        scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[axis],), jnp.float32)
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * scale.reshape(shape)


@register_builder("jax", LayerScale)
def _layer_scale(node: Node, cf: bool, name: str) -> T.Made:
    value = node.layer.init_value  # type: ignore[attr-defined]
    return LayerScaleModule(value, cf, name=name), {
        "weight": T.One(T.Leaf("params", "scale", nn.initializers.constant(value)))}


class DropPathModule(nn.Module):
    """Stochastic depth as Flax's own ``nn.Dropout`` with its mask broadcast over every axis but the batch: one
    keep/drop per sample, kept samples scaled by ``1 / (1 - rate)``; the identity in inference."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        return nn.Dropout(self.rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train)(x)


@register_builder("jax", DropPath)
def _drop_path(node: Node, cf: bool, name: str) -> T.Made:
    return DropPathModule(node.layer.rate, name=name), {}  # type: ignore[attr-defined]
