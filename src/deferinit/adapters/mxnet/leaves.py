"""The MXNet table: spec leaf type -> Gluon builder, each registered with ``@deferinit.extend.register_builder(
"mxnet", LayerType)`` and looked up with ``extend.builder_for("mxnet", type(layer))``.

A builder is what a user's custom layer provides on this backend::

    @register_builder("mxnet", MyLayer)
    def build(layer: MyLayer, data_format: str) -> tuple[gluon.HybridBlock, dict[str, gluon.Parameter]]:
        ...

It receives the spec's layer and the model's data format (``"channels_first"`` or ``"channels_last"``) and returns
a Gluon ``HybridBlock`` (built with its input dims at 0, e.g. ``nn.Dense(units, in_units=0, flatten=False)``, so
Gluon infers them on the first input) and its Parameters by the canonical names of the layer's rule (``{"weight":
dense.weight, ...}``), each in the canonical layout (Gluon's own already are: Dense ``(out, in)``, Conv OIHW). The
block must be hybridizable (``hybrid_forward(F, x)``): the model runs as one cached Gluon graph. Sequence and token
layers are registered in ``sequence.py``.
"""

from __future__ import annotations

from typing import Any

from mxnet import gluon
from mxnet.gluon import nn

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
from . import modules, nan
from . import sequence as sequence  # registers the sequence and token layers

__all__ = ["Built"]

Built = tuple[gluon.HybridBlock, dict[str, Any]]  # the block for a position, and its Parameters by spec name


def _split_activation(name: str | None) -> tuple[str | None, str | None]:
    """Gluon's Dense/Conv take sigmoid/tanh themselves; others follow as a block of their own (relu: nan.py)."""
    return (name, None) if name in (None, "sigmoid", "tanh") else (None, name)


def _then(block: gluon.HybridBlock, activation: str | None) -> gluon.HybridBlock:
    if activation is None:
        return block
    seq = nn.HybridSequential()
    seq.add(block, modules.activation_block(activation))
    return seq


def _params(block: gluon.HybridBlock, **names: str | None) -> dict[str, Any]:
    return {spec_name: getattr(block, attr) for spec_name, attr in names.items() if attr is not None}


@register_builder("mxnet", Dense)
def _dense(layer: Dense, fmt: str) -> Built:
    own, after = _split_activation(layer.activation)
    dense = nn.Dense(layer.units, activation=own, use_bias=layer.use_bias, flatten=False, in_units=0)
    return _then(dense, after), _params(dense, weight="weight", bias="bias" if layer.use_bias else None)


def _conv_padding(layer: Conv1D | Conv2D) -> tuple[Any, modules.Pad | None]:
    """Gluon's own (symmetric) padding where it can express the spec's, else an explicit Pad before a valid conv."""
    if not isinstance(layer.padding, str):
        return layer.padding, None
    if layer.padding == "valid":
        return 0, None
    if any(s > 1 for s in layer.stride):  # TensorFlow's "same" with a stride: the pads depend on the input size
        return 0, modules.Pad(layer.pads, layer.ndim)
    pads = layer.pads((None,) * layer.ndim)  # stride 1: total = dilated kernel - 1, the odd pixel after
    if all(b == a for b, a in pads):
        return tuple(b for b, _ in pads), None
    return 0, modules.Pad(pads, layer.ndim)


@register_builder("mxnet", Conv1D, Conv2D)
def _conv(layer: Conv1D | Conv2D, fmt: str) -> Built:
    own, after = _split_activation(layer.activation)
    padding, pad = _conv_padding(layer)
    cls, layout = (nn.Conv1D, "NCW") if layer.ndim == 1 else (nn.Conv2D, "NCHW")
    conv = cls(layer.channels, layer.kernel_size, strides=layer.stride, padding=padding, dilation=layer.dilation,
               groups=layer.groups, layout=layout, activation=own, use_bias=layer.use_bias, in_channels=0)
    block: gluon.HybridBlock = conv
    if pad is not None:
        block = nn.HybridSequential()
        block.add(pad, conv)
    if fmt == "channels_last":
        block = modules.ChannelsFirst(block, layer.ndim)
    return _then(block, after), _params(conv, weight="weight", bias="bias" if layer.use_bias else None)


def _layout(fmt: str) -> str:
    return "NCHW" if fmt == "channels_first" else "NHWC"


@register_builder("mxnet", MaxPool2D, AvgPool2D)
def _pool(layer: MaxPool2D | AvgPool2D, fmt: str) -> Built:
    common = dict(strides=layer.strides, padding=layer.padding, layout=_layout(fmt), ceil_mode=False)
    if isinstance(layer, MaxPool2D):
        return nan.MaxPool2D(layer.pool_size, **common), {}
    return nn.AvgPool2D(layer.pool_size, count_include_pad=True, **common), {}


@register_builder("mxnet", GlobalAvgPool2D)
def _global_avg_pool(layer: GlobalAvgPool2D, fmt: str) -> Built:
    if layer.keepdims:  # Gluon's pool keeps the (1, 1) spatial dims itself
        return nn.GlobalAvgPool2D(layout=_layout(fmt)), {}
    seq = nn.HybridSequential()
    seq.add(nn.GlobalAvgPool2D(layout=_layout(fmt)), nn.Flatten())
    return seq, {}


@register_builder("mxnet", BatchNorm)
def _batch_norm(layer: BatchNorm, fmt: str) -> Built:
    bn = modules.BatchNorm(axis=1 if fmt == "channels_first" else -1, momentum=layer.momentum, epsilon=layer.eps)
    return bn, _params(bn, weight="gamma", bias="beta", running_mean="running_mean", running_var="running_var")


@register_builder("mxnet", LayerNorm)
def _layer_norm(layer: LayerNorm, fmt: str) -> Built:
    ln = nn.LayerNorm(axis=-1, epsilon=layer.eps, in_channels=0)
    return ln, _params(ln, weight="gamma", bias="beta")


@register_builder("mxnet", Embedding)
def _embedding(layer: Embedding, fmt: str) -> Built:
    emb = nn.Embedding(layer.num_embeddings, layer.dim)  # both dims are the spec's: nothing to infer
    return emb, _params(emb, weight="weight")


@register_builder("mxnet", Activation, ReLU, Sigmoid, Tanh, GELU, Softmax)
def _activation(layer: Any, fmt: str) -> Built:
    return modules.activation_block(layer.activation), {}


@register_builder("mxnet", Dropout)
def _dropout(layer: Dropout, fmt: str) -> Built:
    return modules.Dropout(layer.rate), {}


@register_builder("mxnet", Flatten)
def _flatten(layer: Flatten, fmt: str) -> Built:
    return nn.Flatten(), {}


@register_builder("mxnet", Identity)
def _identity(layer: Identity, fmt: str) -> Built:
    return modules.identity(), {}

from . import extra as extra  # noqa: E402  (registers the builders of deferinit.layers_extra)
from . import up as up  # noqa: E402  (registers the builders of deferinit.layers_up)
