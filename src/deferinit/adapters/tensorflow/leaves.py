"""The table of the tensorflow backend: spec leaf type -> the Keras layer that expresses it.

Every builder is registered with ``@deferinit.extend.register_builder("tensorflow", LayerType)`` and looked up
with ``extend.builder_for("tensorflow", type(layer))``; a layer type with no builder is an
``UnsupportedLayerError`` naming the layer. A user's own layer type registers its builder the same way
(``examples/custom_layer.py``). The builder's signature, which is all a custom layer must provide::

    @di.register_builder("tensorflow", MyLayer)
    def build(node: deferinit.shapes.Node, data_format: str) -> keras.layers.Layer: ...

* ``node.layer`` is the spec layer (its fields), ``node.path`` its canonical path: name the Keras layer
  ``name=node.path`` (Keras names variables from process-wide counters otherwise).
* ``data_format`` is the spec's (``"channels_first"``/``"channels_last"``): Keras layers take ``data_format=``.
* Return a Keras layer with no input dims: Keras builds it on the first call (``build(input_shape)``).
* Its parameters: for a built-in type, ``params.PARAMS`` says where they live; a layer type registered from
  outside declares it on its Keras layer class, ``deferinit_params = {canonical name: (attribute holding the
  keras.Variable, layout kind)}`` with a kind of :mod:`deferinit.layouts` (``"dense"`` for a ``(in, out)``
  kernel whose canonical form is ``(out, in)``, ``"conv"``, ``"same"``...). A ``kernel_initializer``-style
  attribute (``<attribute>_initializer``) receives the user's ``init=`` or a per-name seeded copy.

Sequences are batch-first in either data format.
"""

from __future__ import annotations

from typing import Any

from ... import extend
from ...errors import UnsupportedLayerError, where
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
from ...layers_seq import (
    GRU,
    LSTM,
    RNN,
    ClassToken,
    MultiHeadAttention,
    OneHot,
    Permute,
    PositionalEncoding,
    PositionEmbedding,
    Reshape,
    Scale,
    Take,
)
from ...shapes import Node

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
# isort: on

from . import modules as kl
from . import nan as kn
from . import sequence as ks

__all__ = ["build_leaf"]

register = extend.register_builder


def spec(node: Node) -> Any:
    """The spec layer of a node, with its fields (typed loosely: one builder serves several layer types)."""
    return node.layer


def build_leaf(node: Node, data_format: str) -> Any:
    """The Keras layer of one leaf, from the builder registered for its type."""
    builder = extend.builder_for("tensorflow", type(node.layer))
    if builder is None:
        raise UnsupportedLayerError(f"{where(node.path, node.layer, 'tensorflow')}: no Keras layer expresses "
                                    f"{type(node.layer).__name__}; use the layers in deferinit.layers, or register "
                                    f"a builder with deferinit.register_builder('tensorflow', "
                                    f"{type(node.layer).__name__})")
    return builder(node, data_format)


@register("tensorflow", Dense)
def _dense(node: Node, fmt: str) -> Any:
    s: Dense = node.layer  # type: ignore[assignment]
    return keras.layers.Dense(s.units, activation=kn.activation(s.activation), use_bias=s.use_bias, name=node.path)


@register("tensorflow", Conv1D, Conv2D)
def _conv(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    cls = kl.Conv1D if isinstance(s, Conv1D) else kl.Conv2D
    return cls(filters=s.channels, kernel_size=s.kernel_size, spec_strides=s.stride, spec_padding=s.padding,
               dilation_rate=s.dilation, groups=s.groups, activation=kn.activation(s.activation), use_bias=s.use_bias,
               data_format=fmt, name=node.path)


@register("tensorflow", MaxPool2D, AvgPool2D)
def _pool(node: Node, fmt: str) -> Any:
    s: Any = node.layer
    cls = kn.MaxPool2D if isinstance(s, MaxPool2D) else kl.AvgPool2D
    return cls(pool_size=s.pool_size, strides=s.strides, pads=s.padding, data_format=fmt, name=node.path)


@register("tensorflow", BatchNorm)
def _batch_norm(node: Node, fmt: str) -> Any:
    s: BatchNorm = node.layer  # type: ignore[assignment]
    # the channel axis: 1 for channels_first (and for (N, C) data either way), last for channels_last
    return kl.BatchNorm(axis=1 if fmt == "channels_first" else -1, momentum=1.0 - s.momentum, epsilon=s.eps,
                        name=node.path)


@register("tensorflow", Flatten)
def _flatten(node: Node, fmt: str) -> Any:
    # Keras's Flatten(data_format="channels_first") moves channels last before flattening (to keep weights
    # portable between formats); the spec flattens the data in its own order, which is a plain reshape.
    return keras.layers.Flatten(data_format="channels_last", name=node.path)


@register("tensorflow", Activation, ReLU, Sigmoid, Tanh, GELU, Softmax)
def _activation(node: Node, fmt: str) -> Any:
    return keras.layers.Activation(kn.activation(spec(node).activation), name=node.path)  # Keras's gelu is the erf form


@register("tensorflow", GlobalAvgPool2D)
def _global_avg_pool(node: Node, fmt: str) -> Any:
    return keras.layers.GlobalAveragePooling2D(data_format=fmt, keepdims=spec(node).keepdims, name=node.path)


@register("tensorflow", LayerNorm)
def _layer_norm(node: Node, fmt: str) -> Any:
    return keras.layers.LayerNormalization(axis=-1, epsilon=spec(node).eps, name=node.path)


@register("tensorflow", Dropout)
def _dropout(node: Node, fmt: str) -> Any:
    return keras.layers.Dropout(spec(node).rate, name=node.path)


@register("tensorflow", Identity)
def _identity(node: Node, fmt: str) -> Any:
    return keras.layers.Identity(name=node.path)


@register("tensorflow", Embedding)
def _embedding(node: Node, fmt: str) -> Any:
    return keras.layers.Embedding(spec(node).num_embeddings, spec(node).dim, name=node.path)


@register("tensorflow", RNN, GRU, LSTM)
def _recurrent(node: Node, fmt: str) -> Any:
    return ks.recurrent(node.layer, node.path)


@register("tensorflow", MultiHeadAttention)
def _attention(node: Node, fmt: str) -> Any:
    s: MultiHeadAttention = node.layer  # type: ignore[assignment]
    return ks.SelfAttention(num_heads=s.num_heads, key_dim=s.head_dim, use_bias=s.use_bias,
                            output_shape=s.num_hiddens, dropout=s.dropout, name=node.path)


@register("tensorflow", PositionalEncoding)
def _positional_encoding(node: Node, fmt: str) -> Any:
    return ks.PositionalEncoding(spec(node).max_len, name=node.path)


@register("tensorflow", ClassToken)
def _class_token(node: Node, fmt: str) -> Any:
    return ks.ClassToken(name=node.path)


@register("tensorflow", PositionEmbedding)
def _position_embedding(node: Node, fmt: str) -> Any:
    return ks.PositionEmbedding(max_len=node.layer.max_len, name=node.path)  # type: ignore[attr-defined]


@register("tensorflow", Reshape)
def _reshape(node: Node, fmt: str) -> Any:
    return keras.layers.Reshape(spec(node).shape, name=node.path)


@register("tensorflow", Permute)
def _permute(node: Node, fmt: str) -> Any:
    return keras.layers.Permute(spec(node).dims, name=node.path)


@register("tensorflow", Scale)
def _scale(node: Node, fmt: str) -> Any:
    return keras.layers.Rescaling(spec(node).factor, name=node.path)


@register("tensorflow", Take)
def _take(node: Node, fmt: str) -> Any:
    return ks.Take(spec(node).index, axis=spec(node).axis, name=node.path)


@register("tensorflow", OneHot)
def _one_hot(node: Node, fmt: str) -> Any:
    return ks.OneHot(spec(node).num_classes, name=node.path)

from . import extra as extra  # noqa: E402  (registers the builders of deferinit.layers_extra)
from . import up as up  # noqa: E402  (registers the builders of deferinit.layers_up)
