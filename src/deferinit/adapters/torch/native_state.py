"""What the torch backend reads off a native model it built, and puts back: functions of the ``nn.Module`` alone,
with no compiled-model state. After the dry run, whether anything is still lazy (and its names, for the error),
and where each canonical parameter lives in the module tree; for an abstract model, the snapshot that puts its
meta tensors back after a failed ``materialize``; for a sharded one, the gathered tensor."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedTensorMixin, is_lazy

from ...shapes import Inference, Node
from .leaves import native_attr
from .modules import child_name

__all__ = ["lazy_left", "lazy_names", "param_paths", "abstract_snapshot", "full"]


def lazy_left(net: nn.Module) -> bool:
    """Whether any module of ``net`` is still lazy or holds an uninitialized tensor after the dry run: a walk of
    ``_modules`` (``net.modules()`` builds every module's dotted name), and ``issubclass`` on each tensor's type
    (``isinstance`` goes through ``Parameter``'s metaclass in Python). 3 us on the MLP, against 9."""
    stack = [net]
    while stack:
        m = stack.pop()
        if m is None:
            continue
        if isinstance(m, LazyModuleMixin):
            return True
        for t in m._parameters.values():
            if issubclass(type(t), UninitializedTensorMixin):
                return True
        for t in m._buffers.values():
            if issubclass(type(t), UninitializedTensorMixin):
                return True
        stack.extend(m._modules.values())
    return False


def param_paths(inference: Inference, leaves: Mapping[str, Node]) -> list[tuple[str, str, list[str], str]]:
    """(canonical name, owner position, torch attribute path below the owner's module, native name) of every
    parameter: they depend on the spec alone, so they are kept on the inference, which equal specs on equal inputs
    share (``rules_cache``)."""
    def make() -> list[tuple[str, str, list[str], str]]:
        paths = []
        for name in inference.params:
            owner, _, pname = name.rpartition(".")
            attr = native_attr(leaves[owner].layer, pname)  # the canonical name, but for attention's W_q.weight...
            native = ".".join(child_name(s) for s in owner.split("."))
            paths.append((name, owner, attr.split("."), f"{native}.{attr}"))
        return paths
    return inference.kept("_torch_param_paths", make)


def full(t: torch.Tensor) -> torch.Tensor:
    """A sharded parameter (a DTensor, after deferinit.shard_init) gathered; any other tensor as it is."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def lazy_names(net: nn.Module) -> list[str]:
    """Every module still lazy and every uninitialized tensor of ``net``, by dotted name (for the error message)."""
    left: list[str] = []
    for prefix, m in net.named_modules():
        left += [prefix] if isinstance(m, LazyModuleMixin) else []
        left += [f"{prefix}.{k}" for k, t in (*m._parameters.items(), *m._buffers.items()) if is_lazy(t)]
    return left


def abstract_snapshot(net: nn.Module) -> Callable[[], None]:
    """A function that puts ``net``'s current (meta) tensors back. ``to_empty`` gives every module new tensor objects
    (meta and CPU tensors cannot share one), so putting the old meta objects back makes the model abstract again,
    unallocated, whatever the init did to the new ones."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in net.modules()]
    shapes = {id(t): (tuple(t.shape), t.dtype) for _, ps, bs in saved for t in (*ps.values(), *bs.values())
              if t is not None}
    training = net.training

    def undo() -> None:
        for m, params, buffers in saved:
            for store, old in ((m._parameters, params), (m._buffers, buffers)):
                store.clear()
                store.update(old)
                for k, t in old.items():
                    if t is not None and not t.is_meta:  # torch.__future__'s swap-on-conversion swapped it
                        meta = torch.empty(shapes[id(t)][0], dtype=shapes[id(t)][1], device="meta")
                        store[k] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
            if isinstance(m, nn.RNNBase):
                m._init_flat_weights()
        net.train(training)
    return undo
