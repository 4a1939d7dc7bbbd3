# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Flax's own
modules and functions wherever Flax has one."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ...extend import register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from ...shapes import Node
from . import params as T
from . import sequence as seq
from .leaves import _activation

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
