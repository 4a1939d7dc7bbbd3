"""The PyTorch backend: torch's own lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``)
find every input-dependent dim in a dry run, exactly as in the d2l book's lazy-initialization chapter.

The native model mirrors the spec tree: an ``nn.Sequential`` per Sequential/LazyModel (children named by the
canonical segments, so ``state_dict`` keys are the canonical names), torch's own modules for the leaves, and
two small modules for Residual and Concat (``_torch_modules.py``). Tied layers are the same module object.
Every canonical layout is torch's own layout, so no weight is transposed.

* Concrete ``apply_init``: dry run on CPU in eval mode under ``no_grad`` (so BatchNorm statistics are not
  touched); the lazy modules materialize with torch's default init, under ``torch.manual_seed(key)`` inside
  ``torch.random.fork_rng`` for an int key (deterministic, and the caller's global RNG stream is left alone).
* Abstract ``apply_init``: the still-uninitialized parameters are re-homed to the meta device and the dry run
  runs on a meta input under ``torch.device("meta")``: shapes only, no parameter memory. ``materialize``
  then allocates the same modules in place (``to_empty(device="cpu")``) and re-runs their
  ``reset_parameters`` in the dry run's order, so it gives the concrete init's weights bit for bit.
* Forward: the native module called directly (autograd on, as a hand-written torch model); ``.train()`` /
  ``.eval()`` only when the mode changes.
* Sequence layers (``_torch_seq.py``): recurrent layers, attention, class token and position embedding are
  deferred by torch's own ``LazyModuleMixin`` and become plain ``nn.GRU``/``nn.Linear``/... modules, so only
  LayerNorm is ``source="reference"``. Varying (None) dims are dry-run on meta with the smallest stand-in
  size the rules accept (``_standin.py``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from ..errors import BackendError, SpecError, UnsupportedLayerError, where
from ..layers import (
    GELU,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    Leaf,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from ..shapes import Inference, Node
from ..spec import Concat, Residual, Sequential
from . import _torch_modules as tm
from . import _torch_seq as ts
from ._standin import stand_in
from ._torch_modules import ANY, CF, SPEC, Step
from .compiled import CompiledModel, NativeParam

__all__ = ["TorchModel"]

F32 = tm.F32
_LAZY_BN = {2: nn.LazyBatchNorm1d, 3: nn.LazyBatchNorm1d, 4: nn.LazyBatchNorm2d, 5: nn.LazyBatchNorm3d}


# --------------------------------------------------------------------------------------------- leaf builders
def _act(name: str | None) -> list[Step]:
    return [] if name is None else [tm.activation(name)]


def _dense(layer: Dense, rank: int | None) -> list[Step]:
    return [Step("", nn.LazyLinear(layer.units, bias=layer.use_bias, dtype=F32), SPEC)] + _act(layer.activation)


def _conv(layer: Conv1D | Conv2D, rank: int | None) -> list[Step]:
    steps, padding = [], layer.padding
    if padding == "same" and any(s > 1 for s in layer.stride):  # torch's padding="same" refuses stride > 1
        steps.append(Step("pad", tm.SamePad(layer.kernel_size, layer.stride, layer.dilation), CF))
        padding = 0
    elif padding == "same":  # stride 1: pads of d*(k-1) in total, whatever the size; odd pixel after
        pads = layer.pads((None,) * len(layer.kernel_size))
        if any(before != after for before, after in pads):  # torch's "same" would pad a copy and warn
            flat = tuple(p for pair in reversed(pads) for p in pair)
            steps.append(Step("pad", (nn.ZeroPad1d if isinstance(layer, Conv1D) else nn.ZeroPad2d)(flat), CF))
            padding = 0
    elif padding == "valid":
        padding = 0
    cls = nn.LazyConv1d if isinstance(layer, Conv1D) else nn.LazyConv2d
    conv = cls(layer.channels, layer.kernel_size, stride=layer.stride, padding=padding, dilation=layer.dilation,
               groups=layer.groups, bias=layer.use_bias, dtype=F32)
    return steps + [Step("", conv, CF)] + _act(layer.activation)


def _pool(layer: MaxPool2D | AvgPool2D, rank: int | None) -> list[Step]:
    if isinstance(layer, MaxPool2D):  # pads with -inf, floor mode
        return [Step("", nn.MaxPool2d(layer.pool_size, layer.strides, layer.padding), CF)]
    return [Step("", nn.AvgPool2d(layer.pool_size, layer.strides, layer.padding, ceil_mode=False,
                                  count_include_pad=True), CF)]


def _global_pool(layer: GlobalAvgPool2D, rank: int | None) -> list[Step]:
    return [Step("", nn.AdaptiveAvgPool2d(1), CF), Step("flatten", nn.Flatten(), CF, ANY)]


def _batch_norm(layer: BatchNorm, rank: int | None) -> list[Step]:
    # torch's BatchNorm classes differ only in the input rank they accept: the class is guessed from the spec
    # here and fixed from the real rank in _native_init. momentum and the unbiased running variance are
    # exactly the reference rule.
    cls = _LAZY_BN.get(rank, nn.LazyBatchNorm1d)  # type: ignore[arg-type]
    return [Step("", cls(eps=layer.eps, momentum=layer.momentum, dtype=F32), CF)]


def _layer_norm(layer: LayerNorm, rank: int | None) -> list[Step]:
    # torch has no lazy LayerNorm: its tensors stay uninitialized until _native_init sizes them from the rules
    ln = tm.uninitialized(nn.LayerNorm(1, eps=layer.eps, dtype=F32))
    ln.normalized_shape = (None,)  # type: ignore[assignment]  # shown as such until apply_init
    return [Step("", ln, SPEC)]


def _embedding(layer: Embedding, rank: int | None) -> list[Step]:
    # both dims are in the spec, but the table is allocated (and drawn, under the key) only in _native_init;
    # the stand-in _weight is an empty meta tensor, so nothing is drawn or allocated here
    table = torch.empty((layer.num_embeddings, layer.dim), device="meta", dtype=F32)
    return [Step("", tm.uninitialized(nn.Embedding(layer.num_embeddings, layer.dim, _weight=table)), SPEC, SPEC)]


def _activation(layer: Any, rank: int | None) -> list[Step]:
    step = tm.activation(layer.activation)
    return [step._replace(tag="")]


LEAVES: dict[type, Callable[[Any, int | None], list[Step]]] = {
    Dense: _dense, Conv1D: _conv, Conv2D: _conv, MaxPool2D: _pool, AvgPool2D: _pool, GlobalAvgPool2D: _global_pool,
    BatchNorm: _batch_norm, LayerNorm: _layer_norm, Embedding: _embedding,
    Dropout: lambda layer, rank: [Step("", nn.Dropout(layer.rate), ANY)],
    Flatten: lambda layer, rank: [Step("", nn.Flatten(), SPEC, ANY)],
    Identity: lambda layer, rank: [Step("", nn.Identity(), ANY)],
    Activation: _activation, ReLU: _activation, Sigmoid: _activation, Tanh: _activation, GELU: _activation,
    Softmax: _activation,
    **ts.SEQ_LEAVES,
}


def _rank_after(layer: Leaf, rank: int | None) -> int | None:
    """The output rank where the spec alone fixes it (only used to pick a BatchNorm class before init)."""
    if isinstance(layer, Conv1D):
        return 3
    if isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)):
        return 4
    if isinstance(layer, (GlobalAvgPool2D, Flatten)):
        return 2
    if isinstance(layer, Embedding):
        return None if rank is None else rank + 1
    return ts.rank_after(layer, rank)


def _segment(node: Node) -> str:
    return node.path.rsplit(".", 1)[-1]


# --------------------------------------------------------------------------------------------- tree builder
class _Builder:
    def __init__(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.first: dict[str, tuple[nn.Module, int | None]] = {}  # first occurrence path -> (module, out rank)
        self.leaf_steps: dict[str, list[Step]] = {}  # every leaf position -> its steps (modules shared with the net)

    def steps(self, node: Node, rank: int | None) -> tuple[list[Step], int | None]:
        target = node.tied_to or node
        layer = target.layer
        if node.tied_to is not None and not isinstance(layer, Leaf):
            module, out = self.first[target.path]
            return [Step("", module, SPEC, SPEC)], out
        if not isinstance(layer, Leaf):
            module, out = self.container(node, rank)
            self.first[node.path] = (module, out)
            return [Step("", module, SPEC, SPEC)], out
        steps = leaf_steps(node, layer, rank)
        if node.tied_to is not None:  # the same module object: parameters shared natively
            main = self.first[target.path][0]
            steps = [s._replace(module=main) if not s.tag else s for s in steps]
        else:
            self.first[node.path] = (next(s.module for s in steps if not s.tag), None)
        self.leaf_steps[node.path] = steps  # the very modules the net runs, for the position-by-position walk
        return steps, _rank_after(layer, rank)

    def container(self, node: Node, rank: int | None) -> tuple[nn.Module, int | None]:
        layer, arrange = node.layer, tm.arrange
        if isinstance(layer, Sequential):
            named: list[tuple[str, Step]] = []
            for child in node.children:
                steps, rank = self.steps(child, rank)
                named += [(_segment(child), s) for s in steps]
            return tm.sequential(arrange(named, self.channels_last)), rank
        if isinstance(layer, Residual):
            body, out = self.steps(node.children[0], rank)
            short = self.steps(node.children[1], rank)[0] if len(node.children) > 1 else []
            act = tm.activation(layer.activation).module if layer.activation else None
            return tm.Residual(arrange([("body", s) for s in body], self.channels_last),
                               arrange([("shortcut", s) for s in short], self.channels_last), act), out
        if isinstance(layer, Concat):
            branches, outs = [], []
            for child in node.children:
                steps, r = self.steps(child, rank)
                outs.append(r)
                branches.append(arrange([(_segment(child), s) for s in steps], self.channels_last))
            return tm.Concat(branches, -1 if self.channels_last else 1), outs[0]
        raise UnsupportedLayerError(f"{where(node.path, layer, 'torch')}: no torch module for this container")


def leaf_steps(node: Node, layer: Leaf, rank: int | None) -> list[Step]:
    fn = LEAVES.get(type(layer))
    if fn is None:
        raise UnsupportedLayerError(f"{where(node.path, layer, 'torch')}: no torch module for this layer type")
    return fn(layer, rank)


# --------------------------------------------------------------------------------------------- the model
class TorchModel(CompiledModel[nn.Module]):
    """A spec compiled for PyTorch; ``native`` is the ``nn.Module`` (an ``nn.Sequential``)."""

    backend = "torch"

    # ---------------------------------------------------------------- building and initializing
    def _new_native(self) -> nn.Module:
        builder = _Builder(self.spec.data_format == "channels_last")
        net = builder.container(self.root, None)[0]
        net.__dict__["_deferinit_steps"] = builder.leaf_steps  # a plain attribute: not a submodule, not state
        return net

    def _module(self, net: nn.Module, path: str) -> nn.Module:
        for seg in path.split("."):
            net = net._modules[tm.child_name(seg)]  # type: ignore[assignment]
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
            kernels = [(n.path, "weight") for n in self.root.leaves()
                       if isinstance(n.layer, (Dense, Conv1D, Conv2D, Embedding))]
            kernels += [(n.path, a) for n in self.root.leaves() for a in ts.kernel_attrs(n.layer)]
            return lambda net: [init(self._module(net, p).get_parameter(a)) for p, a in kernels]
        return lambda net: net.apply(init)

    def _reset(self, net: nn.Module) -> None:
        """torch's default init of every module, in the order the concrete path draws it: the non-lazy
        Embeddings first (a hand-written model draws them at construction), then the dry run's order."""
        mods = [self._module(net, n.path) for n in self.root.leaves()]
        for m in sorted(mods, key=lambda m: not isinstance(m, nn.Embedding)):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _native_init(self, net: nn.Module, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool) -> dict[str, NativeParam]:
        init_fn = self._init_fn(init)
        # Shapes are inferred on meta when abstract, and also when the input has varying (None) dims: a CPU
        # dry run would need a stand-in size for them that every window fits; meta needs no memory for any.
        on_meta = abstract or None in inference.report.input_shape
        device = torch.device("meta" if on_meta else "cpu")
        leaves = {n.path: n for n in self.root.leaves()}
        modules = {path: self._module(net, path) for path in leaves}
        with tm.seeded(key):
            if on_meta:
                tm.rehome(net, "meta")
            for node in self.root.walk():
                target = node.tied_to or node
                if isinstance(target.layer, BatchNorm):
                    self._fix_batch_norm(net, node, target, inference)
            for path, node in leaves.items():  # in plan order: the draws of a hand-written model's constructors
                module, layer = modules[path], node.layer
                if isinstance(layer, LayerNorm):
                    # torch has no lazy LayerNorm: its dim comes from the reference rules (source="reference")
                    module.normalized_shape = (inference.inputs[path][-1],)
                    tm.allocate(module, module.normalized_shape, device)
                elif isinstance(layer, Embedding):
                    tm.allocate(module, (layer.num_embeddings, layer.dim), device)
            net.eval()  # the dry run must not update BatchNorm statistics
            # The dry run walks the plan position by position with the net's own modules (the order of net(x), so
            # the lazy modules materialize and draw in the same order) and records the shape torch computed at
            # every position, in the spec's layout: the report's layer shapes (_native_layer_shapes).
            shapes: dict[str, Any] = {}
            with torch.no_grad(), (torch.device("meta") if on_meta else contextlib.nullcontext()):
                out = self._run(net, self.root, self._dry_input(x, inference, on_meta), shapes, shapes_only=True)
            shapes[""] = tuple(out.shape)
            net.__dict__["_deferinit_shapes"] = shapes
            if not abstract:
                if on_meta:
                    net.to_empty(device="cpu")
                    self._reset(net)
                if init_fn is not None:
                    with torch.no_grad():
                        init_fn(net)
        left = []
        for prefix, m in net.named_modules():
            if isinstance(m, LazyModuleMixin):
                left.append(prefix)
            left += [f"{prefix}.{k}" for k, t in (*m._parameters.items(), *m._buffers.items()) if is_lazy(t)]
        if left:
            raise BackendError(f"{self._who()}: the dry run left uninitialized modules or tensors: {left}")
        found, native_paths = {}, {}
        for name in inference.params:
            owner, _, pname = name.rpartition(".")
            layer = leaves[owner].layer
            attr = ts.native_attr(layer, pname)  # the canonical name, but for attention's d2l W_q.weight...
            t: Any = modules[owner]
            for part in attr.split("."):
                t = getattr(t, part)
            if owner not in native_paths:
                native_paths[owner] = ".".join(tm.child_name(s) for s in owner.split("."))
            if init_fn is not None and not abstract:
                self._check_init(name, t, inference.params[name].shape)
            # torch has no lazy LayerNorm: its dim came from the reference rules
            source = "reference" if isinstance(layer, LayerNorm) else "native"
            found[name] = NativeParam(f"{native_paths[owner]}.{attr}", tuple(t.shape), tuple(t.shape), source)
        return found

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
            if type(module) is not _LAZY_BN[rank]:
                module.__class__ = _LAZY_BN[rank]  # same state; the classes differ only in the rank they accept
        elif _LAZY_BN[len(inference.inputs[target.path])] is not _LAZY_BN[rank]:
            raise UnsupportedLayerError(
                f"{where(node.path, node.layer, 'torch')}: a BatchNorm shared between inputs of rank "
                f"{len(inference.inputs[target.path])} (at '{target.path}') and rank {rank} cannot be one torch "
                f"module (BatchNorm1d/2d/3d each accept fixed ranks); use two BatchNorm layers")

    def _dry_input(self, x: Any, inference: Inference, on_meta: bool) -> torch.Tensor:
        if on_meta:
            dtype = F32 if np.dtype(inference.report.input_dtype).kind == "f" else torch.int64
            return torch.empty(stand_in(self.spec, inference, self.root), dtype=dtype, device="meta")
        return tm.coerce(x).cpu() if x.dtype not in tm.READY else x.cpu()

    def _materialize(self, init: Any, key: Any) -> None:
        net = self._native
        init_fn = self._init_fn(init)
        with tm.seeded(key):
            net.to_empty(device="cpu")
            self._reset(net)
            if init_fn is not None:
                with torch.no_grad():
                    init_fn(net)
                for name, info in self.report.params.items():
                    self._check_init(name, self._tensor(name), info.shape)
        net.eval()

    def _abstract_snapshot(self) -> Callable[[], None]:
        # to_empty gives every module new tensor objects (meta and CPU tensors cannot share one), so putting the
        # old meta objects back makes the model abstract again, unallocated, whatever the init did to the new ones
        net = self._native
        saved = [(m, dict(m._parameters), dict(m._buffers)) for m in net.modules()]  # type: ignore[union-attr]
        shapes = {id(t): (tuple(t.shape), t.dtype) for _, ps, bs in saved for t in (*ps.values(), *bs.values())
                  if t is not None}
        training = net.training  # type: ignore[union-attr]

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
            net.train(training)  # type: ignore[union-attr]
        return undo

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
            return tuple(x.shape), tm.NP_DTYPES.get(x.dtype, np.dtype(object))
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
    def _forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        net = self._native
        if net.training != training:  # type: ignore[union-attr]
            net.train(training)  # type: ignore[union-attr]
        if x.dtype not in tm.READY:
            x = tm.coerce(x)
        return net(x)  # type: ignore[misc]

    def _tensor(self, name: str) -> torch.Tensor:
        owner, _, attr = self.report.params[name].native_name.rpartition(".")
        return getattr(self._native.get_submodule(owner), attr)  # type: ignore[union-attr]

    def _get_weights(self) -> dict[str, np.ndarray]:
        return {name: self._tensor(name).detach().to("cpu", F32).numpy() for name in self.report.params}

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
        with torch.no_grad():
            self._run(net, self.root, x if x.dtype in tm.READY else tm.coerce(x), record)  # type: ignore[arg-type]
        return record

    def _native_layer_shapes(self, native: nn.Module, x: Any, inference: Inference, abstract: bool) -> dict:
        return native.__dict__.pop("_deferinit_shapes")  # recorded by _native_init's dry run

    def _run(self, net: nn.Module, node: Node, x: torch.Tensor, record: dict | None,
             shapes_only: bool = False) -> torch.Tensor:
        target = node.tied_to or node
        layer = target.layer
        inner = record if node.tied_to is None else None
        if isinstance(layer, Sequential):
            for child in target.children:
                x = self._run(net, child, x, inner, shapes_only)
            y = x
        elif isinstance(layer, Residual):
            y = self._run(net, target.children[0], x, inner, shapes_only)
            y = y + (self._run(net, target.children[1], x, inner, shapes_only) if len(target.children) > 1 else x)
            y = tm.activation(layer.activation).module(y) if layer.activation else y
        elif isinstance(layer, Concat):
            y = torch.cat([self._run(net, c, x, inner, shapes_only) for c in target.children],
                          -1 if self.spec.data_format == "channels_last" else 1)
        else:
            steps = net.__dict__["_deferinit_steps"][node.path]
            y = x
            for _, module in tm.arrange([("x", s) for s in steps], self.spec.data_format == "channels_last"):
                y = module(y)
        if record is not None and node.path:
            record[node.path] = tuple(y.shape) if shapes_only else y.detach().to("cpu", F32).numpy()
        return y

