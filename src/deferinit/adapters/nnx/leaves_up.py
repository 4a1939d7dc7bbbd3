# mypy: disable-error-code="misc"
"""NNX builders of :mod:`deferinit.layers_up` with parameters: ``Conv1DTranspose`` / ``Conv2DTranspose`` as
``nnx.ConvTranspose(in_features, ..., transpose_kernel=True)`` (the gradient of a convolution, as PyTorch's; kernel
``(*kernel, out, in)``, the jax backend's ``conv`` layout), ``in_features`` from the reference rules. PyTorch's
``padding=p`` / ``output_padding=op`` become lax's explicit pads ``(d*(k-1) - p, d*(k-1) - p + op)``, as on jax.
``Upsample2D`` holds no variables: it runs the jax backend's module (``modules.Stateless``)."""

from __future__ import annotations

from typing import Any

from flax import nnx

from ...errors import UnsupportedLayerError, where
from ...extend import register_builder
from ...layers_up import Conv1DTranspose, Conv2DTranspose
from ...shapes import Node
from ..jax.modules import activate
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


@register_builder("nnx", Conv1DTranspose, Conv2DTranspose)
def _conv_transpose(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    layer: Any = node.layer
    if layer.groups > 1:
        raise UnsupportedLayerError(f"{where(node.path, layer, 'nnx')}: expected groups=1 (flax.nnx.ConvTranspose "
                                    f"has no feature groups), received groups={layer.groups}")
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in
                    zip(layer.kernel_size, layer.padding, layer.output_padding, layer.dilation))
    m = ConvTranspose(int(in_shape[1] if cf else in_shape[-1]), layer.channels, tuple(layer.kernel_size),
                      tuple(layer.stride), padding=padding, kernel_dilation=tuple(layer.dilation),
                      use_bias=layer.use_bias, transpose_kernel=True, activation=layer.activation,
                      channels_first=cf, rngs=rngs)
    return m, {"weight": _one("kernel", "conv"), **({"bias": _one("bias")} if layer.use_bias else {})}
