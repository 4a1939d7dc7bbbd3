# mypy: allow-subclassing-any
"""The torch builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), torch's own
modules wherever torch has one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ... import extend
from ...layers import AvgPool2D, LayerNorm, MaxPool2D
from ...layers_extra import AdaptiveAvgPool2D, DropPath, GroupNorm, HardSigmoid, HardSwish, LayerScale, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from .leaves import _activation, _recurrent
from .modules import ANY, CF, F32, SPEC, LazyLayerNorm, Step

register = extend.register_builder
register("torch", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register("torch", LeakyReLU)
def _leaky_relu(layer: LeakyReLU, rank: int | None) -> list[Step]:
    return [Step("", nn.LeakyReLU(layer.negative_slope), ANY)]


class LastStep(nn.Module):
    """``(N, T, H * directions) -> (N, H * directions)``: the forward direction's last step and the backward
    direction's first (its last), as Keras's ``return_sequences=False``."""

    def __init__(self, directions: int) -> None:
        super().__init__()
        self.directions = directions

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.directions == 1:
            return y[:, -1]
        h = y.shape[-1] // 2
        return torch.cat([y[:, -1, :h], y[:, 0, h:]], dim=-1)


@register("torch", RNN, GRU, LSTM)
def _recurrent_last(layer: Any, rank: int | None) -> list[Step]:
    steps = _recurrent(layer, rank)
    if layer.return_sequences:
        return steps
    return steps + [Step("last", LastStep(len(layer.directions)), SPEC, ANY)]


@register("torch", MaxPool2D, AvgPool2D)
def _pool(layer: Any, rank: int | None) -> list[Step]:
    if isinstance(layer, MaxPool2D):  # pads with -inf
        return [Step("", nn.MaxPool2d(layer.pool_size, layer.strides, layer.padding, ceil_mode=layer.ceil_mode), CF)]
    return [Step("", nn.AvgPool2d(layer.pool_size, layer.strides, layer.padding, ceil_mode=layer.ceil_mode,
                                  count_include_pad=layer.count_include_pad), CF)]


@register("torch", AdaptiveAvgPool2D)
def _adaptive_avg_pool(layer: AdaptiveAvgPool2D, rank: int | None) -> list[Step]:
    return [Step("", nn.AdaptiveAvgPool2d(tuple(layer.output_size)), CF)]


class LazyGroupNorm(LazyModuleMixin, nn.GroupNorm):
    """``nn.GroupNorm`` whose channel count torch infers from the first input (as ``modules.LazyLayerNorm``):
    uninitialized parameters materialized on the first call, then the module becomes a plain ``nn.GroupNorm``."""

    cls_to_become = nn.GroupNorm
    weight: UninitializedParameter
    bias: UninitializedParameter

    def __init__(self, num_groups: int, eps: float = 1e-5, dtype: Any = None) -> None:
        super().__init__(num_groups, 0, eps=eps, affine=True, dtype=dtype)
        self.weight = UninitializedParameter(dtype=dtype)
        self.bias = UninitializedParameter(dtype=dtype)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_channels != 0:
            super().reset_parameters()

    def initialize_parameters(self, x: torch.Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.num_channels = int(x.shape[1])
                self.weight.materialize((self.num_channels,))
                self.bias.materialize((self.num_channels,))
                self.reset_parameters()


@register("torch", GroupNorm)
def _group_norm(layer: GroupNorm, rank: int | None) -> list[Step]:
    return [Step("", LazyGroupNorm(layer.num_groups, eps=layer.eps, dtype=F32), CF)]


class MoveAxis(nn.Module):
    """``x.movedim(source, destination)``: a view, around torch's last-axis LayerNorm."""

    def __init__(self, source: int, destination: int) -> None:
        super().__init__()
        self.source, self.destination = source, destination

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(self.source, self.destination)

    def extra_repr(self) -> str:
        return f"source={self.source}, destination={self.destination}"


@register("torch", LayerNorm)
def _layer_norm(layer: LayerNorm, rank: int | None) -> list[Step]:
    # torch's LayerNorm normalizes the last axis: another axis is moved there and back (views); "channels" is
    # axis 1 of channels-first data, whatever the spec's format
    norm = LazyLayerNorm(eps=layer.eps, dtype=F32)
    if layer.axis == -1:
        return [Step("", norm, SPEC)]
    axis, need = (1, CF) if layer.axis == "channels" else (int(layer.axis), SPEC)
    return [Step("to_last", MoveAxis(axis, -1), need), Step("", norm, ANY), Step("back", MoveAxis(-1, axis), ANY)]


class LayerScaleModule(nn.Module):
    """``x * weight`` along the channel axis (channels-first data), ``weight (C,)`` starting at ``init_value``."""

    def __init__(self, channels: int, init_value: float, dtype: Any = None) -> None:
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.empty(channels, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.reshape((1, -1) + (1,) * (x.ndim - 2))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, init_value={self.init_value}"


class LazyLayerScale(LazyModuleMixin, LayerScaleModule):
    """:class:`LayerScaleModule` whose channel count torch infers from the first input."""

    cls_to_become = LayerScaleModule
    weight: UninitializedParameter

    def __init__(self, init_value: float, dtype: Any = None) -> None:
        super().__init__(0, init_value, dtype=dtype)
        self.weight = UninitializedParameter(dtype=dtype)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.weight.shape[0] != 0:
            super().reset_parameters()

    def initialize_parameters(self, x: torch.Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.materialize((int(x.shape[1]),))
                self.reset_parameters()


@register("torch", LayerScale)
def _layer_scale(layer: LayerScale, rank: int | None) -> list[Step]:
    return [Step("", LazyLayerScale(layer.init_value, dtype=F32), CF)]


class DropPathModule(nn.Module):
    """Stochastic depth, torchvision's ``StochasticDepth(p, mode="row")``: in training each sample is zeroed with
    probability ``rate`` and the others scaled by ``1 / (1 - rate)``; the identity in inference (torch has no
    module for it; torchvision's, ported)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.rate)
        return x * keep.div_(1.0 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


@register("torch", DropPath)
def _drop_path(layer: DropPath, rank: int | None) -> list[Step]:
    return [Step("", DropPathModule(layer.rate), ANY)]
