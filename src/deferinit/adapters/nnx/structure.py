# mypy: disable-error-code="misc"
"""The NNX side of the one structural walk (``adapters/tree.py``): the container constructors, each leaf built
by its ``register_builder("nnx", ...)`` builder with its input shape from the reference rules, and where each
canonical parameter lives (its module's state path, and the jax backend's layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from flax import nnx

from ...errors import UnsupportedLayerError, where
from ...extend import builder_for, builders
from ...shapes import Node
from ...spec import Residual
from .. import tree
from ..jax import leaves as _jax_leaves  # noqa: F401  (the linen builders Stateless reuses)
from ..jax import params as T
from . import leaves as _leaves  # noqa: F401  (registers the nnx builders)
from . import modules as M

__all__ = ["Built", "NnxBuilder", "find", "write"]

Path = tuple  # a state path: attribute names and list indices


@dataclass
class Built:
    native: dict[str, Path] = field(default_factory=dict)                 # position -> its module's state path
    variables: dict[str, tuple[Path, T.Layout]] = field(default_factory=dict)  # canonical param -> where

    def keys(self, name: str) -> list[Path]:
        path, layout = self.variables[name]
        return [path + tuple(int(s) if s.isdigit() else s for s in leaf.name.split("/")) for leaf in layout.leaves]


def find(module: Any, path: Path) -> Any:
    """The object at a state path (a module or a variable)."""
    for step in path:
        module = module[step] if isinstance(step, int) else getattr(module, step)
    return module


def write(native: Any, values: Mapping[tuple, Any]) -> None:
    """Assign every variable at once: each value is built first, and if an assignment still fails part-way the
    variables already written get their old values back (NNX variables are changed in place)."""
    old = {k: find(native, k).get_value() for k in values}  # get/set_value: a shape-only value has no [...]
    done = []
    try:
        for k, value in values.items():
            find(native, k).set_value(value)
            done.append(k)
    except BaseException:
        for k in done:
            find(native, k).set_value(old[k])
        raise


class NnxBuilder(tree.Builder[nnx.Module]):
    backend = "nnx"

    def __init__(self, root: Node, cf: bool, rngs: nnx.Rngs, inputs: dict[str, tuple]) -> None:
        self.cf, self.rngs, self.inputs, self.built = cf, rngs, inputs, Built()
        self.built.native[root.path] = ()

    def enter(self, node: Node) -> Any:
        steps = [("body",), ("shortcut",)] if isinstance(node.layer, Residual) else \
            [("layers", i) for i in range(len(node.children))]
        for child, step in zip(node.children, steps):
            self.built.native[child.path] = self.built.native[node.path] + step
        return super().enter(node)

    def leaf(self, node: Node) -> nnx.Module:
        layer, shape = node.layer, tuple(self.inputs[node.path])
        fn = builder_for("nnx", type(layer))
        made = fn(node, self.cf, self.rngs, shape) if fn is not None else self._stateless(node)
        if made is None:
            raise UnsupportedLayerError(
                f"{where(node.path, layer, 'nnx')}: no Flax NNX module is known for this layer as configured; "
                f"supported: {', '.join(sorted(t.__name__ for t in builders('nnx')))} and the layers without "
                f"parameters")
        module, layouts = made
        for pname, layout in layouts.items():
            self.built.variables[node.param_name(pname)] = (self.built.native[node.path], layout)
        return module

    def _stateless(self, node: Node) -> Any:
        """A layer without parameters: the jax backend's linen module, if it holds no variables."""
        fn = builder_for("jax", type(node.layer))
        if fn is None:
            return None
        linen, layouts = fn(node, self.cf, None)
        return None if layouts else (M.Stateless(linen, type(node.layer).__name__), {})

    def tie(self, node: Node, first: nnx.Module) -> nnx.Module:
        return first  # NNX shares a module object's state by reference, under its first path

    def sequential(self, node: Node, children: list[tuple[str, nnx.Module]]) -> nnx.Module:
        return M.Sequential([m for _, m in children])

    def residual(self, node: Node, body: nnx.Module, shortcut: nnx.Module | None) -> nnx.Module:
        return M.Residual(body, shortcut, node.layer.activation)  # type: ignore[attr-defined]

    def concat(self, node: Node, branches: list[tuple[str, nnx.Module]]) -> nnx.Module:
        return M.Concat([m for _, m in branches], self.cf)

    def merge(self, node: Node, branches: list[tuple[str, nnx.Module]]) -> nnx.Module:
        return M.Merge([m for _, m in branches], node.layer.op)  # type: ignore[attr-defined]
