# mypy: disable-error-code="misc"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass)
"""The Flax NNX modules the nnx adapter builds a spec from (imported only with the nnx backend).

Leaves with parameters subclass NNX's own layers (``nnx.Linear``, ``nnx.Conv``, ``nnx.BatchNorm``,
``nnx.LayerNorm``, ``nnx.Embed``, ``nnx.Dropout``), so their state keeps NNX's names and layouts (``kernel``
(in, out) / HWIO, ``scale``, ``mean``, ``embedding``); the subclasses only add the fused activation, the
``train`` argument every module takes, and the transposes a channels-first spec needs (NNX convolutions are
channels-last only). Layers without state reuse the jax backend's linen module (a pure function of the input)
through :class:`Stateless`. Containers hold their children in an ``nnx.List`` named ``layers``, so the state
paths read ``layers/0/kernel`` as ``nnx.Sequential``'s do; a tied position holds the first use's module object
itself (NNX shares its state by reference, under the first path).
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ...merges import combine
from ..jax.host_init import host_draw, key_words, threefry_fold_in
from ..jax.modules import activate

__all__ = ["Sequential", "Residual", "Concat", "Merge", "Linear", "Conv", "BatchNorm", "LayerNorm", "Dropout", "Embed",
           "Stateless"]


def _to_last(x: Any) -> Any:
    return jnp.transpose(x, (0,) + tuple(range(2, x.ndim)) + (1,))


def _to_first(x: Any) -> Any:
    return jnp.transpose(x, (0, x.ndim - 1) + tuple(range(1, x.ndim - 1)))


# ------------------------------------------------------------------------------------------- containers
class Sequential(nnx.Module):
    """Children one after the other; the root is one too (its children are set when ``apply_init`` builds)."""

    def __init__(self, layers: list | None = None) -> None:
        self.layers = nnx.List(layers or [])

    def __call__(self, x: Any, train: bool = False) -> Any:
        for layer in self.layers:
            x = layer(x, train)
        return x


class Residual(nnx.Module):
    def __init__(self, body: nnx.Module, shortcut: nnx.Module | None, activation: str | None) -> None:
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def __call__(self, x: Any, train: bool = False) -> Any:
        y = self.body(x, train)
        return activate(self.activation, y + (x if self.shortcut is None else self.shortcut(x, train)))


class Concat(nnx.Module):
    def __init__(self, layers: list, channels_first: bool) -> None:
        self.layers, self.channels_first = nnx.List(layers), channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:
        outs = [layer(x, train) for layer in self.layers]
        rank = outs[0].ndim
        return jnp.concatenate(outs, axis=1 if self.channels_first or rank == 2 else rank - 1)


class Merge(nnx.Module):
    """``Add`` / ``Multiply``: every branch on the same input, summed or multiplied (jax.numpy broadcasting)."""

    def __init__(self, layers: list, op: str) -> None:
        self.layers, self.op = nnx.List(layers), op

    def __call__(self, x: Any, train: bool = False) -> Any:
        return combine(self.op, [layer(x, train) for layer in self.layers])


# ------------------------------------------------------------------------------------------- host draws
_HOST = threading.local()


@contextmanager
def host_draws(words: list[int], record: list | None = None) -> Iterator[None]:
    """While the modules of one ``apply_init`` are built: every ``hosted`` draw takes its values from one NumPy
    generator seeded by the apply_init key's words, in construction order (deterministic per spec and key). One
    seeding and no device-to-host read of each variable's key: each costs more than a small draw. ``record``, if
    given, gets (initializer, shape, the array given) for every host draw, in order (``template.py``)."""
    before = getattr(_HOST, "gen", None), getattr(_HOST, "record", None)
    _HOST.gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
    _HOST.record = record
    try:
        with _host_patches():  # statistics, stream counts and stream keys made on the host too
            yield
    finally:
        _HOST.gen, _HOST.record = before


def hosted(fn: Callable) -> Callable:
    """NNX's initializer ``fn(key, shape, dtype)``, drawn on the host in NumPy where ``host_init`` recognizes it
    (every ``variance_scaling`` variant, zeros, ones, constant, normal, uniform, truncated_normal) and the key is
    concrete: NNX draws each variable eagerly as its module is built, one XLA compilation per initializer and
    shape (d2l's ResNet-18: 4.6 s on this CPU), where the same distribution costs milliseconds in NumPy. Inside
    ``host_draws`` the values come from its generator; elsewhere from a generator seeded by the words of the key
    NNX gives this variable. Deterministic per key either way, though not ``jax.random``'s values. Under a trace
    (``nnx.eval_shape``, a jitted sharded init), for other dtypes, or for an initializer it does not know, NNX's
    own function runs."""
    if getattr(fn, "_deferinit_hosted", False):
        return fn

    def draw(key: Any, shape: Any, dtype: Any = jnp.float32, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs and not isinstance(key, jax.core.Tracer) and np.dtype(dtype) == np.float32:
            gen = getattr(_HOST, "gen", None)
            value = host_draw(fn, tuple(shape), key_words(key) if gen is None else gen)
            if value is not None:
                out = jax.device_put(value)
                record = getattr(_HOST, "record", None) if gen is not None else None
                if record is not None:
                    record.append((fn, tuple(shape), out))
                return out
        return fn(key, shape, dtype, *args, **kwargs)

    draw._deferinit_hosted = True  # type: ignore[attr-defined]
    draw.__wrapped__ = fn  # type: ignore[attr-defined]
    return draw


class _HostFill:
    """``jax.numpy`` as flax's ``nnx.nn.normalization`` and ``nnx.rnglib`` modules see it while deferinit builds
    modules (``_host_patches``): inside ``host_draws``, ``zeros`` and ``ones`` are NumPy arrays put on the device,
    where ``jnp.zeros``/``jnp.ones`` compile a broadcast per shape (BatchNorm's statistics: four compilations, 87 ms
    of a fresh process's ResNet-18 init of 0.58 s; an ``nnx.Rngs`` stream's count). Anything else, and any call
    outside ``host_draws`` (another thread, a trace), is jax.numpy's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jnp, name)

    @staticmethod
    def zeros(shape: Any, dtype: Any = None) -> Any:
        if getattr(_HOST, "gen", None) is None:
            return jnp.zeros(shape, dtype)
        return jax.device_put(np.zeros(shape, np.dtype(dtype or np.float32)))

    @staticmethod
    def ones(shape: Any, dtype: Any = None) -> Any:
        if getattr(_HOST, "gen", None) is None:
            return jnp.ones(shape, dtype)
        return jax.device_put(np.ones(shape, np.dtype(dtype or np.float32)))


_HOST_FILL = _HostFill()
_STREAM_CALL = nnx.RngStream.__call__


def _host_stream_call(self: nnx.RngStream) -> Any:
    """``RngStream.__call__`` (``fold_in(key, count)``, then ``count += 1``) computed on the host inside
    ``host_draws`` for a concrete threefry key: bit for bit the same key and count, without compiling ``fold_in``
    and the increment (~0.12 s in a fresh process). Every module takes a key from the stream as it is built (the
    hosted initializers ignore it; a Dropout forks its own stream from one); elsewhere NNX's own ``__call__``."""
    key, count = self.key.get_value(), self.count.get_value()
    if getattr(_HOST, "gen", None) is None or isinstance(key, jax.core.Tracer) or isinstance(count, jax.core.Tracer) \
            or key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
        return _STREAM_CALL(self)
    self.count._check_can_update()
    n = int(np.asarray(count))
    folded = threefry_fold_in(key_words(key), n)
    self.count.set_value(jax.device_put(np.asarray(n + 1, np.uint32)))
    return jax.random.wrap_key_data(jax.device_put(np.asarray(folded, np.uint32)), impl="threefry2x32")


_PATCH_LOCK = threading.Lock()
_patched = [0]  # how many threads are inside _host_patches


@contextmanager
def _host_patches() -> Iterator[None]:
    """While any thread is inside ``host_draws``: flax's normalization and rnglib modules see ``_HostFill`` as their
    ``jnp``, and ``RngStream.__call__`` is ``_host_stream_call`` (each does NNX's own thing for every other caller).
    Counted, so concurrent builds restore flax's own once, after the last."""
    from flax.nnx import rnglib
    from flax.nnx.nn import normalization

    with _PATCH_LOCK:
        if _patched[0] == 0:
            normalization.jnp = rnglib.jnp = _HOST_FILL  # type: ignore[attr-defined]
            nnx.RngStream.__call__ = _host_stream_call  # type: ignore[method-assign]
        _patched[0] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _patched[0] -= 1
            if _patched[0] == 0:
                normalization.jnp = rnglib.jnp = jnp  # type: ignore[attr-defined]
                nnx.RngStream.__call__ = _STREAM_CALL  # type: ignore[method-assign]


_INITS: dict[type, dict[str, Any]] = {}


def _hosted_inits(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every ``*_init`` argument of ``cls.__init__`` (given, or NNX's default) made ``hosted``."""
    defaults = _INITS.get(cls)
    if defaults is None:
        defaults = _INITS[cls] = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                                  if n.endswith("_init") and callable(p.default)}
    return {**kwargs, **{n: hosted(kwargs.get(n, d)) for n, d in defaults.items()}}


# ------------------------------------------------------------------------------------------- leaves
class Linear(nnx.Linear):
    def __init__(self, *args: Any, activation: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **_hosted_inits(nnx.Linear, kwargs))
        self.activation = activation

    def __call__(self, x: Any, train: bool = False) -> Any:
        return activate(self.activation, super().__call__(x))


class Conv(nnx.Conv):
    """``nnx.Conv`` (kernel ``(*k, in // groups, out)``) plus transposes for channels-first data."""

    def __init__(self, *args: Any, activation: str | None = None, channels_first: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **_hosted_inits(nnx.Conv, kwargs))
        self.activation, self.channels_first = activation, channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:
        y = _to_first(super().__call__(_to_last(x))) if self.channels_first else super().__call__(x)
        return activate(self.activation, y)


class BatchNorm(nnx.BatchNorm):
    """NNX's ``BatchNorm`` state (``scale``, ``bias``, ``mean``, ``var``) and momentum convention (the weight of
    the OLD statistics), but the running variance is updated with the UNBIASED batch variance, as PyTorch and
    the spec do (``nnx.BatchNorm`` stores the biased one, which would drift by ``n / (n - 1)`` each step)."""

    def __init__(self, *args: Any, channels_first: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **_hosted_inits(nnx.BatchNorm, kwargs))
        self.channels_first = channels_first

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        axis = 1 if self.channels_first or x.ndim == 2 else x.ndim - 1
        c = x.shape[axis]
        shape = [1] * x.ndim
        shape[axis] = c
        if train:
            axes = tuple(a for a in range(x.ndim) if a != axis)
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
            n, m = x.size // c, self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * mean
            self.var[...] = m * self.var[...] + (1.0 - m) * var * (n / max(n - 1, 1))
        else:
            mean, var = self.mean[...], self.var[...]
        mul = lax.rsqrt(var + self.epsilon) * self.scale[...]
        return (x - mean.reshape(shape)) * mul.reshape(shape) + self.bias[...].reshape(shape)


class LayerNorm(nnx.LayerNorm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_hosted_inits(nnx.LayerNorm, kwargs))

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)


class Dropout(nnx.Dropout):
    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x, deterministic=not train)


class Embed(nnx.Embed):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_hosted_inits(nnx.Embed, kwargs))

    def __call__(self, x: Any, train: bool = False) -> Any:  # type: ignore[override]
        return super().__call__(x)


class Stateless:
    """A layer without parameters or state: the jax backend's linen module, applied as the pure function it is
    (pools, flatten, activations, reshapes...). Not an ``nnx.Module``: NNX keeps it in its container's ``nnx.List``
    as a static value, as it keeps a function in ``nnx.Sequential``, and an init builds no NNX object for it (each
    ``nnx.Module`` costs NNX's attribute checks: LeNet's three made its init 1.37x the hand-written model's)."""

    __slots__ = ("linen", "kind")

    def __init__(self, linen: Any, kind: str) -> None:
        self.linen, self.kind = linen, kind

    def __call__(self, x: Any, train: bool = False) -> Any:
        return self.linen.apply({}, x, train)

    def __eq__(self, other: object) -> bool:  # NNX compares graph definitions (jit's cache) by their static values
        return type(other) is Stateless and other.linen == self.linen and other.kind == self.kind

    def __hash__(self) -> int:
        return hash((Stateless, self.linen, self.kind))

    def __repr__(self) -> str:
        return f"Stateless({self.kind})"
