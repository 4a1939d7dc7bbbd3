# mypy: disable-error-code="misc"
"""NNX builders for ``deferinit.layers_extra`` layers with state or randomness: GroupNorm (``nnx.GroupNorm``),
LayerScale (a ``scale`` Param) and DropPath (``nnx.Dropout`` with its mask broadcast over all but the batch)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from ...extend import register_builder
from ...layers_extra import DropPath, GroupNorm, LayerScale
from ...shapes import Node
from . import modules as M
from .leaves import Made, _one


class GroupNormModule(nnx.GroupNorm):
    """``nnx.GroupNorm`` (channels-last) plus transposes for channels-first data."""

    def __init__(self, *args: Any, channels_first: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channels_first = channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        if not self.channels_first or x.ndim == 2:
            return super().__call__(x)
        return M._to_first(super().__call__(M._to_last(x)))


class LayerScaleModule(nnx.Module):
    """``x * scale`` along the channel axis, ``scale (C,)`` starting at ``init_value`` (NNX has no LayerScale)."""

    def __init__(self, channels: int, init_value: float, channels_first: bool) -> None:
        self.scale = nnx.Param(jnp.full((channels,), init_value, jnp.float32))
        self.channels_first = channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:
        axis = 1 if self.channels_first or x.ndim == 2 else x.ndim - 1
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * self.scale[...].reshape(shape)


def _channels(in_shape: tuple, cf: bool) -> int:
    return int(in_shape[1] if cf or len(in_shape) == 2 else in_shape[-1])


@register_builder("nnx", GroupNorm)
def _group_norm(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Any = node.layer
    m = GroupNormModule(_channels(in_shape, cf), num_groups=layer.num_groups, epsilon=layer.eps,
                        use_fast_variance=False, channels_first=cf, rngs=rngs)
    return m, {"weight": _one("scale"), "bias": _one("bias")}


@register_builder("nnx", LayerScale)
def _layer_scale(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    return LayerScaleModule(_channels(in_shape, cf), node.layer.init_value, cf), {  # type: ignore[attr-defined]
        "weight": _one("scale")}


@register_builder("nnx", DropPath)
def _drop_path(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    rate = node.layer.rate  # type: ignore[attr-defined]
    return M.Dropout(rate, broadcast_dims=tuple(range(1, len(in_shape))), rngs=rngs), {}
