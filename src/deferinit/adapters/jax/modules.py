# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""The Flax linen modules the jax adapter builds a spec from (imported only with the jax backend).

Leaves subclass Flax's own layers where one fits (``nn.Dense``, ``nn.Conv``, ``nn.LayerNorm``, ``nn.Embed``,
``nn.Dropout``) so their variables keep Flax's names and layouts (``kernel`` (in, out) / HWIO, ``scale``,
``embedding``); the subclasses only add the fused activation, the ``train`` argument every module takes, and
the transposes a channels-first spec needs (Flax convolutions and pools are channels-last only). Data flows
between modules in the spec's own layout, so Flatten, Concat and every recorded intermediate are in that
layout; under ``jax.jit`` XLA folds the transpose pairs into the convolutions' layouts.

Containers hold their children as a tuple field, so Flax names them ``layers_0``, ``layers_1``... exactly as
``nn.Sequential`` does (a spec ``name=`` is kept as the module name instead). A tied position holds a
:class:`Tied` module that calls the first position's module, found through the module tree by its route;
adoption-by-reference would also share parameters, but Flax would then own them at whichever position it set
up first (a shallow container adopts its children before a deeper one does), not at the first position.
"""

from __future__ import annotations

import contextvars
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ...merges import combine

__all__ = ["activate", "Sequential", "Residual", "Concat", "Merge", "Tied", "Dense", "Conv", "Pool", "GlobalAvgPool",
           "BatchNorm", "LayerNorm", "Dropout", "Flatten", "Identity", "Activation", "Embed", "recording"]

#: while set (by the adapter's ``intermediates``), containers store each child position's output here
_RECORD: contextvars.ContextVar[dict | None] = contextvars.ContextVar("deferinit_jax_record", default=None)


def recording(record: dict) -> contextvars.Token:
    return _RECORD.set(record)


def _record(paths: tuple[str, ...], i: int, y: Any) -> Any:
    record = _RECORD.get()
    # a tied container runs its children a second time; the first run is the position the paths name
    if record is not None and i < len(paths) and paths[i] not in record:
        record[paths[i]] = y
    return y


def activate(name: str | None, x: Any) -> Any:
    if name is None:
        return x
    if name == "relu":
        return nn.relu(x)
    if name == "sigmoid":
        return nn.sigmoid(x)
    if name == "tanh":
        return jnp.tanh(x)
    if name == "gelu":
        return nn.gelu(x, approximate=False)  # Flax's default is the tanh form; the spec's GELU is erf
    if name == "softmax":
        return nn.softmax(x, axis=-1)
    if name == "silu":
        return nn.silu(x)
    from .activations import activate_extra

    return activate_extra(name, x)  # pragma: no cover - names are validated by the spec


def _to_last(x: Any) -> Any:
    return jnp.transpose(x, (0,) + tuple(range(2, x.ndim)) + (1,))


def _to_first(x: Any) -> Any:
    return jnp.transpose(x, (0, x.ndim - 1) + tuple(range(1, x.ndim - 1)))


# ------------------------------------------------------------------------------------------- containers
class Sequential(nn.Module):
    """Children one after the other (``nn.Sequential`` passes ``train`` to the first child only)."""

    layers: tuple = ()
    paths: tuple = ()
    preserve_adopted_names: ClassVar[bool] = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        for i, layer in enumerate(self.layers):
            x = _record(self.paths, i, layer(x, train))
        return x


class Residual(nn.Module):
    body: nn.Module
    shortcut: nn.Module | None = None
    activation: str | None = None
    paths: tuple = ()
    preserve_adopted_names: ClassVar[bool] = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        y = _record(self.paths, 0, self.body(x, train))
        short = x if self.shortcut is None else _record(self.paths, 1, self.shortcut(x, train))
        return activate(self.activation, y + short)


class Concat(nn.Module):
    layers: tuple = ()
    channels_first: bool = True
    paths: tuple = ()
    preserve_adopted_names: ClassVar[bool] = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        outs = [_record(self.paths, i, layer(x, train)) for i, layer in enumerate(self.layers)]
        rank = outs[0].ndim
        return jnp.concatenate(outs, axis=1 if self.channels_first or rank == 2 else rank - 1)


class Merge(nn.Module):
    """``Add`` / ``Multiply``: every branch on the same input, summed or multiplied (jax.numpy broadcasting)."""

    layers: tuple = ()
    op: str = "add"
    paths: tuple = ()
    preserve_adopted_names: ClassVar[bool] = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        return combine(self.op, [_record(self.paths, i, layer(x, train)) for i, layer in enumerate(self.layers)])


class Tied(nn.Module):
    """A second use of a layer: calls the module at ``route`` (``(field, index)`` steps from the root)."""

    route: tuple = ()

    def __call__(self, x: Any, train: bool = False) -> Any:
        owner: Any = self
        while isinstance(owner.parent, nn.Module):
            owner = owner.parent
        for field, index in self.route:
            owner = getattr(owner, field)
            if index is not None:
                owner = owner[index]
        return owner(x, train)


# ------------------------------------------------------------------------------------------- leaves
class Dense(nn.Dense):
    activation: str | None = None

    def __call__(self, x: Any, train: bool = False) -> Any:
        return activate(self.activation, super().__call__(x))


class Conv(nn.Conv):
    """``nn.Conv`` (kernel ``(*k, in // groups, out)``) plus transposes for channels-first data."""

    activation: str | None = None
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        if self.channels_first:
            y = _to_first(super().__call__(_to_last(x)))
        else:
            y = super().__call__(x)
        return activate(self.activation, y)  # softmax acts on the spec layout's last axis


class Pool(nn.Module):
    kind: str = "max"
    window: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: tuple = ((0, 0), (0, 0))
    channels_first: bool = True

    def __call__(self, x: Any, train: bool = False) -> Any:
        xl = _to_last(x) if self.channels_first else x
        if self.kind == "max":  # pads with -inf
            y = nn.max_pool(xl, self.window, self.strides, self.padding)
        else:  # counts padded zeros, as the spec says
            y = nn.avg_pool(xl, self.window, self.strides, self.padding, count_include_pad=True)
        return _to_first(y) if self.channels_first else y


class GlobalAvgPool(nn.Module):
    channels_first: bool = True
    keepdims: bool = False

    def __call__(self, x: Any, train: bool = False) -> Any:
        return jnp.mean(x, axis=(2, 3) if self.channels_first else (1, 2), keepdims=self.keepdims)


class BatchNorm(nn.Module):
    """Flax's ``nn.BatchNorm`` variables (params ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``) and
    momentum convention (the weight of the OLD statistics: spec momentum 0.1 is 0.9 here), but the running
    variance is updated with the UNBIASED batch variance, as PyTorch and the spec do: ``nn.BatchNorm``
    stores the biased one, which would drift from every other backend by ``n / (n - 1)`` each step."""

    momentum: float = 0.9
    epsilon: float = 1e-5
    channels_first: bool = True

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        axis = 1 if self.channels_first or x.ndim == 2 else x.ndim - 1
        c = x.shape[axis]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        shape = [1] * x.ndim
        shape[axis] = c
        if train:
            axes = tuple(a for a in range(x.ndim) if a != axis)
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
            if not self.is_initializing():  # as nn.BatchNorm: init leaves the statistics at their start values
                n = x.size // c
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        # nn.BatchNorm's arithmetic: scale folded into the (C,) inverse deviation, one multiply of the data
        mul = lax.rsqrt(var + self.epsilon) * scale
        return (x - mean.reshape(shape)) * mul.reshape(shape) + bias.reshape(shape)


class LayerNorm(nn.LayerNorm):
    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)


class Dropout(nn.Dropout):
    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x, deterministic=not train)


class Flatten(nn.Module):
    def __call__(self, x: Any, train: bool = False) -> Any:
        return x.reshape(x.shape[0], -1)  # the data is in the spec's layout, so this is the spec's order


class Identity(nn.Module):
    def __call__(self, x: Any, train: bool = False) -> Any:
        return x


class Activation(nn.Module):
    activation: str = "relu"

    def __call__(self, x: Any, train: bool = False) -> Any:
        return activate(self.activation, x)


class Embed(nn.Embed):
    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)
