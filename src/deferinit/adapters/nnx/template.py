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

A model with any other variable (an ``nnx.Rngs`` stream of a Dropout or an RNN: its key depends on the init's key;
a value an initializer that is not drawn on the host gave) keeps constructing its modules every time. An abstract
init starts from any template, with every leaf shape-only; a template of an abstract init (``nnx.eval_shape``:
nothing drawn) serves abstract inits only.
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
    draws in construction order (state leaf index, initializer, shape) and what the build found (``Built``)."""

    __slots__ = ("graphdef", "treedef", "leaves", "drawn", "built", "concrete")

    def __init__(self, graphdef: Any, treedef: Any, leaves: list, drawn: list[tuple[int, Any, tuple]], built: Built,
                 concrete: bool) -> None:
        self.graphdef, self.treedef, self.leaves, self.drawn = graphdef, treedef, leaves, drawn
        self.built, self.concrete = built, concrete

    def clone(self, abstract: bool) -> tuple[nnx.Module, list]:
        """A new model (new variables; abstract: every value shape-only) and its variables in state-leaf order."""
        state = self.treedef.unflatten([_abstract(x) for x in self.leaves] if abstract else self.leaves)
        variables = jax.tree_util.tree_leaves(state, is_leaf=_is_variable)
        return nnx.merge(self.graphdef, state), variables

    def draw(self, variables: list, words: list[int]) -> None:
        """Every recorded draw again, in order, from a generator seeded by ``words`` (``modules.host_draws``'s)."""
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
        for i, fn, shape in self.drawn:
            variables[i].set_value(jax.device_put(host_draw(fn, shape, gen)))


def snapshot(native: nnx.Module, records: list[tuple[Any, tuple, Any]] | None, built: Built) -> Template | None:
    """The template of ``native`` just after its construction, given the host draws it made (None: an abstract
    construction, nothing drawn); None where a variable is neither a recorded draw nor a constant."""
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
    for i, v in enumerate(variables):
        if i not in given and not (type(v) is nnx.BatchStat or (records is None and type(v) is nnx.Param)):
            return None  # an Rngs stream, a value not drawn on the host: depends on the init's key
    kept = [_abstract(x) if i in given or records is None else x for i, x in enumerate(leaves)]
    return Template(graphdef, treedef, kept, drawn, built, records is not None)
