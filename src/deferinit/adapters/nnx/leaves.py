# mypy: disable-error-code="misc"
"""The nnx backend's table: spec leaf type -> the builder of its NNX module.

A builder is registered with ``@deferinit.extend.register_builder("nnx", LayerType)`` and looked up with
``extend.builder_for("nnx", type(layer))``. Its signature::

    builder(node: deferinit.shapes.Node, channels_first: bool, rngs: flax.nnx.Rngs, in_shape: tuple)
        -> (flax.nnx.Module, {canonical parameter name: params.Layout})

``in_shape`` is the layer's input shape by the reference rules (NNX modules are eager: ``in_features`` and
input channels come from here, never from NNX). The module is called as ``module(x, train)`` and returns the
spec's data layout. Each layout is the jax backend's (``params.One(params.Leaf(<collection>, "<attribute>"),
"<layout>")``, layouts ``"same"``, ``"dense"``, ``"conv"``): the leaf's name is the NNX attribute holding the
variable, so its state path is the module's path plus that name.

A layer type with no builder here but a jax builder whose module holds no variables (pools, Flatten, activations,
Reshape, Permute...) runs that linen module as the pure function it is (``modules.Stateless``).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from ...extend import register_builder
from ...layers import BatchNorm, Conv1D, Conv2D, Dense, Dropout, Embedding, LayerNorm
from ...shapes import Node
from ..jax import params as T
from . import modules as M

__all__ = ["Made"]

Made = tuple[nnx.Module, dict[str, T.Layout]]


def _one(name: str, kind: str = "same", collection: str = "params") -> T.Layout:
    return T.One(T.Leaf(collection, name), kind)


@register_builder("nnx", Dense)
def _dense(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Dense = node.layer  # type: ignore[assignment]
    m = M.Linear(int(in_shape[-1]), layer.units, use_bias=layer.use_bias, activation=layer.activation, rngs=rngs)
    return m, {"weight": _one("kernel", "dense"), **({"bias": _one("bias")} if layer.use_bias else {})}


@register_builder("nnx", Conv1D, Conv2D)
def _conv(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Any = node.layer
    # "same" is TensorFlow's rule (odd pixel after), which is lax's SAME; ints are symmetric pads
    padding = layer.padding.upper() if isinstance(layer.padding, str) else tuple((p, p) for p in layer.padding)
    m = M.Conv(int(in_shape[1] if cf else in_shape[-1]), layer.channels, tuple(layer.kernel_size),
               tuple(layer.stride), padding=padding, kernel_dilation=tuple(layer.dilation),
               feature_group_count=layer.groups, use_bias=layer.use_bias, activation=layer.activation,
               channels_first=cf, rngs=rngs)
    return m, {"weight": _one("kernel", "conv"), **({"bias": _one("bias")} if layer.use_bias else {})}


@register_builder("nnx", BatchNorm)
def _batch_norm(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: BatchNorm = node.layer  # type: ignore[assignment]
    c = int(in_shape[1] if cf or len(in_shape) == 2 else in_shape[-1])
    m = M.BatchNorm(c, momentum=1.0 - layer.momentum, epsilon=layer.eps, channels_first=cf, rngs=rngs)
    return m, {"weight": _one("scale"), "bias": _one("bias"), "running_mean": _one("mean", collection="batch_stats"),
               "running_var": _one("var", collection="batch_stats")}


@register_builder("nnx", LayerNorm)
def _layer_norm(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    # NNX's own LayerNorm over one axis (reduction and feature axes both that axis); use_fast_variance=False:
    # E[x^2] - E[x]^2 loses digits the spec's reference keeps
    layer: LayerNorm = node.layer  # type: ignore[assignment]
    # the axis as the spec gives it (-1 stays the last axis of an input of another rank; "channels": 1 or -1),
    # the feature count from the rules' input shape
    axis = layer.axis if layer.axis != "channels" else (1 if cf else -1)
    m = M.LayerNorm(int(in_shape[axis]), epsilon=layer.eps, use_fast_variance=False, reduction_axes=axis,
                    feature_axes=axis, rngs=rngs)
    return m, {"weight": _one("scale"), "bias": _one("bias")}


@register_builder("nnx", Embedding)
def _embedding(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Embedding = node.layer  # type: ignore[assignment]
    return M.Embed(layer.num_embeddings, layer.dim, rngs=rngs), {"weight": _one("embedding")}


@register_builder("nnx", Dropout)
def _dropout(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    return M.Dropout(node.layer.rate, rngs=rngs), {}  # type: ignore[attr-defined]


from . import leaves_extra as _extra  # noqa: E402, F401  (registers the builders of layers_extra)
from . import leaves_seq as _seq  # noqa: E402, F401  (registers the sequence layers' builders)
from . import leaves_up as _up  # noqa: E402, F401  (registers the builders of layers_up)
