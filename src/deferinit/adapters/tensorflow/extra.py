"""The Keras layers of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Keras's own
wherever Keras has one."""

from __future__ import annotations

from typing import Any

from ... import extend
from ...layers import AvgPool2D, LayerNorm, MaxPool2D
from ...layers_extra import AdaptiveAvgPool2D, DropPath, GroupNorm, HardSigmoid, HardSwish, LayerScale, LeakyReLU, ReLU6, SiLU
from ...shapes import Node

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
# isort: on

from . import extra_layers as el
from . import params
from .leaves import _activation
from .leaves import _pool as _pool_floor

register = extend.register_builder
register("tensorflow", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register("tensorflow", LeakyReLU)
def _leaky_relu(node: Node, fmt: str) -> Any:
    return keras.layers.LeakyReLU(negative_slope=node.layer.negative_slope, name=node.path)  # type: ignore[attr-defined]


@register("tensorflow", MaxPool2D, AvgPool2D)
def _pool(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    include = getattr(s, "count_include_pad", True)
    if not s.ceil_mode and include:
        return _pool_floor(node, fmt)
    cls = el.MaxPool2DExtra if isinstance(s, MaxPool2D) else el.AvgPool2DExtra
    return cls(pool_size=s.pool_size, strides=s.strides, pads=s.padding, ceil_mode=s.ceil_mode,
               count_include_pad=include, data_format=fmt, name=node.path)


@register("tensorflow", AdaptiveAvgPool2D)
def _adaptive_avg_pool(node: Node, fmt: str) -> Any:
    # Keras's own: its bins are PyTorch's (checked in tests/backends/tensorflow/test_extra_tensorflow.py)
    return el.AdaptiveAvgPool2D(tuple(node.layer.output_size), data_format=fmt,  # type: ignore[attr-defined]
                                name=node.path)


# where the canonical parameters live (no kernel initializer: norm scales start at one, shifts at zero)
params.PARAMS[GroupNorm] = (("weight", "gamma", params.SAME), ("bias", "beta", params.SAME))


@register("tensorflow", GroupNorm)
def _group_norm(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    # Keras's own; the channel axis: 1 for channels_first (and for (N, C) data either way), last otherwise
    return keras.layers.GroupNormalization(s.num_groups, axis=1 if fmt == "channels_first" else -1, epsilon=s.eps,
                                           name=node.path)


@register("tensorflow", LayerNorm)
def _layer_norm(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    axis = s.axis if s.axis != "channels" else (1 if fmt == "channels_first" else -1)  # (N, C): 1 is -1
    return keras.layers.LayerNormalization(axis=axis, epsilon=s.eps, name=node.path)


params.PARAMS[LayerScale] = (("weight", "scale", params.SAME),)


@register("tensorflow", LayerScale)
def _layer_scale(node: Node, fmt: str) -> Any:
    return el.LayerScale(node.layer.init_value, axis=1 if fmt == "channels_first" else -1,  # type: ignore[attr-defined]
                         name=node.path)


@register("tensorflow", DropPath)
def _drop_path(node: Node, fmt: str) -> Any:
    return el.DropPath(node.layer.rate, name=node.path)  # type: ignore[attr-defined]
