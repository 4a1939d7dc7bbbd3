# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""The glue under the jax adapter: where each canonical parameter lives in
Flax's variable dict (the module tree itself is built by ``structure.py``), layout translation, and the
per-model state (variables, compiled functions).

A canonical parameter is held by one Flax variable (a Dense ``kernel``, transposed) or by several: Flax's
recurrent cells keep one Dense per gate (``cell/ir/kernel``, ``cell/iz/kernel``...), which stack into
PyTorch's ``(G*H, in)``, and hold one bias per gate where PyTorch has two (see :class:`Gates`). Each canonical
parameter has a :class:`Layout` that names the variables it reads, translates values both ways and reads
its gradient. Canonical and native names are matched by structure, never by sorting strings: Flax sorts
dict keys, so ``layers_11`` comes before ``layers_3``; every lookup here walks an explicit path instead.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .host_init import host_draw, key_words

__all__ = ["Leaf", "Layout", "One", "Gates", "Flat", "Made", "Built", "State", "get", "put", "count_leaves"]


@dataclass(frozen=True)
class Flat:
    """An initializer called as ``flax.linen.DenseGeneral`` calls it: on the kernel flattened to
    ``(prod(shape[:split]), prod(shape[split:]))``, then reshaped (the fans are the projection's)."""

    init: Any
    split: int

    def __call__(self, key: Any, shape: tuple, dtype: Any = jnp.float32) -> Any:
        flat = (math.prod(shape[:self.split]), math.prod(shape[self.split:]))
        return jnp.reshape(self.init(key, flat, dtype), shape)


@dataclass(frozen=True)
class Leaf:
    """One Flax variable below its module: ``collection``, then ``name`` (a path, e.g. ``cell/ir/kernel``)."""

    collection: str        # params | batch_stats
    name: str
    init: Any = None       # the module's own initializer, called as init(key, native_shape, dtype)
    kernel: bool = False   # a user's framework initializer replaces ``init`` here
    split: int = 0         # > 0: a DenseGeneral kernel, initialized flat (see Flat)

    def keys(self, module: tuple[str, ...]) -> tuple[str, ...]:
        return (self.collection,) + module + tuple(self.name.split("/"))

    def initializer(self, init: Any) -> Any:
        chosen = init if (init is not None and self.kernel) else self.init
        return Flat(chosen, self.split) if self.split else chosen


def _transpose(kind: str, a: np.ndarray) -> np.ndarray:
    """Native -> canonical for one variable."""
    if kind == "dense":  # (in, out) -> (out, in)
        return a.T
    if kind == "conv":  # (*k, in // groups, out) -> (out, in // groups, *k)
        n = a.ndim - 2
        return a.transpose((n + 1, n) + tuple(range(n)))
    if kind == "heads_in":  # DenseGeneral (D, heads, head_dim) -> (heads * head_dim, D): heads are blocks
        return a.reshape(a.shape[0], -1).T
    if kind == "heads_out":  # DenseGeneral (heads, head_dim, H) -> (H, heads * head_dim)
        return a.reshape(-1, a.shape[-1]).T
    if kind == "heads_bias":  # (heads, head_dim) -> (heads * head_dim,)
        return a.reshape(-1)
    return a


def _untranspose(kind: str, w: np.ndarray, shape: tuple) -> np.ndarray:
    """Canonical -> native for one variable of native ``shape``."""
    if kind == "conv":
        return w.transpose(tuple(range(2, w.ndim)) + (1, 0))
    if kind in ("dense", "heads_in", "heads_out"):
        return w.T.reshape(shape)
    return w.reshape(shape)


class Layout:
    """One canonical parameter read from ``leaves`` (Flax variables below one module)."""

    leaves: tuple[Leaf, ...]

    def canonical(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def native(self, w: np.ndarray, shapes: Sequence[tuple]) -> list[np.ndarray]:
        """Each leaf's share of the canonical value ``w``; a variable that several canonical parameters share
        holds the sum of their shares."""
        raise NotImplementedError

    def grad(self, grads: Sequence[np.ndarray]) -> np.ndarray:
        return self.canonical(grads)

    def canonical_shape(self, shapes: Sequence[tuple]) -> tuple:
        raise NotImplementedError

    def native_shape(self, shapes: Sequence[tuple]) -> tuple:
        return shapes[0]

    def native_name(self, module: tuple[str, ...]) -> str:
        return "/".join(self.leaves[0].keys(module))


class One(Layout):
    """The common case: one variable, transposed as ``kind`` says (same, dense, conv, heads_*)."""

    def __init__(self, leaf: Leaf, kind: str = "same") -> None:
        self.leaves, self.kind = (leaf,), kind

    def canonical(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return _transpose(self.kind, arrays[0])

    def native(self, w: np.ndarray, shapes: Sequence[tuple]) -> list[np.ndarray]:
        return [_untranspose(self.kind, w, shapes[0])]

    def canonical_shape(self, shapes: Sequence[tuple]) -> tuple:
        s = tuple(shapes[0])
        return {"dense": lambda: s[::-1], "conv": lambda: (s[-1], s[-2]) + s[:-2],
                "heads_in": lambda: (s[1] * s[2], s[0]), "heads_out": lambda: (s[2], s[0] * s[1]),
                "heads_bias": lambda: (s[0] * s[1],)}.get(self.kind, lambda: s)()


class Gates(Layout):
    """PyTorch's gates stacked on axis 0, one Flax variable per gate: kernels ``(in, H)`` -> ``(G*H, in)``,
    biases ``(H,)`` -> ``(G*H,)``. Where Flax keeps one bias for a gate that PyTorch gives two (``b_ih + b_hh``),
    both canonical biases read that variable: ``held`` (``bias_ih``) reads its value, the other reads zeros,
    and both get its gradient, as each would alone. Written back, the variable gets the sum of the two.
    Native name: the variables in braces (``params/layers_1/cell/{ir,iz,in}/kernel``), native shape
    ``(G, *variable shape)`` (one gate: the variable's own name and shape)."""

    def __init__(self, leaves: Sequence[Leaf], kernel: bool, held: Sequence[bool] | None = None) -> None:
        self.leaves, self.kernel = tuple(leaves), kernel
        self.held = tuple(held) if held is not None else (True,) * len(self.leaves)

    def canonical(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        blocks = [(a.T if self.kernel else a) if keep else np.zeros_like(a.T if self.kernel else a)
                  for a, keep in zip(arrays, self.held)]
        return np.concatenate(blocks, axis=0)

    def grad(self, grads: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([g.T if self.kernel else g for g in grads], axis=0)

    def native(self, w: np.ndarray, shapes: Sequence[tuple]) -> list[np.ndarray]:
        return [b.T if self.kernel else b for b in np.split(w, len(self.leaves), axis=0)]

    def canonical_shape(self, shapes: Sequence[tuple]) -> tuple:
        s = shapes[0]
        return (len(shapes) * s[1], s[0]) if self.kernel else (len(shapes) * s[0],)

    def native_shape(self, shapes: Sequence[tuple]) -> tuple:
        return tuple(shapes[0]) if len(shapes) == 1 else (len(shapes),) + tuple(shapes[0])

    def native_name(self, module: tuple[str, ...]) -> str:
        paths = [leaf.name.split("/") for leaf in self.leaves]
        if len(paths) == 1:
            return "/".join(self.leaves[0].keys(module))
        gate = next(i for i in range(len(paths[0])) if len({p[i] for p in paths}) > 1)
        middle = "{" + ",".join(p[gate] for p in paths) + "}"
        parts = paths[0][:gate] + [middle] + paths[0][gate + 1:]
        return "/".join((self.leaves[0].collection,) + module + tuple(parts))


Made = tuple[nn.Module, dict[str, Layout]]  # what a leaf builder returns: the module and its canonical parameters


@dataclass
class Built:
    """What building the module tree found: the route to each position's module, and every variable."""

    routes: dict[str, tuple] = field(default_factory=dict)            # canonical position -> (field, index)s
    variables: dict[str, tuple[tuple[str, ...], Layout]] = field(default_factory=dict)  # canonical param -> where
    leaves: dict[tuple[str, ...], Leaf] = field(default_factory=dict)  # every Flax variable, by its full keys


# ------------------------------------------------------------------------------------------- helpers
def get(tree: Mapping, keys: tuple[str, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def put(tree: dict, keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def count_leaves(tree: Any) -> int:
    return len(jax.tree_util.tree_leaves(tree))


def _draw_values(key: Any, plan: tuple) -> list:
    # Non-partitionable threefry draws flat bits and reshapes: XLA compiles it 3x faster than the partitionable
    # form's N-d iota (ResNet-18's 21 kernels: 2.8 s against 9.3 s cold on this 2-core machine); values stay
    # deterministic per key, and the flag is scoped to this trace.
    with jax.threefry_partitionable(False):
        return [init(jax.random.fold_in(key, salt), shape, jnp.float32) for init, shape, salt in plan]


_draw_cached = jax.jit(_draw_values, static_argnums=(1,))


def _draw(key: Any, plan: tuple) -> list:
    try:
        hash(plan)
    except TypeError:  # an unhashable user initializer: compile for this call only
        return jax.jit(functools.partial(_draw_values, plan=plan))(key)
    return _draw_cached(key, plan)


def _host_value(ini: Any, shape: tuple, seed: list[int]) -> np.ndarray | None:
    """``ini``'s draw in NumPy (``host_init``), a DenseGeneral kernel's flattened as Flax draws it; None: JAX draws."""
    if isinstance(ini, Flat):
        flat = (math.prod(shape[:ini.split]), math.prod(shape[ini.split:]))
        value = host_draw(ini.init, flat, seed)
        return None if value is None else value.reshape(shape)
    return host_draw(ini, shape, seed)


class State:
    """One native module tree's variables and compiled functions (kept on the module: see ``_new_native``).

    A framework-default draw is deferred until the values are first read: ``apply_init`` with a portable
    ``init`` and ``load_weights`` overwrite every variable right away, so they never pay for compiling the
    random draws (seconds for a ResNet on CPU). The key is fixed at ``apply_init``, so the values are the same
    whenever they are drawn."""

    def __init__(self, built: Built) -> None:
        self.built = built
        self.shapes: dict = {}            # what jax.eval_shape(module.init) found: ShapeDtypeStructs
        self.layer_shapes: dict[str, tuple] = {}  # each layer position's output shape, from the same trace
        self._variables: dict | None = None
        self.pending: tuple | None = None  # (init, key) of a draw not made yet
        self._rng: Any = None              # dropout key, advanced by every training call
        self._rng_from: Any = None         # the init's key, until the dropout key is first needed
        self.fns: dict[str, Callable] = {}

    @property
    def rng(self) -> Any:
        """The dropout key: ``fold_in(init key, 0x5EED)``, made when first read (a fresh process compiles
        ``fold_in``: 51 ms of ResNet-18's first apply_init, for a key only training calls use)."""
        if self._rng is None and self._rng_from is not None:
            self._rng, self._rng_from = jax.random.fold_in(self._rng_from, 0x5EED), None
        return self._rng

    @rng.setter
    def rng(self, value: Any) -> None:
        self._rng, self._rng_from = value, None

    def seed_rng(self, key: Any) -> None:
        self._rng, self._rng_from = None, key

    @property
    def variables(self) -> dict:
        if self.pending is not None:
            self._variables = self.draw(*self.pending)
            self.pending = None
        return self._variables if self._variables is not None else self.shapes

    @variables.setter
    def variables(self, value: dict) -> None:
        self._variables, self.pending = value, None

    def defer(self, rng: Any) -> None:
        """Flax's default draw with ``rng``, made when the values are first read."""
        self._variables, self.pending = None, (None, rng)

    def draw(self, init: Any, rng: Any) -> dict:
        """Every variable drawn with its module's initializer (or ``init`` for kernels). JAX's own initializers
        (Flax's defaults among them) are drawn on the host (``host_init``: no compilation), each variable's
        generator seeded by the key's words and ``crc32(its native name)``; any other initializer is drawn by
        JAX in one jitted call, with the key ``fold_in(rng, crc32(its native name))``."""
        entries = list(self.built.leaves.items())
        plan = tuple((leaf.initializer(init), tuple(get(self.shapes, keys).shape), zlib.crc32("/".join(keys).encode()))
                     for keys, leaf in entries)
        words = key_words(rng) if plan else []
        values: list[Any] = [_host_value(ini, shape, [*words, salt]) for ini, shape, salt in plan]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            for i, value in zip(missing, _draw(rng, tuple(plan[i] for i in missing))):
                values[i] = value
        variables: dict = {}
        for (keys, _), value in zip(entries, values):
            put(variables, keys, jax.device_put(value) if isinstance(value, np.ndarray) else value)
        return variables

    def shape_of(self, keys: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(int(d) for d in get(self.shapes, keys).shape)
