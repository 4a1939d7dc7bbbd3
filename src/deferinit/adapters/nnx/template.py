# mypy: disable-error-code="misc"
"""A repeat ``apply_init`` of one spec on one input shape and dtype, without constructing NNX's modules again
(issue 17).

A concrete ``apply_init`` constructs NNX's modules, each drawing its variables (``modules.hosted``: NumPy draws
from one generator seeded by the key, in construction order). That is 3.1 ms for the MLP and 8 ms for LeNet, nearly
all of it NNX's attribute checks in its modules' constructors; ``nnx.merge`` of a graph definition and a state
builds the same model in 0.04-0.1 ms. So, as the torch backend does (``adapters/torch/template.py``): the first
init of a (spec, input shape, dtype) in a process marks it; the second records every host draw (initializer,
shape, the array it gave) and keeps a *template*: ``nnx.split``'s graph definition, the state's tree structure,
which state leaf each draw became, and the leaves no draw gave (BatchNorm's statistics, constants NNX's constructor
writes). A later init unflattens a new state (new ``nnx.Variable`` objects), merges it with the graph definition,
and redraws every recorded draw in the recorded order from a generator seeded by its own key: bit for bit the
constructed model's values for the same key (tested on the zoo). Shapes only are kept for the drawn leaves (the
template holds no parameter memory); the undrawn ones are JAX arrays, immutable, so models share them safely.

An ``nnx.Rngs`` stream a module keeps (a Dropout's, forked from the init's ``nnx.Rngs(key)`` as
``RngStream.fork`` does: ``fold_in(root, count)``) is replayed too: the template finds, once, which count of the
root stream each kept key was folded in at, and a later init folds its own key in at the same counts (one jitted
call for all of them); the streams' counts are constants. A model with any other variable (a key not forked from
the root stream, a value an initializer that is not drawn on the host gave) keeps constructing its modules every
time. An abstract init starts from any template, with every leaf shape-only; a template of an abstract init
(``nnx.eval_shape``: nothing drawn) serves abstract inits only, and portable-value inits where the model has no
stream (their streams need values, which a shape-only construction does not give).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from ..jax.host_init import host_draw
from .structure import Built

__all__ = ["Template", "snapshot"]


def _is_variable(v: Any) -> bool:
    return isinstance(v, nnx.Variable)


def _abstract(x: Any) -> Any:
    return x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(x.shape, x.dtype)


class Template:
    """An NNX model's graph definition, its state's structure and leaves (shape-only where a draw gives them), the
    draws in construction order (state leaf index, initializer, shape), the Rngs streams' keys (state leaf index,
    the root stream's count it was forked at; None: not known, an abstract construction's) and what the build
    found (``Built``)."""

    __slots__ = ("graphdef", "treedef", "leaves", "drawn", "forks", "counts", "built", "concrete", "_fold")

    def __init__(self, graphdef: Any, treedef: Any, leaves: list, drawn: list[tuple[int, Any, tuple]],
                 forks: list[tuple[int, int]] | None, counts: frozenset[int], built: Built, concrete: bool) -> None:
        self.graphdef, self.treedef, self.leaves, self.drawn = graphdef, treedef, leaves, drawn
        self.forks, self.counts, self.built, self.concrete = forks, counts, built, concrete
        self._fold: Any = None

    def serves(self, abstract: bool) -> bool:
        """Whether an init (abstract or not) can start from it: one with values needs every stream's key known."""
        return abstract or self.forks is not None

    def clone(self, shape_only: bool, abstract: bool = True) -> tuple[nnx.Module, list]:
        """A new model (new variables; ``shape_only``: every value shape-only but the streams' counts where not
        ``abstract``) and its variables in state-leaf order."""
        leaves = self.leaves
        if shape_only:
            leaves = [x if not abstract and i in self.counts else _abstract(x) for i, x in enumerate(leaves)]
        state = self.treedef.unflatten(leaves)
        variables = jax.tree_util.tree_leaves(state, is_leaf=_is_variable)
        return nnx.merge(self.graphdef, state), variables

    def streams(self, variables: list, rng: Any) -> None:
        """Every kept stream's key for the init's key ``rng``: ``fold_in(root, count)``, as ``RngStream.fork`` made
        it (one jitted call for all)."""
        if not self.forks:
            return
        if self._fold is None:
            counts = [c for _, c in self.forks]
            self._fold = jax.jit(lambda r: tuple(jax.random.fold_in(_root(r), c) for c in counts))
        for (i, _), key in zip(self.forks, self._fold(rng)):
            variables[i].set_value(key)

    def draw(self, variables: list, words: list[int]) -> None:
        """Every recorded draw again, in order, from a generator seeded by ``words`` (``modules.host_draws``'s)."""
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
        for i, fn, shape in self.drawn:
            variables[i].set_value(jax.device_put(host_draw(fn, shape, gen)))


def _root(rng: Any) -> Any:
    """The root stream's key of ``nnx.Rngs(rng)`` (``RngStream.__init__``: raw uint32 key data is wrapped)."""
    if isinstance(rng, int):
        return jax.random.key(rng)
    return rng if jax.numpy.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)


def _fork_counts(rng: Any, keys: dict[int, Any], limit: int = 1 << 16) -> list[tuple[int, int]] | None:
    """For each kept stream key (by state leaf index), the count of the root stream ``nnx.Rngs(rng)`` it was forked
    at (``fold_in(root, count)``); None where one is not such a key (split, or forked from a forked stream)."""
    want: dict[tuple, int] = {}
    for i, key in keys.items():
        if key.shape != ():
            return None
        want[tuple(np.asarray(jax.random.key_data(key)).tolist())] = i
    found: dict[int, int] = {}
    root, start, n = _root(rng), 0, 256
    while want and start < limit:  # the count is how many keys the constructors took before: a few per module
        data = np.asarray(jax.vmap(lambda c: jax.random.key_data(jax.random.fold_in(root, c)))(
            np.arange(start, start + n, dtype=np.uint32)))
        for c, row in enumerate(data.tolist(), start):
            at = want.pop(tuple(row), None)
            if at is not None:
                found[at] = c
        start, n = start + n, n * 4
    return None if want else sorted(found.items())


def snapshot(native: nnx.Module, records: list[tuple[Any, tuple, Any]] | None, built: Built,
             rng: Any = None) -> Template | None:
    """The template of ``native`` just after its construction, given the host draws it made (None: nothing
    drawn) and the init's key ``rng`` (the streams' keys are forked from it); None where a variable is neither a
    recorded draw, a constant nor a stream forked from the root."""
    graphdef, state = nnx.split(native)
    variables = jax.tree_util.tree_leaves(state, is_leaf=_is_variable)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    if len(variables) != len(leaves):
        return None
    drawn: list[tuple[int, Any, tuple]] = []
    if records is not None:
        where = {id(x): i for i, x in enumerate(leaves)}
        for fn, shape, value in records:
            i = where.pop(id(value), None)
            if i is None:  # not stored as drawn (converted, or not kept): the draws cannot be replayed
                return None
            drawn.append((i, fn, shape))
    given = {i for i, _, _ in drawn}
    keys: dict[int, Any] = {}
    counts: set[int] = set()
    for i, v in enumerate(variables):
        if i in given or type(v) is nnx.BatchStat or (records is None and type(v) is nnx.Param):
            continue
        if type(v) is nnx.RngKey:
            keys[i] = leaves[i]
        elif type(v) is nnx.RngCount:
            counts.add(i)
        else:
            return None  # a value not drawn on the host: depends on the init's key
    forks: list[tuple[int, int]] | None = []
    if any(isinstance(leaves[i], jax.ShapeDtypeStruct) for i in (*keys, *counts)):
        forks = None  # an abstract construction's streams: no values to replay (abstract inits only)
    elif keys:
        forks = _fork_counts(rng, keys) if rng is not None else None
        if forks is None:
            return None
    kept = [x if i in counts else _abstract(x) if i in given or i in keys or records is None else x
            for i, x in enumerate(leaves)]
    return Template(graphdef, treedef, kept, drawn, forks, frozenset(counts), built, records is not None)
