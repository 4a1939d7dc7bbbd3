"""A repeat ``apply_init`` of one spec on one input shape and dtype, without torch's lazy machinery again (issue 17).

A concrete ``apply_init`` builds torch's lazy modules and dry-runs them: torch finds every shape. The first one of
a (spec, input shape, dtype) in a process only marks that input as seen (an input initialized once pays nothing
more); right after the second one's dry run (before any init function of the user runs), :func:`snapshot` keeps
the model's structure as a *template*: every module copied with its parameters and buffers
as meta tensors of the shapes torch found, beside the per-position shapes the dry run observed. The template is
kept with the cached rules answer for that input (``rules_cache``: a builder registered since, or another default
dtype, is another key), so a later model of an equal spec, on an equal input, starts from it.

:meth:`Template.clone` makes a new model from it: new module objects (ties kept), new CPU tensors, the buffers'
values copied; the caller then draws every parameter with the modules' own ``reset_parameters`` in the dry run's
order, as ``materialize`` does after an abstract init, which gives the first path's weights bit for bit for the
same key (tested on every model of the zoo). It costs ~85 us for the MLP where torch's lazy construction and
dry run cost ~270 us. The shapes in the report are still torch's: those of the tensors torch made in the first
dry run, on an equal model; what is skipped is finding them again.

Only a model whose every module keeps its state in its parameters, buffers, children and plain Python values
(numbers, strings, dtypes, tuples, lists and dicts of them, functions) and has no hook is snapshotted (torch's
Linear, Conv, BatchNorm, LayerNorm, Embedding, pools and activations, and deferinit's own modules); anything else
(an RNN's list of its weights, a module object held as an attribute, a user's module with a tensor attribute)
keeps taking the lazy path every time. A module class may list in ``_template_own`` attributes that are not copied
because whoever copies it sets them anew (``graph_module.GraphNet.adopt``: the spec, its plan, the tied
projections' reads of their embedding).

An abstract init keeps a template too (from its dry run on meta: no buffer values), which only abstract inits use;
an abstract init also starts from a concrete init's template. A model cloned on meta is materialized as any
abstract model is (``to_empty``, then ``reset_parameters`` in the dry run's order).

Graph specs (``graph_module.TorchGraphModel``) keep templates of abstract inits only, by (spec content, every
input's shape and dtype, builders, default dtype): their concrete init dry-runs on CPU each time.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["Template", "snapshot"]

_HOOKS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
          "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")
_STORES = frozenset(("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", *_HOOKS))
_ATOMS = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device, torch.Size,
          types.FunctionType, types.BuiltinFunctionType, type)


class _NotPlain(Exception):
    pass


def _plain(v: Any) -> Any:
    """``v`` if it can be shared between models (immutable), a copy if it is a list/dict/set of such values;
    raises ``_NotPlain`` for anything else (a tensor, a module, an object of unknown mutability)."""
    if isinstance(v, _ATOMS):
        return v
    if type(v) is tuple or type(v) is frozenset:
        for item in v:
            _plain(item)
        return v
    if type(v) is list:
        return [_plain(item) for item in v]
    if type(v) is set:
        return {_plain(item) for item in v}
    if type(v) is dict:
        return {_plain(k): _plain(item) for k, item in v.items()}
    raise _NotPlain(type(v).__name__)


def _copy(m: nn.Module, memo: dict[int, nn.Module], device: str, values: bool) -> nn.Module:
    """A new module of ``m``'s class with ``m``'s plain attributes, new children (``memo`` keeps ties) and new
    tensors of ``m``'s shapes and dtypes on ``device``; buffers keep their values when ``values``."""
    new = memo.get(id(m))
    if new is not None:
        return new
    d = m.__dict__
    own = getattr(type(m), "_template_own", ())  # attributes the copy's owner sets anew (``GraphNet.adopt``)
    state = {k: (v if k in ("training", "_is_full_backward_hook") else _plain(v))
             for k, v in d.items() if k not in _STORES and k not in own}
    for h in _HOOKS:
        if h in d:
            state[h] = OrderedDict()
    state["_non_persistent_buffers_set"] = set(m._non_persistent_buffers_set)
    state["_parameters"] = {k: None if p is None else
                            nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
                            for k, p in m._parameters.items()}
    state["_buffers"] = {k: None if b is None else (b.to(device, copy=True) if values else
                                                    torch.empty(b.shape, dtype=b.dtype, device=device))
                         for k, b in m._buffers.items()}
    new = object.__new__(type(m))
    memo[id(m)] = new
    state["_modules"] = {k: None if c is None else _copy(c, memo, device, values) for k, c in m._modules.items()}
    new.__dict__.update(state)
    return new


class Template:
    """A materialized torch model's structure (meta parameters, CPU buffer values), the modules of its leaves by
    path, and the per-position shapes its dry run observed."""

    __slots__ = ("root", "leaves", "shapes", "values")

    def __init__(self, root: nn.Module, leaves: dict[str, nn.Module], shapes: Mapping[str, tuple], values: bool) -> None:
        self.root, self.leaves, self.shapes, self.values = root, leaves, shapes, values

    def clone(self, device: str) -> tuple[nn.Module, dict[str, nn.Module]]:
        """A new model and its leaves' modules by path: on ``"cpu"`` its parameters allocated, not yet drawn, and
        its buffers the template's values (only a template of a concrete init has them); on ``"meta"`` shapes
        only, as an abstract init leaves a model."""
        memo: dict[int, nn.Module] = {}
        net = _copy(self.root, memo, device, device == "cpu")
        return net, {path: memo[id(m)] for path, m in self.leaves.items()}


def snapshot(net: nn.Module, leaves: Mapping[str, nn.Module], shapes: Mapping[str, tuple], values: bool) -> Template | None:
    """The template of ``net`` just after its dry run (on CPU with ``values``, the buffers' values kept; else on
    meta, shapes only), or None where a module of it is not plain (see above)."""
    for m in net.modules():
        if any(getattr(m, h, None) for h in _HOOKS):
            return None
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and type(t) not in (nn.Parameter, torch.Tensor):
                return None  # uninitialized, a DTensor, a tensor subclass: not copied by shape and dtype alone
    memo: dict[int, nn.Module] = {}
    try:
        with torch.no_grad():
            root = _copy(net, memo, "meta", False)
            for m in net.modules() if values else ():  # buffers keep their values (BatchNorm statistics, a sinusoid table)
                new = memo[id(m)]
                for k, b in m._buffers.items():
                    if b is not None:
                        new._buffers[k] = b.detach().to("cpu", copy=True)
    except _NotPlain:
        return None
    return Template(root, {path: memo[id(m)] for path, m in leaves.items()}, MappingProxyType(dict(shapes)), values)
