"""The numpy kernels of :mod:`deferinit.layers_extra`, registered as in ``leaves.py`` (imported at its end)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ... import ops_extra
from ...extend import builder_for, register_builder
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...layers_seq import GRU, LSTM, RNN
from ...shapes import Node
from .leaves import _activation
from .modules import NumpyNet

register_builder("numpy", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register_builder("numpy", LeakyReLU)
def _leaky_relu(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    return ops_extra.leaky_relu(x, cast(Any, node.layer).negative_slope)


_recurrent_all = builder_for("numpy", RNN)
assert _recurrent_all is not None


@register_builder("numpy", RNN, GRU, LSTM)
def _recurrent(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    y: np.ndarray = _recurrent_all(net, node, x, training)  # type: ignore[misc]
    return y if layer.return_sequences else ops_extra.last_step(y, len(layer.directions))
