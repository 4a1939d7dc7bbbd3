# mypy: allow-subclassing-any
"""The Gluon builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Gluon's own
blocks wherever Gluon has one."""

from __future__ import annotations

from typing import Any

from mxnet import gluon
from mxnet.gluon import nn

from ...extend import register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from . import sequence
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
