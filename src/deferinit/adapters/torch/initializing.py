"""How the torch backend builds and initializes its native model: ``TorchInit``, the base of ``TorchModel``
(``__init__.py``, which adds the data and the forward).

* Concrete ``apply_init``: torch's lazy modules (``structure.TorchBuilder`` over the leaf table ``leaves.py``) dry-run
  on CPU in eval mode under ``no_grad``, observed position by position (``structure.Observer``), under
  ``torch.manual_seed(key)`` inside ``fork_rng`` for an int key; then what the dry run left is read off the model
  (``native_state.py``).
* Abstract ``apply_init``: the same dry run on the meta device; ``_materialize`` allocates in place and re-runs
  ``reset_parameters`` in the dry run's order.
* A repeat init of an equal spec on an equal input starts from a template (``template.py``; the bookkeeping is the
  shared ``rules_cache.RulesCache._template``/``_template_turn``/``_keep_template``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ...errors import BackendError, SpecError, UnsupportedLayerError, where
from ...layers import Embedding
from ...shapes import Inference, Node
from .. import tree
from .._standin import stand_in
from ..compiled import CompiledModel, NativeParam
from . import fastpath
from . import native_state as ns
from . import tensors as tt
from .leaves import LAZY_BN, kernel_attrs
from .modules import F32, child_name
from .structure import Observer, TorchBuilder, global_hooks
from .template import Template, snapshot

__all__ = ["TorchInit"]


class TorchInit(CompiledModel[nn.Module]):
    """The building and initializing hooks of the torch backend (see the module docstring)."""

    _built: tuple[nn.Module, TorchBuilder] | None = None  # the last native built, until its dry run
    _observed: tuple[nn.Module | None, Mapping[str, tuple]] = (None, {})
    _cloned: tuple[nn.Module, Template, dict[str, nn.Module]] | None = None  # the last clone, until its init

    # ---------------------------------------------------------------- building and initializing
    def _new_native(self) -> nn.Module:
        builder = TorchBuilder(self.root, self.spec.data_format == "channels_last")
        net = tree.build(self.root, builder)[0][0].module
        self._built = (net, builder)  # the observer of its dry run needs where each position ends
        return net

    def _native_for(self, inference: Inference, abstract: bool, values_follow: bool) -> nn.Module:
        """A clone of the template an earlier concrete init on an equal input kept (``template.py``), if there is one;
        else a fresh lazy model."""
        if fastpath.ENABLED and not global_hooks():
            # (a global module hook of the user's watches every forward: it sees the dry run, as it always did)
            template = self._template(inference, abstract)
            if template is not None:
                net, modules = template.clone("meta" if abstract else "cpu")
                self._cloned = (net, template, modules)
                return net
        return self._new_native()

    def _template_context(self) -> Any:
        return torch.get_default_dtype()  # a user's builder may make tensors of the default dtype

    def _module(self, net: nn.Module, path: str) -> nn.Module:
        for seg in path.split("."):
            net = net._modules[child_name(seg)]  # type: ignore[assignment]
        return net

    def _init_fn(self, init: Any) -> Callable[[nn.Module], Any] | None:
        """torch's own initializers: a function of a module applied like d2l's ``net.apply(init_fn)``, or a
        ``torch.nn.init`` function of a tensor applied to every weight matrix: Dense/Conv kernels, Embedding
        tables, attention projections and recurrent ``weight_ih``/``weight_hh``."""
        if init is None:
            return None
        if not callable(init):
            raise SpecError(f"init: the torch backend expected None, a portable initializer (a name or a "
                            f"deferinit.init object), a function of a module (applied as net.apply(fn)) or a "
                            f"torch.nn.init function, received {init!r}")
        if getattr(getattr(init, "func", init), "__module__", "") == "torch.nn.init":
            kernels = [(n.path, a) for n in self.root.leaves() for a in kernel_attrs(n.layer)]
            return lambda net: [init(self._module(net, p).get_parameter(a)) for p, a in kernels]
        return lambda net: net.apply(init)

    def _reset(self, net: nn.Module, modules: Mapping[str, nn.Module] | None = None) -> None:
        """torch's default init of every module, in the order the concrete path draws it: the non-lazy
        Embeddings first (a hand-written model draws them at construction), then the dry run's order."""
        mods = [self._module(net, path) for path in self._leaves] if modules is None else list(modules.values())
        for m in sorted(mods, key=lambda m: not isinstance(m, nn.Embedding)):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _native_init(self, net: nn.Module, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        cloned, self._cloned = self._cloned, None
        if cloned is not None and cloned[0] is net:
            return self._clone_init(net, cloned[1], cloned[2], inference, init, key, abstract)
        builder = self._builder_of(net)
        observer = Observer(builder)
        init_fn = self._init_fn(init)
        # Shapes are inferred on meta when abstract, and also when the input has varying (None) dims: a CPU
        # dry run would need a stand-in size for them that every window fits; meta needs no memory for any.
        on_meta = abstract or None in inference.report.input_shape
        leaves = self._leaves
        mains = builder.mains  # the modules the builder made for each leaf (the same objects _module finds)
        modules = {path: mains.get(path) or self._module(net, path) for path in leaves}
        with tt.seeded(key):
            if on_meta:
                tt.rehome(net, "meta")
            for node in self._batch_norms:  # every BatchNorm position, tied ones too
                self._fix_batch_norm(net, node, node.tied_to or node, inference)
            for path, node in leaves.items():  # in plan order: the draws of a hand-written model's constructors
                module, layer = modules[path], node.layer
                if isinstance(layer, Embedding):
                    tt.allocate(module, (layer.num_embeddings, layer.dim), torch.device("meta" if on_meta else "cpu"))
            net.eval()  # the dry run must not update BatchNorm statistics
            # the report's per-layer shapes are read off this dry run (structure.Observer.run)
            with torch.no_grad(), (torch.device("meta") if on_meta else contextlib.nullcontext()):
                observer.run(net, self._dry_input(x, inference, on_meta))
            self._observed = (net, observer.shapes)
            if (not on_meta or (abstract and None not in inference.report.input_shape)) and fastpath.ENABLED and \
                    self._template_turn(inference, abstract):  # the second init of this input: keep a template
                self._keep_template(inference, abstract, None if ns.lazy_left(net) else
                                    snapshot(net, modules, observer.shapes, not abstract))
            if not abstract:
                if on_meta:
                    net.to_empty(device="cpu")
                    self._reset(net)
                if init_fn is not None:
                    with torch.no_grad():
                        init_fn(net)
        if ns.lazy_left(net):
            raise BackendError(f"{self._who()}: the dry run left uninitialized modules or tensors: {ns.lazy_names(net)}")
        return self._found(inference, modules, init_fn is not None and not abstract)

    def _clone_init(self, net: nn.Module, template: Template, modules: dict[str, nn.Module], inference: Inference,
                    init: Any, key: Any, abstract: bool) -> dict[str, NativeParam]:
        """The init of a clone of ``template``: concrete, every module's default init in the concrete path's order
        (``_reset``, as ``materialize`` does), then ``init``; abstract, nothing (the clone is on meta). The dry
        run's shapes are the template's."""
        init_fn = self._init_fn(init)
        if abstract:
            self._observed = (net, template.shapes)
            return self._found(inference, modules, False)
        with tt.seeded(key):
            self._reset(net, modules)
            if init_fn is not None:
                with torch.no_grad():
                    init_fn(net)
        self._observed = (net, template.shapes)
        return self._found(inference, modules, init_fn is not None)

    def _found(self, inference: Inference, modules: Mapping[str, nn.Module], check: bool) -> dict[str, NativeParam]:
        """What torch made for every canonical parameter (a module function given as init is checked)."""
        found: dict[str, NativeParam] = {}
        leaves = self._leaves
        for name, owner, parts, native_name in ns.param_paths(inference, leaves):
            t: Any = modules[owner]
            for part in parts:
                t = t._parameters.get(part) if part in t._parameters else getattr(t, part)
            if check:
                self._check_init(name, t, inference.params[name].shape)
            shape = tuple(t.shape)
            found[name] = NativeParam(native_name, shape, shape)
        return found

    @property
    def _leaves(self) -> dict[str, Node]:
        """The first occurrence of every leaf, by path, in plan order (the plan is fixed: computed once)."""
        leaves = self.__dict__.get("_leaf_nodes")
        if leaves is None:
            leaves = self._leaf_nodes = {n.path: n for n in self.root.leaves()}
        return leaves

    def _native_layer_shapes(self, native: nn.Module, x: Any, inference: Inference,
                             abstract: bool) -> Mapping[str, tuple] | None:
        """What the dry run of ``_native_init`` computed at every position (``structure.Observer``). On meta (abstract,
        or None dims run at the stand-in size) a dim the reference leaves None is the stand-in's, not compared."""
        seen, shapes = self._observed
        self._observed = (None, {})
        if seen is not native:
            raise BackendError(f"{self._who()}: no dry run of this native model was observed")
        return shapes

    def _builder_of(self, net: nn.Module) -> TorchBuilder:
        built, self._built = self._built, None
        if built is None or built[0] is not net:
            raise BackendError(f"{self._who()}: the native model to initialize is not the one last built")
        return built[1]

    def _check_init(self, name: str, t: torch.Tensor, want: tuple) -> None:
        """A module function given as ``init`` may replace a tensor (``m.weight = nn.Parameter(...)``): it must
        keep the shape found; other real dtypes are stored as float32, as ``load_weights`` stores them."""
        error = self._init_value_error(name, want, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                                       not (t.is_complex() or t.dtype == torch.bool))
        if error is not None:
            raise error
        if t.dtype != F32:
            with torch.no_grad():
                t.data = t.data.to(F32)

    def _fix_batch_norm(self, net: nn.Module, node: Node, target: Node, inference: Inference) -> None:
        rank = len(inference.inputs[node.path])
        module = self._module(net, target.path)
        if node.tied_to is None:
            if type(module) is not LAZY_BN[rank]:
                module.__class__ = LAZY_BN[rank]  # same state; the classes differ only in the rank they accept
        elif LAZY_BN[len(inference.inputs[target.path])] is not LAZY_BN[rank]:
            raise UnsupportedLayerError(
                f"{where(node.path, node.layer, 'torch')}: a BatchNorm shared between inputs of rank "
                f"{len(inference.inputs[target.path])} (at '{target.path}') and rank {rank} cannot be one torch "
                f"module (BatchNorm1d/2d/3d each accept fixed ranks); use two BatchNorm layers")

    def _dry_input(self, x: Any, inference: Inference, on_meta: bool) -> torch.Tensor:
        if on_meta:
            dtype = F32 if np.dtype(inference.report.input_dtype).kind == "f" else torch.int64
            return torch.empty(stand_in(self.spec, inference, self.root), dtype=dtype, device="meta")
        return tt.coerce(x).cpu() if x.dtype not in tt.READY else x.cpu()

    def _materialize(self, init: Any, key: Any) -> None:
        net: nn.Module = self._native  # type: ignore[assignment]
        init_fn = self._init_fn(init)
        with tt.seeded(key):
            net.to_empty(device="cpu")
            self._reset(net)
            if init_fn is not None:
                with torch.no_grad():
                    init_fn(net)
                for name, info in self.report.params.items():
                    self._check_init(name, self._tensor(name), info.shape)
        net.eval()

    def _abstract_snapshot(self) -> Callable[[], None]:
        return ns.abstract_snapshot(self._native)  # type: ignore[arg-type]

    def _tensor(self, name: str) -> torch.Tensor:
        owner, _, attr = self.report.params[name].native_name.rpartition(".")
        return getattr(self._native.get_submodule(owner), attr)  # type: ignore[union-attr]
