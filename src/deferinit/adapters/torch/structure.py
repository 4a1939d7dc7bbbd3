"""The torch side of the one structural walk (``adapters/tree.py``): the container constructors for ``build``,
the tensor operations for ``run`` (intermediates), and the observer that reads every position's output shape
off the dry run with forward hooks (the report's native shapes: no extra forward pass).

The native tree: an ``nn.Sequential`` per Sequential/LazyModel (children named by the canonical segments), the
leaves' steps (``leaves.py``) and ``modules.Residual``/``modules.Concat``. Tied positions reuse the first
occurrence's module objects, so torch shares their parameters natively.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...shapes import Node
from .. import tree
from . import modules as tm
from .leaves import leaf_steps, rank_after
from .modules import SPEC, Step
from .tensors import F32

__all__ = ["TorchBuilder", "TorchRunner", "Observer", "GLOBAL_HOOKS", "global_hooks"]

#: where a position's output can be seen: (its container's path, the container's direct child module that ends
#: it, which occurrence of that module object in the container's forward, whether it is still channels-first)
End = tuple[str, nn.Module, int, bool]
#: torch's hooks on every module (``register_module_forward_hook``...): when one is set, the dry run runs ``net(x)``
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def global_hooks() -> bool:
    """Whether a global module hook of the user's is set: it must see every dry run (no template copy, no
    unobserved fast run)."""
    return any(getattr(nn.modules.module, g, None) for g in GLOBAL_HOOKS)


class TorchBuilder(tree.Builder[list[Step]]):
    """Each position becomes a list of steps; a container becomes one step holding its module."""

    backend = "torch"

    def __init__(self, root: Node, channels_last: bool) -> None:
        self.channels_last = channels_last
        # each position's container and its index there (a sequential's previous child fixes its input rank)
        self.parent = {c.path: (n, i) for n in (root, *root.walk()) for i, c in enumerate(n.children)}
        self.entry: dict[str, int | None] = {}
        self.out: dict[str, int | None] = {}  # output rank where the spec fixes it (picks BatchNorm classes)
        self.ends: dict[str, End] = {}
        self.containers: dict[str, nn.Module] = {}
        self.mains: dict[str, nn.Module] = {}  # each leaf's own module (its untagged step): native_init's lookups

    def _rank_in(self, node: Node) -> int | None:
        parent, i = self.parent.get(node.path, (None, 0))
        if parent is None:
            return None
        if i and tree.kind(parent) == "sequential":
            return self.out[parent.children[i - 1].path]
        return self.entry[parent.path]

    def enter(self, node: Node) -> Any:
        self.entry[node.path] = self._rank_in(node)
        return super().enter(node)

    def leaf(self, node: Node) -> list[Step]:
        rank = self._rank_in(node)
        self.out[node.path] = rank_after(node.layer, rank)  # type: ignore[arg-type]
        steps = leaf_steps(node, node.layer, rank)  # type: ignore[arg-type]
        main = next((s.module for s in steps if not s.tag), None)
        if main is not None:
            self.mains[node.path] = main
        return steps

    def tie(self, node: Node, first: list[Step]) -> list[Step]:
        target = node.tied_to
        assert target is not None
        leaf = tree.kind(target) == "leaf"
        self.out[node.path] = rank_after(target.layer, self._rank_in(node)) if leaf else self.out[target.path]  # type: ignore[arg-type]
        return first  # the same module objects: parameters shared natively

    def _arrange(self, node: Node, groups: list[tuple[list[tuple[str, Step]], list[tuple[str, Node]]]]
                 ) -> list[list[tuple[str, nn.Module]]]:
        """Each group of steps arranged (layout permutes inserted), and where each of its children's output can
        be observed (the children named by the labels their steps carry)."""
        arranged: list[list[tuple[str, nn.Module]]] = []
        flat: list[tuple[str, nn.Module]] = []  # the container's forward order
        for steps, children in groups:
            ends: dict[str, tuple[int, bool]] = {}
            named = tm.arrange(steps, self.channels_last, ends)
            for label, child in children:
                i, cf = ends[label]
                module = named[i][1]
                k = sum(m is module for _, m in flat + named[:i])
                self.ends[child.path] = (node.path, module, k, cf)
            flat += named
            arranged.append(named)
        return arranged

    def _container(self, node: Node, module: nn.Module, out: int | None) -> list[Step]:
        self.containers[node.path] = module
        self.out[node.path] = out
        return [Step("", module, SPEC, SPEC)]

    def sequential(self, node: Node, children: list[tuple[str, list[Step]]]) -> list[Step]:
        named = self._arrange(node, [([(seg, s) for seg, steps in children for s in steps],
                                      [(tree.segment(c), c) for c in node.children])])[0]
        out = self.out[node.children[-1].path] if node.children else self.entry[node.path]
        return self._container(node, tm.sequential(named), out)

    def residual(self, node: Node, body: list[Step], shortcut: list[Step] | None) -> list[Step]:
        layer: Any = node.layer
        act = tm.activation(layer.activation).module if layer.activation else None
        kids = node.children
        named = self._arrange(node, [([("body", s) for s in body], [("body", kids[0])]),
                                     ([("shortcut", s) for s in shortcut or []], [("shortcut", c) for c in kids[1:]])])
        return self._container(node, tm.Residual(named[0], named[1], act), self.out[node.children[0].path])

    def concat(self, node: Node, branches: list[tuple[str, list[Step]]]) -> list[Step]:
        named = self._arrange(node, [([(seg, s) for s in steps], [(seg, c)])
                                     for (seg, steps), c in zip(branches, node.children)])
        return self._container(node, tm.Concat(named, -1 if self.channels_last else 1), self.out[node.children[0].path])

    def merge(self, node: Node, branches: list[tuple[str, list[Step]]]) -> list[Step]:
        named = self._arrange(node, [([(seg, s) for s in steps], [(seg, c)])
                                     for (seg, steps), c in zip(branches, node.children)])
        return self._container(node, tm.Merge(named, node.layer.op),  # type: ignore[attr-defined]
                               self.out[node.children[0].path])


class TorchRunner(tree.Runner[torch.Tensor]):
    """The plan position by position (each in the spec's layout) with the native modules."""

    def __init__(self, module: Callable[[str], nn.Module], channels_last: bool,
                 arranged: dict[str, tuple[nn.Module, list[nn.Module]]] | None = None) -> None:
        self.module, self.channels_last = module, channels_last
        # each leaf's modules in call order, kept across runs by the caller (a graph net runs every forward here):
        # leaf_steps builds the layer's modules anew (a Dense is a new LazyLinear), which cost BERT-base's forward
        # 15% on top of the hand-written model's
        self.arranged = {} if arranged is None else arranged

    def leaf(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        main = self.module(node.path)
        kept = self.arranged.get(node.path)
        if kept is None or kept[0] is not main:  # first run, or the native module was replaced
            steps = [s._replace(module=main) if not s.tag else s for s in leaf_steps(node, node.layer, None)]  # type: ignore[arg-type]
            kept = self.arranged[node.path] = (main, [m for _, m in tm.arrange([("x", s) for s in steps],
                                                                               self.channels_last)])
        for module in kept[1]:
            x = module(x)
        return x

    def activation(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return tm.activation(name).module(x)

    def concat(self, xs: list[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(xs, axis)

    def channel_axis(self, rank: int) -> int:
        return -1 if self.channels_last else 1

    def record(self, y: torch.Tensor) -> np.ndarray:
        return y.detach().to("cpu", F32).numpy()


class Observer:
    """Forward hooks, attached for the dry run only, that record every position's output shape as torch
    computed it. A module object can run at several positions (ties), so a firing is told apart by the
    container position it runs in (a stack kept by the containers' pre-hooks) and by which occurrence of the
    module in that container's forward it is. The root itself is not hooked (a hook on every call of a small
    model is measurable): its frame is the stack's first, and its output is the dry run's return (``finish``)."""

    def __init__(self, builder: TorchBuilder) -> None:
        self.builder = builder
        self.slots = {(parent, id(m), k): (path, cf) for path, (parent, m, k, cf) in builder.ends.items()}
        self.container_ids: set[int] = set()  # the hooks' (attach): a flat root needs neither
        self.shapes: dict[str, tuple] = {}
        self._stack: list[tuple[str | None, dict[int, int]]] = []

    def _slot(self, module: nn.Module) -> tuple[str, bool] | None:
        parent, counts = self._stack[-1]
        k = counts[id(module)]
        counts[id(module)] = k + 1
        return None if parent is None else self.slots.get((parent, id(module), k))

    def _pre(self, module: nn.Module, args: Any) -> None:
        slot = self._slot(module)
        self._stack.append((None if slot is None else slot[0], defaultdict(int)))

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        if id(module) in self.container_ids:
            path = self._stack.pop()[0]
            slot = None if path is None else (path, False)  # containers end in the spec's layout
        else:
            slot = self._slot(module)
        self._record(slot, out)

    def _record(self, slot: tuple[str, bool] | None, out: Any) -> None:
        shape = getattr(out, "shape", None)
        if slot is not None and shape is not None:
            shape = tuple(shape) if type(shape) is torch.Size else tuple(int(d) for d in shape)
            # torch's convolutions, pools and batch norms run channels-first: for a channels_last spec a position
            # that ends there (its permute back is fused with the next one's) is (N, C, *spatial); the spec's
            # layout is the known transposition (N, *spatial, C)
            self.shapes[slot[0]] = shape[:1] + shape[2:] + shape[1:2] if slot[1] and len(shape) > 2 else shape

    def run(self, net: nn.Module, x: torch.Tensor) -> Any:
        """The dry run ``net(x)``, observed. A root ``nn.Sequential`` of leaf modules alone (no nested container; no
        hook on the root, local or global) is run here as its own forward is written (``for module in self: x =
        module(x)``), each child's output read as torch returns it: no hook on every module, whose attaching and
        firing cost more than a small model's forward. Anything else runs ``net(x)`` with the hooks."""
        hooked = len(self.builder.containers) > 1 or type(net) is not nn.Sequential or net._forward_hooks or \
            net._forward_pre_hooks or global_hooks()
        if hooked:
            handles = self.attach()
            try:
                out = net(x)
            finally:
                for h in handles:
                    h.remove()
        else:
            slots, record = self.slots, self._record
            seen: dict[int, int] = {}
            out = x
            for module in net._modules.values():
                out = module(out)
                i = id(module)
                k = seen[i] = seen.get(i, -1) + 1  # which run of this module object in the root's forward
                slot = slots.get(("", i, k))
                if slot is not None:
                    record(slot, out)
        self.finish(out)
        return out

    def attach(self) -> list[Any]:
        builder = self.builder
        root = builder.containers[""]
        modules = {id(m): m for _, m, _, _ in builder.ends.values()}
        modules.update({id(m): m for m in builder.containers.values() if m is not root})
        self.container_ids = {id(m) for m in builder.containers.values()}
        self._stack[:] = [("", defaultdict(int))]  # the root's frame: its children are its direct modules
        handles = []
        for i, m in modules.items():
            if i in self.container_ids:
                handles.append(m.register_forward_pre_hook(self._pre))
            handles.append(m.register_forward_hook(self._post))
        return handles

    def finish(self, out: Any) -> None:
        """The model's output, as the dry run returned it (containers end in the spec's layout)."""
        self.shapes[""] = tuple(int(d) for d in out.shape)
