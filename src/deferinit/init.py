"""Portable initializers: the same weights, bit for bit, on every backend.

Values are drawn in NumPy, in the canonical layout, by a counter-based generator (``counter.py``): each
value depends only on ``(key, canonical name, flat index)``, so it does not depend on the backend, on the
order in which a framework creates its variables, or on which other parameters exist, and any part of a
parameter (a shard) is drawn alone with the same bits it has in the whole (:meth:`Initializer.draw`,
:func:`generate_shard`). Adapters then load them into the native
model. Only weights with role ``kernel`` or ``embedding`` are drawn; biases and shifts start at zero,
norm scales at one, running means at zero and running variances at one; a role ``fill=<value>``
(LayerScale's weight) starts at that value.

Fans follow PyTorch's convention: for a weight ``(out, in, *kernel)``, ``fan_in = in * prod(kernel)`` and
``fan_out = out * prod(kernel)``; an embedding ``(num, dim)`` has ``fan_in = num``, ``fan_out = dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .counter import CounterRNG, chunks, flat_runs
from .errors import SpecError

__all__ = ["Initializer", "Zeros", "Ones", "Constant", "Normal", "Uniform", "XavierUniform", "XavierNormal",
           "KaimingUniform", "KaimingNormal", "get", "fans", "generate", "generate_shard", "NAMES"]


def fans(shape: tuple[int, ...], role: str = "kernel") -> tuple[int, int]:
    if role == "embedding":
        return shape[-2], shape[-1]
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


class Initializer:
    """Base: ``sample(shape, fan_in, fan_out, rng) -> float64 array``, element-wise in ``rng``'s values.

    ``rng`` is a :class:`~deferinit.counter.CounterRNG` (``random``, ``standard_normal``) over some flat indices
    of the parameter; ``shape`` is the number of values asked, the fans are the whole parameter's. A subclass
    must transform each drawn value on its own (no reduction over the array), so a shard drawn alone is the
    same part of the whole."""

    def sample(self, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: Any) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, shape: tuple[int, ...], *, key: int = 0, name: str = "", role: str = "kernel") -> np.ndarray:
        return self.draw(shape, None, key=key, name=name, role=role)

    def draw(self, shape: Sequence[int], index: Sequence[slice] | None = None, *, key: int = 0, name: str = "",
             role: str = "kernel") -> np.ndarray:
        """The float32 values of the region ``index`` (unit-step slices, one per leading dim; None: all) of the
        parameter ``name`` of ``shape``: bit-identical to ``self(shape, ...)[index]``, drawn without the rest."""
        shape = tuple(int(d) for d in shape)
        fan_in, fan_out = fans(shape, role)
        region, runs = flat_runs(shape, index)
        out = np.empty(math.prod(region), dtype=np.float32)
        at = 0
        for group in chunks(runs):
            rng = CounterRNG(key, name, group)
            out[at:at + rng.size] = self.sample((rng.size,), fan_in, fan_out, rng)
            at += rng.size
        return out.reshape(region)


@dataclass(frozen=True)
class Constant(Initializer):
    value: float = 0.0

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return np.full(shape, self.value, dtype=np.float64)


class Zeros(Constant):
    def __init__(self) -> None:
        super().__init__(0.0)


class Ones(Constant):
    def __init__(self) -> None:
        super().__init__(1.0)


@dataclass(frozen=True)
class Normal(Initializer):
    std: float = 0.01
    mean: float = 0.0

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return self.mean + self.std * rng.standard_normal(shape)


@dataclass(frozen=True)
class Uniform(Initializer):
    scale: float = 0.07

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return (2.0 * rng.random(shape) - 1.0) * self.scale


@dataclass(frozen=True)
class XavierUniform(Initializer):
    gain: float = 1.0

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return (2.0 * rng.random(shape) - 1.0) * bound


@dataclass(frozen=True)
class XavierNormal(Initializer):
    gain: float = 1.0

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return self.gain * math.sqrt(2.0 / (fan_in + fan_out)) * rng.standard_normal(shape)


@dataclass(frozen=True)
class KaimingUniform(Initializer):
    """He uniform for ReLU (gain sqrt(2)), fan-in mode."""

    gain: float = math.sqrt(2.0)

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        bound = self.gain * math.sqrt(3.0 / fan_in)
        return (2.0 * rng.random(shape) - 1.0) * bound


@dataclass(frozen=True)
class KaimingNormal(Initializer):
    gain: float = math.sqrt(2.0)

    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return self.gain / math.sqrt(fan_in) * rng.standard_normal(shape)


NAMES: dict[str, Initializer] = {
    "zeros": Zeros(), "ones": Ones(), "normal": Normal(0.01), "xavier_uniform": XavierUniform(),
    "xavier_normal": XavierNormal(), "kaiming_uniform": KaimingUniform(), "kaiming_normal": KaimingNormal(),
}


def get(init: Any) -> Initializer | None:
    """A portable initializer from a name or object; ``None`` for anything else (a framework's own)."""
    if isinstance(init, Initializer):
        return init
    if isinstance(init, str):
        found = NAMES.get(init.lower())
        if found is None:
            raise SpecError(f"init: expected one of {', '.join(map(repr, NAMES))}, an object from deferinit.init "
                            f"or a framework's own initializer, received {init!r}")
        return found
    return None


_FIXED = {"bias": 0.0, "shift": 0.0, "scale": 1.0, "mean": 0.0, "var": 1.0}


def generate(params: Mapping[str, Any], init: Initializer, key: int) -> dict[str, np.ndarray]:
    """Canonical float32 weights for ``params`` (canonical name -> :class:`~deferinit.layers.ParamSpec`)."""
    return {name: _value(name, p, init, key, None) for name, p in params.items()}


def generate_shard(params: Mapping[str, Any], init: Initializer, key: int,
                   index: Mapping[str, Sequence[slice] | None]) -> dict[str, np.ndarray]:
    """The part ``index[name]`` (unit-step slices; None or absent: all) of each weight of ``params``, drawn
    alone: bit-identical to the same slice of :func:`generate`'s result."""
    return {name: _value(name, p, init, key, index.get(name)) for name, p in params.items()}


def _value(name: str, p: Any, init: Initializer, key: int, index: Sequence[slice] | None) -> np.ndarray:
    if p.role in _FIXED or p.role.startswith("fill="):  # fill=: a value the layer fixes (LayerScale's init_value)
        value = _FIXED[p.role] if p.role in _FIXED else float(p.role[5:])
        return np.full(flat_runs(p.shape, index)[0], value, dtype=np.float32)
    return init.draw(p.shape, index, key=key, name=name, role=p.role)
