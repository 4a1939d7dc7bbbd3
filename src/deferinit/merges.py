"""Element-wise merges of branches: ``Add`` and ``Multiply`` (``Concat``'s siblings, in ``spec.py``).

Each applies every branch to the same input and combines the results element-wise, NumPy-style: the branches'
outputs have one rank, and on every axis their sizes are equal or 1 (squeeze-and-excitation's
``(N, C, H, W) * (N, C, 1, 1)``). ``Residual`` stays the common special case of ``Add`` (body plus identity,
with an activation after the sum). A merge has no parameters of its own; its branches' parameters are named
under it as ``Concat``'s are (``<merge>.<branch>.<param>``).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable, ClassVar
from typing import Sequence as Seq

from .spec import Container, Layer, _as_layers, _bad, _check_unique_names, segments

__all__ = ["Merge", "Add", "Multiply"]


@dataclass(frozen=True, eq=False, repr=False)
class Merge(Container):
    """Base of the element-wise merges; ``op`` names the operation (``"add"`` or ``"multiply"``)."""

    branches: Seq[Layer]
    op: ClassVar[str] = ""

    def validate(self) -> None:
        kind = type(self).__name__
        object.__setattr__(self, "branches", _as_layers(kind, "branches", self.branches))
        if not self.branches:
            raise _bad(kind, "branches", [], "a non-empty list of layers")
        _check_unique_names(kind, self.branches)

    @property
    def children(self) -> tuple[tuple[str, Layer], ...]:
        return tuple(zip(segments(self.branches), self.branches))


@dataclass(frozen=True, eq=False, repr=False)
class Add(Merge):
    """Applies each branch to the same input and sums the results (size-1 dims broadcast)."""

    op: ClassVar[str] = "add"


@dataclass(frozen=True, eq=False, repr=False)
class Multiply(Merge):
    """Applies each branch to the same input and multiplies the results element-wise (size-1 dims broadcast):
    ``Multiply([Identity(), Sequential([GlobalAvgPool2D(keepdims=True), ...])])`` is squeeze-and-excitation."""

    op: ClassVar[str] = "multiply"


def combine(op: str, xs: Seq[Any], add: Callable[[Any, Any], Any] = operator.add,
            mul: Callable[[Any, Any], Any] = operator.mul) -> Any:
    """The branches' outputs merged left to right with the framework's ``add`` or ``mul`` (both broadcast)."""
    return functools.reduce(add if op == "add" else mul, xs)
