# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Flax's own modules.

``flax.linen.ConvTranspose`` with ``transpose_kernel=True`` is the gradient of a convolution, as PyTorch's
ConvTranspose is; its kernel is ``(*kernel, out, in)``, the canonical ``(in, out, *kernel)`` read backwards
(layout kind ``conv``). Its explicit padding pads the stride-dilated input before a stride-1 correlation, so
PyTorch's ``padding=p`` and ``output_padding=op`` are ``(d*(k-1) - p, d*(k-1) - p + op)`` (negative pads crop).
Flax's ConvTranspose has no feature groups: ``groups > 1`` is :class:`GroupedConvTranspose`, the same kernel layout
(``(*kernel, out // groups, in)``) and the same computation as ``lax.conv_transpose(transpose_kernel=True)`` (an
input-dilated correlation with the kernel flipped and its channel axes swapped), per group through
``lax.conv_general_dilated``'s ``feature_group_count``.

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


class GroupedConvTranspose(nn.Module):
    """A transposed convolution with feature groups: kernel ``(*kernel, out // groups, in)``, as
    ``nn.ConvTranspose(transpose_kernel=True)`` holds it with one group; group ``g`` maps input channels
    ``[g*in/G, (g+1)*in/G)`` to output channels ``[g*out/G, (g+1)*out/G)``, as PyTorch's ConvTranspose does."""

    features: int
    kernel_size: tuple
    strides: tuple
    padding: tuple
    kernel_dilation: tuple
    groups: int
    use_bias: bool = True
    activation: str | None = None
    channels_first: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()  # nn.ConvTranspose's defaults
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        xl = M._to_last(x) if self.channels_first else x
        og = self.features // self.groups
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (og, xl.shape[-1]), jnp.float32)
        y = grouped_conv_transpose(xl, kernel, self.strides, self.padding, self.kernel_dilation, self.groups)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return M.activate(self.activation, M._to_first(y) if self.channels_first else y)


def grouped_conv_transpose(xl: Any, kernel: Any, strides: tuple, padding: tuple, dilation: tuple, groups: int) -> Any:
    """``lax.conv_transpose(transpose_kernel=True)`` with feature groups, channels-last ``xl``, ``kernel`` of shape
    ``(*k, out // groups, in)`` (also what the NNX backend's grouped layer holds)."""
    n = kernel.ndim - 2
    ks, og, cin = tuple(kernel.shape[:n]), kernel.shape[-2], kernel.shape[-1]
    # (*k, out/G, G, in/G) -> (*k, in/G, G, out/G): each group's kernel with its channel axes swapped, the groups
    # stacked on the output axis; then flipped in space (the gradient of a correlation)
    eff = jnp.reshape(kernel, ks + (og, groups, cin // groups))
    eff = jnp.transpose(eff, tuple(range(n)) + (n + 2, n + 1, n)).reshape(ks + (cin // groups, og * groups))
    eff = jnp.flip(eff, axis=tuple(range(n)))
    spatial = "HW"[:n] if n <= 2 else "DHW"
    dn = jax.lax.conv_dimension_numbers(xl.shape, eff.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    return jax.lax.conv_general_dilated(xl, eff.astype(xl.dtype), (1,) * n, padding, lhs_dilation=strides,
                                        rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=groups)


@register_builder("jax", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, cf: bool, name: str) -> T.Made:
    layer: Any = node.layer
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in
                    zip(layer.kernel_size, layer.padding, layer.output_padding, layer.dilation))
    m: Any
    if layer.groups > 1:
        m = GroupedConvTranspose(layer.channels, tuple(layer.kernel_size), tuple(layer.stride), padding,
                                 tuple(layer.dilation), layer.groups, layer.use_bias, layer.activation, cf, name=name)
    else:
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
