"""Layers that grow the spatial dims (decoders, U-Net): transposed convolutions and upsampling, each with its
shape rule beside its fields. The reference kernels are in :mod:`deferinit.ops_up`; each backend's builders in
``deferinit/adapters/<backend>/up.py``. ``GlobalAvgPool2D(keepdims=True)`` is a field of that layer itself.
"""

from __future__ import annotations

__all__ = ["UP_LAYERS"]

UP_LAYERS: tuple[type, ...] = ()
