# mypy: disable-error-code="misc, untyped-decorator"
"""The Flax builders of :mod:`deferinit.layers_up` (imported at the end of ``leaves.py``), Flax's own modules.

``flax.linen.ConvTranspose`` with ``transpose_kernel=True`` is the gradient of a convolution, as PyTorch's
ConvTranspose is; its kernel is ``(*kernel, out, in)``, the canonical ``(in, out, *kernel)`` read backwards
(layout kind ``conv``). Its explicit padding pads the stride-dilated input before a stride-1 correlation, so
PyTorch's ``padding=p`` and ``output_padding=op`` are ``(d*(k-1) - p, d*(k-1) - p + op)`` (negative pads crop).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from ...errors import UnsupportedLayerError, where
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose
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
