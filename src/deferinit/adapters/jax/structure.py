"""The Flax side of the one structural walk (``adapters/tree.py``): the container constructors that build the
module tree, naming each module as ``nn.Sequential`` would (``layers_<i>``, or the spec's ``name=``) and recording
where each position's variables live (``params.Built``). Tied positions become ``modules.Tied``, a module that
calls the first use's module by its route, so Flax shares its variables.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from ...errors import UnsupportedLayerError, where
from ...extend import builder_for, builders
from ...shapes import Node
from ...spec import Residual
from .. import tree
from . import modules as M
from .params import Built

__all__ = ["build", "FlaxBuilder", "child_names"]


def child_names(node: Node) -> list[str]:
    """Flax names of a container's children: ``layers_<i>`` as nn.Sequential, or the spec's ``name=``."""
    if isinstance(node.layer, Residual):
        return [seg for seg, _ in node.layer.children]  # body, shortcut
    taken = {c.layer.name for c in node.children if c.layer.name is not None}
    names = []
    for i, child in enumerate(node.children):
        own = child.layer.name
        # A tie's second use in one container has its position as its segment, and Flax's apply takes a top-level
        # module named 'params' for variables passed as {'params': {'params': ...}} by mistake: both get layers_<i>
        if own is not None and (child.path.rsplit(".", 1)[-1] != own or (not node.path and own == "params")):
            own = None
        name = own if own is not None else f"layers_{i}"
        while own is None and name in taken:  # a user named a sibling 'layers_<i>'
            name += "_"
        taken.add(name)
        names.append(name)
    return names


def build(root: Node, data_format: str) -> tuple[nn.Module, Built]:
    """The Flax module tree of a plan, by the one structural walk (``adapters/tree.py``); each leaf's builder
    (``extend.builder_for("jax", type)``, see ``leaves.py``) returns the module and ``{canonical parameter: Layout}``."""
    builder = FlaxBuilder(root, data_format == "channels_first")
    return tree.build(root, builder)[0], builder.built


class FlaxBuilder(tree.Builder[nn.Module]):
    """Flax's constructors for ``tree.build``. A module's Flax name, its variables' keys and its route (how a tie
    finds the first use's module) depend on its parent: ``enter`` sets them for a container's children."""

    backend = "jax"

    def __init__(self, root: Node, cf: bool) -> None:
        self.cf, self.built = cf, Built()
        self.names: dict[str, str | None] = {root.path: None}
        self.native: dict[str, tuple[str, ...]] = {root.path: ()}
        self.built.routes[root.path] = ()

    def enter(self, node: Node) -> Any:
        steps = [("body", None), ("shortcut", None)] if isinstance(node.layer, Residual) else \
            [("layers", i) for i in range(len(node.children))]
        for child, name, step in zip(node.children, child_names(node), steps):
            self.names[child.path], self.native[child.path] = name, self.native[node.path] + (name,)
            self.built.routes[child.path] = self.built.routes[node.path] + (step,)
        return super().enter(node)

    def leaf(self, node: Node) -> nn.Module:
        layer = node.layer
        fn = builder_for("jax", type(layer))
        if fn is None:
            raise UnsupportedLayerError(f"{where(node.path, layer, 'jax')}: no Flax module is known for this layer "
                                        f"type; supported: {', '.join(sorted(t.__name__ for t in builders('jax')))}")
        module, layouts = fn(node, self.cf, self.names[node.path])  # type: ignore[arg-type]
        native = self.native[node.path]
        for pname, layout in layouts.items():
            self.built.variables[node.param_name(pname)] = (native, layout)
            for leaf in layout.leaves:
                self.built.leaves[leaf.keys(native)] = leaf
        return module

    def tie(self, node: Node, first: nn.Module) -> nn.Module:
        assert node.tied_to is not None
        return M.Tied(self.built.routes[node.tied_to.path], name=self.names[node.path])

    def _paths(self, node: Node) -> tuple[str, ...]:
        return tuple(c.path for c in node.children)

    def sequential(self, node: Node, children: list[tuple[str, nn.Module]]) -> nn.Module:
        return M.Sequential(tuple(m for _, m in children), self._paths(node), name=self.names[node.path])

    def residual(self, node: Node, body: nn.Module, shortcut: nn.Module | None) -> nn.Module:
        return M.Residual(body, shortcut, node.layer.activation, self._paths(node),  # type: ignore[attr-defined]
                          name=self.names[node.path])

    def concat(self, node: Node, branches: list[tuple[str, nn.Module]]) -> nn.Module:
        return M.Concat(tuple(m for _, m in branches), self.cf, self._paths(node), name=self.names[node.path])

    def merge(self, node: Node, branches: list[tuple[str, nn.Module]]) -> nn.Module:
        return M.Merge(tuple(m for _, m in branches), node.layer.op, self._paths(node),  # type: ignore[attr-defined]
                       name=self.names[node.path])
