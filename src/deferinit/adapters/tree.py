"""The one structural walk every backend uses: containers, ties and intermediates, written once.

A plan (:func:`deferinit.shapes.plan`) is a tree of :class:`~deferinit.shapes.Node`: containers
(``Sequential``/``LazyModel``, ``Residual``, ``Concat``), leaves, and *tied* positions (the same layer object
used again, which must be the same native object so the framework shares its parameters). Every backend used to
walk that tree its own way; now a backend supplies its framework's constructors as a :class:`Builder` and
:func:`build` does the walk, and supplies its framework's tensor operations as a :class:`Runner` and :func:`run`
evaluates the tree position by position (the per-layer outputs that reports and parity's first-divergent-layer
come from). Nothing here imports a framework.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Generic, TypeVar

from ..errors import UnsupportedLayerError, where
from ..layers import Leaf
from ..merges import Merge, combine
from ..shapes import Node
from ..spec import Concat, Residual, Sequential

__all__ = ["Builder", "Runner", "build", "run", "segment", "kind"]

M = TypeVar("M")  # whatever the backend builds per node (a module, a layer, a list of steps...)
T = TypeVar("T")  # the backend's tensor


def segment(node: Node) -> str:
    """The last segment of a node's canonical path (its position in its container, or its ``name=``)."""
    return node.path.rsplit(".", 1)[-1]


_KINDS: dict[type, str] = {}


def kind(node: Node) -> str:
    """``sequential``, ``residual``, ``concat``, ``merge`` or ``leaf``: which constructor a node needs."""
    layer = (node.tied_to or node).layer
    how = _KINDS.get(type(layer))
    if how is None:
        how = _kind(layer)
        if not how:
            raise UnsupportedLayerError(f"{where(node.path, layer)}: not a layer deferinit knows how to build")
        _KINDS[type(layer)] = how  # by type: the same answer for every layer of one class
    return how


def _kind(layer: Any) -> str:
    if isinstance(layer, Residual):
        return "residual"
    if isinstance(layer, Concat):
        return "concat"
    if isinstance(layer, Merge):
        return "merge"
    if isinstance(layer, Sequential):  # LazyModel included
        return "sequential"
    if isinstance(layer, Leaf):
        return "leaf"
    return ""


class Builder(Generic[M]):
    """A backend's constructors for :func:`build`. ``leaf`` is required; the containers default to errors so a
    backend that lacks one says so by name."""

    backend = "?"

    def enter(self, node: Node) -> ContextManager[Any]:
        """A context the node's children are built in (Gluon's ``name_scope`` of the parent block)."""
        return contextlib.nullcontext()

    def leaf(self, node: Node) -> M:
        raise NotImplementedError

    def tie(self, node: Node, first: M) -> M:
        """The object for a tied position: by default the first occurrence's own object (shared parameters)."""
        return first

    def sequential(self, node: Node, children: list[tuple[str, M]]) -> M:
        raise self.unsupported(node)

    def residual(self, node: Node, body: M, shortcut: M | None) -> M:
        raise self.unsupported(node)

    def concat(self, node: Node, branches: list[tuple[str, M]]) -> M:
        raise self.unsupported(node)

    def merge(self, node: Node, branches: list[tuple[str, M]]) -> M:
        """``Add`` / ``Multiply`` (``node.layer.op``): every branch on the same input, merged element-wise."""
        raise self.unsupported(node)

    def unsupported(self, node: Node) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{where(node.path, node.layer, self.backend)}: no native form for this "
                                     f"{type(node.layer).__name__}")


def build(root: Node, builder: Builder[M]) -> tuple[M, dict[str, M]]:
    """Build the native tree of a plan: returns the root's object and ``{path: object}`` for every position
    (a tied position maps to what :meth:`Builder.tie` returned for it)."""
    built: dict[str, M] = {}
    return _make(root, builder, built), built


def _make(node: Node, builder: Builder[M], built: dict[str, M]) -> M:
    # module-level, not a recursive closure: a closure that calls itself is a reference cycle, which would keep
    # every native object built alive until a garbage-collector pass (one per few apply_init, measured)
    if node.tied_to is not None:
        obj = builder.tie(node, built[node.tied_to.path])
    else:
        how = kind(node)
        if how == "leaf":
            obj = builder.leaf(node)
        else:
            with builder.enter(node):
                kids = [(segment(c), _make(c, builder, built)) for c in node.children]
            if how == "residual":
                obj = builder.residual(node, kids[0][1], kids[1][1] if len(kids) > 1 else None)
            elif how == "concat":
                obj = builder.concat(node, kids)
            elif how == "merge":
                obj = builder.merge(node, kids)
            else:
                obj = builder.sequential(node, kids)
    built[node.path] = obj
    return obj


class Runner(Generic[T]):
    """A backend's tensor operations for :func:`run`: apply one leaf, add, concatenate, activate, and turn an
    output into what is recorded (e.g. its shape, or a numpy array)."""

    def leaf(self, node: Node, x: T) -> T:
        """Apply the leaf at ``node`` (a first occurrence: ties are resolved before this is called)."""
        raise NotImplementedError

    def add(self, a: T, b: T) -> T:
        return a + b  # type: ignore[operator]

    def activation(self, name: str, x: T) -> T:
        raise NotImplementedError

    def concat(self, xs: list[T], axis: int) -> T:
        raise NotImplementedError

    def merge(self, op: str, xs: list[T]) -> T:
        """``Add`` / ``Multiply``: by default Python's ``+`` / ``*``, which broadcast in every framework's eager
        tensors."""
        return combine(op, xs)  # type: ignore[no-any-return]

    def channel_axis(self, rank: int) -> int:
        return 1

    def record(self, y: T) -> Any:
        return y


def run(root: Node, x: T, runner: Runner[T], record: dict[str, Any] | None = None) -> T:
    """Evaluate the tree position by position with ``runner``; when ``record`` is given, store
    ``runner.record(output)`` under every position's path (tied positions included, their insides not: a tied
    subtree's positions are recorded under the first occurrence)."""
    return _go(root, x, runner, record)


def _go(node: Node, x: T, runner: Runner[T], rec: dict[str, Any] | None) -> T:
    target = node.tied_to or node
    inner = rec if node.tied_to is None else None
    how = kind(target)
    if how == "leaf":
        y = runner.leaf(target, x)
    elif how == "sequential":
        y = x
        for child in target.children:
            y = _go(child, y, runner, inner)
    elif how == "residual":
        body = _go(target.children[0], x, runner, inner)
        y = runner.add(body, _go(target.children[1], x, runner, inner) if len(target.children) > 1 else x)
        act = getattr(target.layer, "activation", None)
        y = runner.activation(act, y) if act else y
    elif how == "merge":
        y = runner.merge(target.layer.op, [_go(c, x, runner, inner) for c in target.children])  # type: ignore[attr-defined]
    else:
        outs = [_go(c, x, runner, inner) for c in target.children]
        y = runner.concat(outs, runner.channel_axis(len(_shape(outs[0]))))
    if rec is not None and node.path:
        rec[node.path] = runner.record(y)
    return y


def _shape(x: Any) -> tuple:
    return tuple(x.shape)
