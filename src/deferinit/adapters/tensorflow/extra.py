"""The Keras layers of :mod:`deferinit.layers_extra` (imported at the end of ``leaves.py``), Keras's own
wherever Keras has one."""

from __future__ import annotations

from typing import Any

from ... import extend
from ...layers_extra import HardSigmoid, HardSwish, LeakyReLU, ReLU6, SiLU
from ...shapes import Node

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
# isort: on

from .leaves import _activation

register = extend.register_builder
register("tensorflow", ReLU6, SiLU, HardSwish, HardSigmoid)(_activation)


@register("tensorflow", LeakyReLU)
def _leaky_relu(node: Node, fmt: str) -> Any:
    return keras.layers.LeakyReLU(negative_slope=node.layer.negative_slope, name=node.path)  # type: ignore[attr-defined]
