# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Flax's own modules.

``flax.linen.ConvTranspose`` with ``transpose_kernel=True`` is the gradient of a convolution, as PyTorch's
ConvTranspose is; its kernel is ``(*kernel, out, in)``, the canonical ``(in, out, *kernel)`` read backwards
(layout kind ``conv``). Its explicit padding pads the stride-dilated input before a stride-1 correlation, so
PyTorch's ``padding=p`` and ``output_padding=op`` are ``(d*(k-1) - p, d*(k-1) - p + op)`` (negative pads crop).

``Upsample2D``: nearest is ``jax.image.resize(method="nearest")``. Bilinear is NOT ``jax.image.resize``: that
one has the same half-pixel centres (PyTorch's ``align_corners=False``) and gives the same numbers on finite
data, but computes each axis as a product with a dense weight matrix, so one NaN spreads over its whole row and
column (NaN * 0); here the two taps of each output are gathered and interpolated, as PyTorch (and the
reference) do, so NaN stays where its taps reach.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...errors import UnsupportedLayerError, where
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
from ...ops_up import bilinear_taps
from ...shapes import Node
from . import modules as M
from . import params as T


class ConvTranspose(nn.ConvTranspose):
    """``nn.ConvTranspose`` plus transposes for channels-first data and the spec's activation."""

    activation: str | None = None
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        if self.channels_first:
            y = M._to_first(super().__call__(M._to_last(x)))
        else:
            y = super().__call__(x)
        return M.activate(self.activation, y)


@register_builder("jax", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    if layer.groups > 1:
        raise UnsupportedLayerError(f"{where(node.path, layer, 'jax')}: expected groups=1 (flax.linen.ConvTranspose "
                                    f"has no feature groups), received groups={layer.groups}")
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in
                    zip(layer.kernel_size, layer.padding, layer.output_padding, layer.dilation))
    m = ConvTranspose(layer.channels, tuple(layer.kernel_size), strides=tuple(layer.stride), padding=padding,
                      kernel_dilation=tuple(layer.dilation), use_bias=layer.use_bias, transpose_kernel=True,
                      activation=layer.activation, channels_first=cf, name=name)
    out: dict[str, T.Layout] = {"weight": T.One(T.Leaf("params", "kernel", m.kernel_init, kernel=True), "conv")}
    if layer.use_bias:
        out["bias"] = T.One(T.Leaf("params", "bias", m.bias_init))
    return m, out


class Upsample(nn.Module):
    scale: tuple = (2, 2)
    mode: str = "nearest"
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        axes = (2, 3) if self.channels_first else (1, 2)
        shape = list(x.shape)
        for axis, s in zip(axes, self.scale):
            shape[axis] *= s
        if self.mode == "nearest":
            return jax.image.resize(x, tuple(shape), method="nearest")
        for axis, s in zip(axes, self.scale):
            lo, hi, w = bilinear_taps(x.shape[axis], s)  # static: from the traced shape
            wshape = [1] * x.ndim
            wshape[axis] = -1
            w = jnp.asarray(w.reshape(wshape), x.dtype)
            x = jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w
        return x


@register_builder("jax", Upsample2D)
def _upsample(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    return Upsample(tuple(layer.scale_factor), layer.mode, cf, name=name), {}
