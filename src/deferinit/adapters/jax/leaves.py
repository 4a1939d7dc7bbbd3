# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""The jax backend's table: spec leaf type -> the builder of its Flax module.

A builder is registered with ``@deferinit.extend.register_builder("jax", LayerType)`` (the built-in ones here,
a user's own layer the same way, see ``examples/custom_layer.py``) and looked up with
``extend.builder_for("jax", type(layer))``; a layer type without one is an ``UnsupportedLayerError`` naming the
layer. Its signature::

    builder(node: deferinit.shapes.Node, channels_first: bool, name: str | None)
        -> (flax.linen.Module, {canonical parameter name: params.Layout})

``node.layer`` is the spec's layer; the module must be created with ``name=name`` and be called as
``module(x, train)`` (``train`` a bool; the output in the spec's data layout: a module that computes
channels-last transposes inside, as ``modules.Conv`` does when ``channels_first``). The dict says where each
canonical parameter (the names the layer's ``infer`` returns) lives among the module's Flax variables:
``params.One(params.Leaf("params", "<variable>", <its Flax initializer>, kernel=<True for a weight matrix>),
"<layout>")`` with layout ``"same"`` (the canonical layout, the default), ``"dense"`` (Flax's ``(in, out)``
kernel of a canonical ``(out, in)`` weight) or ``"conv"`` (Flax's ``(*kernel, in, out)`` of a canonical
``(out, in, *kernel)``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from ...extend import register_builder
from ...layers import (
    GELU,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from ...shapes import Node
from . import modules as M
from . import params as T

__all__ = ["Made"]

Made = T.Made


@register_builder("jax", Dense)
def _dense(node: Node, cf: bool, name: str) -> Made:
    layer: Dense = node.layer  # type: ignore[assignment]
    m = M.Dense(layer.units, use_bias=layer.use_bias, activation=layer.activation, name=name)
    out: dict[str, T.Layout] = {"weight": T.One(T.Leaf("params", "kernel", m.kernel_init, kernel=True), "dense")}
    if layer.use_bias:
        out["bias"] = T.One(T.Leaf("params", "bias", m.bias_init))
    return m, out


@register_builder("jax", Conv1D, Conv2D)
def _conv(node: Node, cf: bool, name: str) -> Made:
    layer: Any = node.layer  # the builder's own layer type (the table maps it here)
    # "same" is TensorFlow's rule (odd pixel after), which is lax's SAME; ints are symmetric pads
    padding = layer.padding.upper() if isinstance(layer.padding, str) else tuple((p, p) for p in layer.padding)
    m = M.Conv(layer.channels, tuple(layer.kernel_size), strides=tuple(layer.stride), padding=padding,
               kernel_dilation=tuple(layer.dilation), feature_group_count=layer.groups, use_bias=layer.use_bias,
               activation=layer.activation, channels_first=cf, name=name)
    out: dict[str, T.Layout] = {"weight": T.One(T.Leaf("params", "kernel", m.kernel_init, kernel=True), "conv")}
    if layer.use_bias:
        out["bias"] = T.One(T.Leaf("params", "bias", m.bias_init))
    return m, out


@register_builder("jax", MaxPool2D, AvgPool2D)
def _pool(node: Node, cf: bool, name: str) -> Made:
    layer: Any = node.layer  # the builder's own layer type (the table maps it here)
    return M.Pool("max" if isinstance(layer, MaxPool2D) else "avg", tuple(layer.pool_size), tuple(layer.strides),
                  tuple((p, p) for p in layer.padding), cf, name=name), {}


@register_builder("jax", BatchNorm)
def _batch_norm(node: Node, cf: bool, name: str) -> Made:
    layer: BatchNorm = node.layer  # type: ignore[assignment]
    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    return M.BatchNorm(momentum=1.0 - layer.momentum, epsilon=layer.eps, channels_first=cf, name=name), {
        "weight": T.One(T.Leaf("params", "scale", ones)), "bias": T.One(T.Leaf("params", "bias", zeros)),
        "running_mean": T.One(T.Leaf("batch_stats", "mean", zeros)),
        "running_var": T.One(T.Leaf("batch_stats", "var", ones))}


@register_builder("jax", LayerNorm)
def _layer_norm(node: Node, cf: bool, name: str) -> Made:
    # use_fast_variance=False: E[x^2] - E[x]^2 loses digits the spec's reference keeps
    layer: Any = node.layer
    m = M.LayerNorm(epsilon=layer.eps, use_fast_variance=False, name=name)
    return m, {"weight": T.One(T.Leaf("params", "scale", m.scale_init)), "bias": T.One(T.Leaf("params", "bias", m.bias_init))}


@register_builder("jax", Embedding)
def _embedding(node: Node, cf: bool, name: str) -> Made:
    layer: Embedding = node.layer  # type: ignore[assignment]
    m = M.Embed(layer.num_embeddings, layer.dim, name=name)
    return m, {"weight": T.One(T.Leaf("params", "embedding", m.embedding_init, kernel=True))}


def _simple(make: Callable[..., nn.Module]) -> Callable[[Node, bool, str], Made]:
    """A builder for a layer without variables: ``make(node, cf, name=...)``."""
    return lambda node, cf, name: (make(node, cf, name=name), {})


_activation = _simple(lambda node, cf, name: M.Activation(node.layer.activation, name=name))

register_builder("jax", GlobalAvgPool2D)(_simple(lambda node, cf, name: M.GlobalAvgPool(cf, node.layer.keepdims, name=name)))
register_builder("jax", Dropout)(_simple(lambda node, cf, name: M.Dropout(node.layer.rate, name=name)))
register_builder("jax", Flatten)(_simple(lambda node, cf, name: M.Flatten(name=name)))
register_builder("jax", Identity)(_simple(lambda node, cf, name: M.Identity(name=name)))
register_builder("jax", Activation, ReLU, Sigmoid, Tanh, GELU, Softmax)(_activation)

from . import extra as extra  # noqa: E402  (registers the builders of deferinit.layers_extra)
from . import up as up  # noqa: E402  (registers the builders of deferinit.layers_up)
