# mypy: disable-error-code="misc"
"""NNX builders of :mod:`deferinit.layers_up` with parameters: ``Conv1DTranspose`` / ``Conv2DTranspose`` as
``nnx.ConvTranspose(in_features, ..., transpose_kernel=True)`` (the gradient of a convolution, as PyTorch's; kernel
``(*kernel, out, in)``, the jax backend's ``conv`` layout), ``in_features`` from the reference rules. PyTorch's
``padding=p`` / ``output_padding=op`` become lax's explicit pads ``(d*(k-1) - p, d*(k-1) - p + op)``, as on jax.
With ``groups > 1`` (NNX has no feature groups there) the layer is ``nnx.ConvTranspose`` built for one group's
outputs, so its kernel is ``(*kernel, out // groups, in)``, plus a bias of all ``out``, computed per group by the jax
backend's ``grouped_conv_transpose``. ``Upsample2D`` holds no variables: it runs the jax backend's module (``modules.Stateless``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose
from ...shapes import Node
from ..jax.modules import activate
from ..jax.up import grouped_conv_transpose
from . import modules as M
from .leaves import Made, _one


class ConvTranspose(nnx.ConvTranspose):
    """``nnx.ConvTranspose`` (channels-last) plus transposes for channels-first data and the spec's activation."""

    def __init__(self, *args: Any, activation: str | None = None, channels_first: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.activation, self.channels_first = activation, channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        y = M._to_first(super().__call__(M._to_last(x))) if self.channels_first else super().__call__(x)
        return activate(self.activation, y)


class GroupedConvTranspose(nnx.ConvTranspose):
    """``nnx.ConvTranspose`` holding one group's outputs' kernel ``(*kernel, out // groups, in)``, its own bias
    ``(out,)``, run per group (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, *args: Any, groups: int, bias: bool,
                 activation: str | None = None, channels_first: bool = True, rngs: nnx.Rngs, **kwargs: Any) -> None:
        super().__init__(in_features, out_features // groups, *args, use_bias=False, rngs=rngs, **kwargs)
        self.groups, self.activation, self.channels_first = groups, activation, channels_first
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if bias else None  # Flax's default: zeros

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        xl = M._to_last(x) if self.channels_first else x
        y = grouped_conv_transpose(xl, self.kernel.value, tuple(self.strides), tuple(self.padding),
                                   tuple(self.kernel_dilation), self.groups)
        if self.bias is not None:
            y = y + self.bias.value
        return activate(self.activation, M._to_first(y) if self.channels_first else y)


@register_builder("nnx", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Any = node.layer
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in
                    zip(layer.kernel_size, layer.padding, layer.output_padding, layer.dilation))
    cin = int(in_shape[1] if cf else in_shape[-1])
    if layer.groups > 1:
        g = GroupedConvTranspose(cin, layer.channels, tuple(layer.kernel_size), tuple(layer.stride), padding=padding,
                                 kernel_dilation=tuple(layer.dilation), transpose_kernel=True, groups=layer.groups,
                                 bias=layer.use_bias, activation=layer.activation, channels_first=cf, rngs=rngs)
        return g, {"weight": _one("kernel", "conv"), **({"bias": _one("bias")} if layer.use_bias else {})}
    m = ConvTranspose(int(in_shape[1] if cf else in_shape[-1]), layer.channels, tuple(layer.kernel_size),
                      tuple(layer.stride), padding=padding, kernel_dilation=tuple(layer.dilation),
                      use_bias=layer.use_bias, transpose_kernel=True, activation=layer.activation,
                      channels_first=cf, rngs=rngs)
    return m, {"weight": _one("kernel", "conv"), **({"bias": _one("bias")} if layer.use_bias else {})}
