"""The PyTorch backend: torch's own lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``)
find every input-dependent dim in a dry run, exactly as in the d2l book's lazy-initialization chapter.

The native model mirrors the spec tree: an ``nn.Sequential`` per Sequential/LazyModel (children named by the
canonical segments, so ``state_dict`` keys are the canonical names), torch's own modules for the leaves, and
two small modules for Residual and Concat (``modules.py``; the walk is ``structure.py`` over ``adapters/tree.py``, the
leaf table ``leaves.py``; what is read off the native model after the dry run, ``native_state.py``). Tied layers
are the same module object.
Every canonical layout is torch's own layout, so no weight is transposed.

* Concrete ``apply_init``: dry run on CPU in eval mode under ``no_grad`` (so BatchNorm statistics are not
  touched); the lazy modules materialize with torch's default init, under ``torch.manual_seed(key)`` inside
  ``torch.random.fork_rng`` for an int key (deterministic, and the caller's global RNG stream is left alone).
* From the third concrete ``apply_init`` of an equal spec on an equal input (shape, dtype) in the process on, an
  init starts from the template the second one kept right after its dry run (``template.py``): new modules of the shapes torch found,
  drawn by their own ``reset_parameters`` in the dry run's order (bit for bit the first path's weights for the
  same key), with no lazy module and no dry run: 0.4-0.6x the hand-written lazy dry run where the lazy path is
  1.3-1.6x on small models. Behind ``fastpath.ENABLED``; a module that is not plain, a global module hook of
  the user's, an abstract init or varying dims take the lazy path.
* Abstract ``apply_init``: the still-uninitialized parameters are re-homed to the meta device and the dry run
  runs on a meta input under ``torch.device("meta")``: shapes only, no parameter memory. ``materialize``
  then allocates the same modules in place (``to_empty(device="cpu")``) and re-runs their
  ``reset_parameters`` in the dry run's order, so it gives the concrete init's weights bit for bit.
* Forward: the native module called directly (autograd on, as a hand-written torch model); ``.train()`` /
  ``.eval()`` only when the mode changes.
* Sequence layers (``sequence.py``): recurrent layers, attention, class token and position embedding are
  deferred by torch's own ``LazyModuleMixin`` and become plain ``nn.GRU``/``nn.Linear``/... modules; LayerNorm,
  which torch ships no lazy form of, is ``modules.LazyLayerNorm`` written the same way, so every shape is
  torch's own (``source="native"``). Varying (None) dims are dry-run on meta with the smallest stand-in
  size the rules accept (``_standin.py``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _module_mod

from ...errors import BackendError, DeferInitError, SpecError, UnsupportedLayerError, where
from ...extend import generation
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
from .structure import GLOBAL_HOOKS, Observer, TorchBuilder, TorchRunner
from .template import Template, snapshot

__all__ = ["TorchModel"]


# --------------------------------------------------------------------------------------------- the model
class TorchModel(CompiledModel[nn.Module]):
    """A spec compiled for PyTorch; ``native`` is the ``nn.Module`` (an ``nn.Sequential``)."""

    backend = "torch"
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
        if fastpath.ENABLED and not any(getattr(_module_mod, g, None) for g in GLOBAL_HOOKS):
            # (a global module hook of the user's watches every forward: it sees the dry run, as it always did)
            entry = self._entry(inference)
            if entry is not None:
                template = entry[1].get(self._template_key(False))
                if not template and abstract:
                    template = entry[1].get(self._template_key(True))
                if template:
                    net, modules = template.clone("meta" if abstract else "cpu")
                    self._cloned = (net, template, modules)
                    return net
        return self._new_native()

    @staticmethod
    def _template_key(abstract: bool) -> tuple:
        # a builder registered since builds other modules; another default dtype makes other tensors
        return ("torch template", abstract, generation(), torch.get_default_dtype())

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
            if not on_meta or (abstract and None not in inference.report.input_shape):
                self._keep_template(inference, net, modules, observer.shapes, abstract)
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

    def _keep_template(self, inference: Inference, net: nn.Module, modules: Mapping[str, nn.Module],
                       shapes: Mapping[str, tuple], abstract: bool) -> None:
        """After a dry run at the input's own shape: the template of ``net`` for later inits on an equal input, once
        per cached input (a concrete one and an abstract one). The first init of an input only marks it: an input
        initialized once does not pay for a copy (47 us of the MLP's 450); the second keeps the template."""
        entry = self._entry(inference)
        key = self._template_key(abstract)
        if entry is None or not fastpath.ENABLED:
            return
        if key not in entry[1]:
            entry[1][key] = None  # seen once
        elif entry[1][key] is None:  # a template, or False: a module that is not plain, not copied again
            entry[1][key] = (None if ns.lazy_left(net) else snapshot(net, modules, shapes, not abstract)) or False

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

    def _inference_mode(self) -> None:
        net = self._native
        if net is not None and net.training:
            net.train(False)

    # ---------------------------------------------------------------- data
    def _is_native(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def _signature(self, x: torch.Tensor) -> tuple:
        # the per-call cache key: torch.Size is a tuple and torch.dtype hashes, so nothing is converted
        # (the base class's tuple(shape), str(dtype) cost ~0.5 us of a 20 us MLP forward)
        return (x.shape, x.dtype)

    def _shape_dtype(self, x: Any) -> tuple[tuple, Any]:
        if isinstance(x, torch.Tensor):
            return tuple(x.shape), tt.NP_DTYPES.get(x.dtype, np.dtype(object))
        return super()._shape_dtype(x)

    def _to_native(self, x: Any) -> torch.Tensor:
        arr = np.asarray(x)
        if arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64):
            arr = arr.astype(np.int64)
        if not (arr.flags.c_contiguous and arr.flags.writeable):  # from_numpy refuses negative strides
            arr = np.array(arr, order="C")
        t = torch.from_numpy(arr)
        net = self._native
        p = next(net.parameters(), None) if net is not None else None
        if p is not None and p.device.type not in ("cpu", "meta"):  # a model the user moved (model.native.cuda())
            t = t.to(p.device)
        return t

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)

    # ---------------------------------------------------------------- running
    def _call(self, x: Any, training: bool) -> Any:
        """The steady state of an inference call, the base class's ``_call`` with its hooks inlined: a plain tensor
        whose (shape, dtype) was already checked (``_checked`` is emptied by every init and load, and stays empty
        while the model has no values), of a dtype the model takes, on a model with no token ids to range-check.
        Anything else takes the base class's path. Saves three Python calls, 0.3-0.4 us of the MLP's 20 us."""
        if not training and type(x) is torch.Tensor and (x.shape, x.dtype) in self._checked and \
                x.dtype in tt.READY and self._index_limit is None and fastpath.ENABLED:
            net = self._native
            if net.training:  # type: ignore[union-attr]
                net.train(False)  # type: ignore[union-attr]
            try:
                return fastpath.call(net, x)  # type: ignore[arg-type]
            except (DeferInitError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise self._backend_error("forward", exc) from exc
        return super()._call(x, training)

    def _forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        net = self._native
        if net.training != training:  # type: ignore[union-attr]
            net.train(training)  # type: ignore[union-attr]
        if x.dtype not in tt.READY:
            x = tt.coerce(x)
        return fastpath.call(net, x)  # type: ignore[arg-type]

    def _tensor(self, name: str) -> torch.Tensor:
        owner, _, attr = self.report.params[name].native_name.rpartition(".")
        return getattr(self._native.get_submodule(owner), attr)  # type: ignore[union-attr]

    def _get_weights(self) -> dict[str, np.ndarray]:
        return {name: ns.full(self._tensor(name)).detach().to("cpu", F32).numpy() for name in self.report.params}

    def _shard_init(self, x: Any, plan: Any, mesh: Any, init: Any, key: int) -> Any:
        from .sharded import shard_init  # deferinit.shard_init's hook: DTensors over a DeviceMesh

        return shard_init(self, x, plan, mesh, init, key)

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name in self.report.params:
                self._tensor(name).copy_(torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32)))

    def _gradients(self, x: torch.Tensor, training: bool) -> dict[str, np.ndarray]:
        names = [n for n, p in self.report.params.items() if p.trainable]
        params = [self._tensor(n) for n in names]
        with torch.enable_grad():
            y = self._forward(x, training)
            grads = torch.autograd.grad(y.sum(), params, allow_unused=True)
        return {n: (np.zeros(tuple(p.shape), np.float32) if g is None else g.detach().to("cpu", F32).numpy())
                for n, p, g in zip(names, params, grads)}

    def _intermediates(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Runs the plan position by position (each in the spec's layout) with the native modules."""
        net = self._native
        if net.training:  # type: ignore[union-attr]
            net.eval()  # type: ignore[union-attr]
        record: dict[str, np.ndarray] = {}
        runner = TorchRunner(lambda path: self._module(net, path), self.spec.data_format == "channels_last")  # type: ignore[arg-type]
        with torch.no_grad():
            tree.run(self.root, x if x.dtype in tt.READY else tt.coerce(x), runner, record)
        return record
