"""The table of the torch backend: spec leaf type -> the torch modules that compute it.

A builder is registered with ``@deferinit.extend.register_builder("torch", LayerType)`` (built-in layers and a
user's own alike) and looked up with ``extend.builder_for("torch", type(layer))``. Its signature::

    builder(layer, rank: int | None) -> nn.Module | list[Step]

``layer`` is the spec's layer object; ``rank`` is the input's rank where the spec alone fixes it, else None (only
a hint: BatchNorm uses it to pick torch's class before the dry run, and the real rank fixes it at init). It
returns either one ``nn.Module`` acting on the spec's data layout, or a list of :class:`~.modules.Step`:
exactly one main step (``tag=""``) plus stateless extras (activation, padding; each with a tag), each saying
which layout it needs (``CF``: channels at axis 1; ``SPEC``: the spec's format; ``ANY``: element-wise). The
main module holds the layer's canonical parameters under their canonical names (``weight``, ``bias``...) in
canonical layout (torch's own) and defers every input-dependent dim with torch's own lazy mechanism
(``nn.LazyLinear``..., or ``LazyModuleMixin``). No builder for a layer type is an ``UnsupportedLayerError``
naming the layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
    Leaf,
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
from . import modules as tm
from . import sequence as ts
from .modules import ANY, CF, F32, SPEC, LazyLayerNorm, Step
from .tensors import uninitialized

__all__ = ["leaf_steps", "rank_after", "native_attr", "kernel_attrs", "LAZY_BN"]

LAZY_BN: dict[int, Any] = {2: nn.LazyBatchNorm1d, 3: nn.LazyBatchNorm1d, 4: nn.LazyBatchNorm2d, 5: nn.LazyBatchNorm3d}
register = extend.register_builder


def leaf_steps(node: Node, layer: Leaf, rank: int | None) -> list[Step]:
    fn = extend.builder_for("torch", type(layer))
    if fn is None:
        raise UnsupportedLayerError(f"{where(node.path, layer, 'torch')}: no torch module for this layer type "
                                    f"(register one with deferinit.register_builder('torch', "
                                    f"{type(layer).__name__}))")
    try:
        out = fn(layer, rank)
    except UnsupportedLayerError as exc:  # a builder refusing an option it cannot express: say where
        raise UnsupportedLayerError(f"{where(node.path, layer, 'torch')}: {exc}") from None
    return [Step("", out, SPEC)] if isinstance(out, nn.Module) else list(out)


def _act(name: str | None) -> list[Step]:
    return [] if name is None else [tm.activation(name)]


@register("torch", Dense)
def _dense(layer: Dense, rank: int | None) -> list[Step]:
    return [Step("", nn.LazyLinear(layer.units, bias=layer.use_bias, dtype=F32), SPEC)] + _act(layer.activation)


@register("torch", Conv1D, Conv2D)
def _conv(layer: Conv1D | Conv2D, rank: int | None) -> list[Step]:
    steps, padding = [], layer.padding
    if padding == "same" and any(s > 1 for s in layer.stride):  # torch's padding="same" refuses stride > 1
        steps.append(Step("pad", tm.SamePad(layer.kernel_size, layer.stride, layer.dilation), CF))
        padding = 0
    elif padding == "same":  # stride 1: pads of d*(k-1) in total, whatever the size; odd pixel after
        pads = layer.pads((None,) * len(layer.kernel_size))
        if any(before != after for before, after in pads):  # torch's "same" would pad a copy and warn
            flat = tuple(p for pair in reversed(pads) for p in pair)
            steps.append(Step("pad", (nn.ZeroPad1d if isinstance(layer, Conv1D) else nn.ZeroPad2d)(flat), CF))
            padding = 0
    elif padding == "valid":
        padding = 0
    cls = nn.LazyConv1d if isinstance(layer, Conv1D) else nn.LazyConv2d
    conv = cls(layer.channels, layer.kernel_size, stride=layer.stride, padding=padding, dilation=layer.dilation,
               groups=layer.groups, bias=layer.use_bias, dtype=F32)
    return steps + [Step("", conv, CF)] + _act(layer.activation)


@register("torch", MaxPool2D, AvgPool2D)
def _pool(layer: MaxPool2D | AvgPool2D, rank: int | None) -> list[Step]:
    if isinstance(layer, MaxPool2D):  # pads with -inf, floor mode
        return [Step("", nn.MaxPool2d(layer.pool_size, layer.strides, layer.padding), CF)]
    return [Step("", nn.AvgPool2d(layer.pool_size, layer.strides, layer.padding, ceil_mode=False,
                                  count_include_pad=True), CF)]


@register("torch", GlobalAvgPool2D)
def _global_pool(layer: GlobalAvgPool2D, rank: int | None) -> list[Step]:
    if layer.keepdims:  # (N, C, 1, 1), moved back to the spec's format
        return [Step("", nn.AdaptiveAvgPool2d(1), CF)]
    return [Step("", nn.AdaptiveAvgPool2d(1), CF), Step("flatten", nn.Flatten(), CF, ANY)]


@register("torch", BatchNorm)
def _batch_norm(layer: BatchNorm, rank: int | None) -> list[Step]:
    # torch's BatchNorm classes differ only in the input rank they accept: the class is guessed from the spec
    # here and fixed from the real rank in _native_init. momentum and the unbiased running variance are
    # exactly the reference rule.
    cls: Any = LAZY_BN[rank] if rank in LAZY_BN else nn.LazyBatchNorm1d
    return [Step("", cls(eps=layer.eps, momentum=layer.momentum, dtype=F32), CF)]


@register("torch", LayerNorm)
def _layer_norm(layer: LayerNorm, rank: int | None) -> list[Step]:
    # torch has no lazy LayerNorm: ours (modules.LazyLayerNorm) infers its size in the dry run, as LazyLinear does
    return [Step("", LazyLayerNorm(eps=layer.eps, dtype=F32), SPEC)]


@register("torch", Embedding)
def _embedding(layer: Embedding, rank: int | None) -> list[Step]:
    # both dims are in the spec, but the table is allocated (and drawn, under the key) only in _native_init;
    # the stand-in _weight is an empty meta tensor, so nothing is drawn or allocated here
    table = torch.empty((layer.num_embeddings, layer.dim), device="meta", dtype=F32)
    return [Step("", uninitialized(nn.Embedding(layer.num_embeddings, layer.dim, _weight=table)), SPEC, SPEC)]


@register("torch", Activation, ReLU, Sigmoid, Tanh, GELU, Softmax)
def _activation(layer: Any, rank: int | None) -> list[Step]:
    step = tm.activation(layer.activation)
    return [step._replace(tag="")]


@register("torch", Dropout)
def _dropout(layer: Dropout, rank: int | None) -> list[Step]:
    return [Step("", nn.Dropout(layer.rate), ANY)]


@register("torch", Flatten)
def _flatten(layer: Flatten, rank: int | None) -> list[Step]:
    return [Step("", nn.Flatten(), SPEC, ANY)]


@register("torch", Identity)
def _identity(layer: Identity, rank: int | None) -> list[Step]:
    return [Step("", nn.Identity(), ANY)]


# --------------------------------------------------------------------------------------------- sequence layers
_RECURRENT = {RNN: ts.LazyRNN, GRU: ts.LazyGRU, LSTM: ts.LazyLSTM}


@register("torch", RNN, GRU, LSTM)
def _recurrent(layer: Any, rank: int | None) -> list[Step]:
    kw: dict[str, Any] = {"num_layers": layer.num_layers, "bias": layer.use_bias,
                          "bidirectional": layer.bidirectional}
    if layer.num_layers > 1:  # dropout acts between layers only: torch warns when it is given for one layer
        kw["dropout"] = layer.dropout
    if isinstance(layer, RNN):
        kw["nonlinearity"] = layer.activation
    return [Step("", _RECURRENT[type(layer)](layer.hidden_size, **kw), SPEC),
            Step("output", ts.RecurrentOutput(), ANY)]


@register("torch", MultiHeadAttention)
def _attention(layer: MultiHeadAttention, rank: int | None) -> list[Step]:
    return [Step("", ts.MultiHeadAttentionModule(layer.num_hiddens, layer.num_heads, layer.dropout,
                                                 layer.use_bias, causal=layer.causal), SPEC)]


@register("torch", PositionalEncoding)
def _positional_encoding(layer: PositionalEncoding, rank: int | None) -> list[Step]:
    return [Step("", ts.LazySinusoidalEncoding(layer.max_len), SPEC)]


@register("torch", ClassToken)
def _class_token(layer: ClassToken, rank: int | None) -> list[Step]:
    return [Step("", ts.LazyClassToken(), SPEC)]


@register("torch", PositionEmbedding)
def _position_embedding(layer: PositionEmbedding, rank: int | None) -> list[Step]:
    return [Step("", ts.LazyPositionEmbedding(layer.max_len), SPEC)]


@register("torch", Reshape)
def _reshape(layer: Reshape, rank: int | None) -> list[Step]:
    return [Step("", ts.ReshapeModule(layer.shape), SPEC, ANY if len(layer.shape) == 1 else SPEC)]


@register("torch", Permute)
def _permute(layer: Permute, rank: int | None) -> list[Step]:
    return [Step("", ts.PermuteModule(layer.dims), SPEC, SPEC)]


@register("torch", Scale)
def _scale(layer: Scale, rank: int | None) -> list[Step]:
    return [Step("", ts.ScaleModule(layer.factor), ANY)]


@register("torch", Take)
def _take(layer: Take, rank: int | None) -> list[Step]:
    return [Step("", ts.TakeModule(layer.index, layer.axis), SPEC, SPEC)]


@register("torch", OneHot)
def _one_hot(layer: OneHot, rank: int | None) -> list[Step]:
    return [Step("", ts.OneHotModule(layer.num_classes), SPEC, SPEC)]


# --------------------------------------------------------------------------------------------- per-layer facts
_MHA_ATTRS = {"q": "W_q", "k": "W_k", "v": "W_v", "out": "W_o"}


def native_attr(layer: Any, pname: str) -> str:
    """The torch attribute path, below the layer's module, of canonical parameter ``pname``."""
    if isinstance(layer, MultiHeadAttention):
        proj, _, kind = pname.partition("_")
        return f"{_MHA_ATTRS[proj]}.{kind}"
    return pname


def kernel_attrs(layer: Any) -> list[str]:
    """Weight matrices a ``torch.nn.init`` function is applied to: Dense/Conv kernels and Embedding tables, and
    (d2l's ``init_seq2seq`` does the same for a GRU: every ``weight*`` of ``_flat_weights_names``) attention
    projections and recurrent ``weight_ih``/``weight_hh``."""
    from ...layers_up import Conv1DTranspose, Conv2DTranspose

    if isinstance(layer, (Dense, Conv1D, Conv2D, Embedding, Conv1DTranspose, Conv2DTranspose)):
        return ["weight"]
    if isinstance(layer, MultiHeadAttention):
        return [f"{m}.weight" for m in _MHA_ATTRS.values()]
    if isinstance(layer, (RNN, GRU, LSTM)):
        dirs = ("", "_reverse") if layer.bidirectional else ("",)
        return [f"weight_{kind}_l{i}{sfx}" for i in range(layer.num_layers) for sfx in dirs for kind in ("ih", "hh")]
    return []


def rank_after(layer: Leaf, rank: int | None) -> int | None:
    """The output rank where the spec alone fixes it (only used to pick a BatchNorm class before init)."""
    if isinstance(layer, Conv1D):
        return 3
    if isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)):
        return 4
    if isinstance(layer, GlobalAvgPool2D):
        return 4 if layer.keepdims else 2
    if isinstance(layer, Flatten):
        return 2
    if isinstance(layer, (RNN, GRU, LSTM)):
        return 3 if layer.return_sequences else 2
    if isinstance(layer, (MultiHeadAttention, PositionalEncoding, ClassToken, PositionEmbedding)):
        return 3
    if isinstance(layer, Reshape):
        return len(layer.shape) + 1
    if isinstance(layer, Take):
        return None if rank is None else rank - 1
    if isinstance(layer, (Embedding, OneHot)):
        return None if rank is None else rank + 1
    return rank

from . import extra as extra  # noqa: E402  (registers the builders of deferinit.layers_extra)
from . import up as up  # noqa: E402  (registers the builders of deferinit.layers_up)
