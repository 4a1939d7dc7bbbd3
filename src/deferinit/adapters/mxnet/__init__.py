"""MXNet (Gluon) backend: the spec as Gluon blocks, every shape found by Gluon's deferred initialization.

Leaves are ``gluon.nn`` layers created with their input dims at 0 (``in_units=0``, ``in_channels=0``), so Gluon
infers them: concretely, ``initialize()`` then the first forward (Gluon's whole-graph ``infer_shape`` inside its
cache build); abstractly, a symbolic trace and ``infer_shape``, which only sets each Parameter's shape and
allocates nothing (a few ms for 1.6e9 parameters). Gluon names parameters from process-wide counters
(``dense0_weight``), so canonical names map to Parameters through a table filled while building, never by parsing
names. Layouts already match the canonical ones (Dense ``(out, in)``, Conv OIHW). The native model is a hybridized
``HybridSequential``: the steady-state forward is Gluon's cached graph (``static_alloc``, ``static_shape``), one
graph per mode, which an inference call runs directly, without Gluon's per-call Python glue (see ``fastpath``);
BatchNorm follows PyTorch's running-statistics rule (MXNet's own differs, see there).
The package: ``leaves.py`` (the table of builders, and the builder signature a custom layer provides), ``modules.py``
(Gluon blocks of our own), ``graph.py`` (tracing, shape inference, the per-mode graph cache), ``fastpath.py`` (the
direct inference call, behind ``DEFERINIT_FASTPATH``), ``sequence.py`` (sequence and token layers), ``nan.py``
and ``initializers.py``. Every layer of the spec is supported.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any, Callable, Mapping

import numpy as np

with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon

from ...errors import UnsupportedLayerError, where
from ...extend import builder_for, builders
from ...merges import combine
from ...shapes import Inference, Node
from .. import tree
from .._standin import stand_in
from ..compiled import CompiledModel, NativeParam
from . import fastpath, graph, leaves, modules
from .initializers import Checked, check_init, initialize, seeded

__all__ = ["GluonModel", "leaves"]


# ------------------------------------------------------------------------------------------ structure
class _Table:
    """Canonical name -> Parameter and path -> block, kept beside the native model (a plain object, so Gluon's
    check for blocks hidden in containers does not look inside)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.blocks: dict[str, gluon.HybridBlock] = {}
        self.observer: graph.Observer | None = None


class _Builder(tree.Builder[gluon.HybridBlock]):
    """Gluon's containers for ``tree.build``. A container block is made before its children (``enter``), so that
    they are built inside its ``name_scope`` (Gluon's parameter names); a tied position is the same block, so Gluon
    shares its parameters."""

    backend = "mxnet"

    def __init__(self, fmt: str) -> None:
        self.fmt, self.table = fmt, _Table()
        self._open: dict[str, gluon.HybridBlock] = {}

    def enter(self, node: Node) -> Any:
        how = tree.kind(node)
        if how == "residual":
            block: gluon.HybridBlock = modules.Residual(node.layer.activation)  # type: ignore[attr-defined]
        elif how == "concat":
            block = modules.Concat(1 if self.fmt == "channels_first" else -1)
        elif how == "merge":
            block = modules.Merge(node.layer.op)  # type: ignore[attr-defined]
        else:
            block = modules.Sequential()
        self._open[node.path] = block
        return block.name_scope()

    def leaf(self, node: Node) -> gluon.HybridBlock:
        builder = builder_for("mxnet", type(node.layer))
        if builder is None:
            raise UnsupportedLayerError(f"{where(node.path, node.layer, 'mxnet')} has no Gluon builder; supported: "
                                        + ", ".join(sorted(t.__name__ for t in builders("mxnet"))))
        try:
            block, params = builder(node.layer, self.fmt)
        except UnsupportedLayerError as exc:  # a builder refusing an option it cannot express: say where
            raise UnsupportedLayerError(f"{where(node.path, node.layer, 'mxnet')}: {exc}") from None
        for pname, param in params.items():
            self.table.params[node.param_name(pname)] = param
        return block

    def sequential(self, node: Node, children: list[tuple[str, gluon.HybridBlock]]) -> gluon.HybridBlock:
        block = self._open.pop(node.path)
        block.add(*(child for _, child in children))
        return block

    def concat(self, node: Node, branches: list[tuple[str, gluon.HybridBlock]]) -> gluon.HybridBlock:
        return self.sequential(node, branches)

    def merge(self, node: Node, branches: list[tuple[str, gluon.HybridBlock]]) -> gluon.HybridBlock:
        return self.sequential(node, branches)

    def residual(self, node: Node, body: gluon.HybridBlock, shortcut: gluon.HybridBlock | None) -> gluon.HybridBlock:
        block = self._open.pop(node.path)
        block.body = body
        if shortcut is not None:
            block.shortcut = shortcut
        return block


def _build(root: Node, fmt: str) -> modules.Sequential:
    builder = _Builder(fmt)
    net, built = tree.build(root, builder)
    builder.table.blocks = built
    net._deferinit = builder.table
    return net  # type: ignore[return-value]


def _batch_norm_ranks(table: _Table, norms: tuple[Node, ...], inference: Inference) -> None:
    """Tells each BatchNorm block its input's rank, from the rules (``modules.BatchNorm.rank``); a block tied
    across ranks (refused at a call by ``checks.batch_norm_rank_error``) is left to ask MXNet."""
    ranks: dict[int, tuple[Any, set[int]]] = {}
    for node in norms:
        block = table.blocks.get(node.path) or table.blocks.get((node.tied_to or node).path)
        if isinstance(block, modules.BatchNorm):
            ranks.setdefault(id(block), (block, set()))[1].add(len(inference.inputs[node.path]))
    for block, found in ranks.values():
        block.rank = next(iter(found)) if len(found) == 1 else None


class _Runner(tree.Runner[Any]):
    """NDArray operations for ``tree.run`` (``intermediates``): each leaf is its block called alone (the children
    are imperative, see ``_hybridize``)."""

    def __init__(self, table: _Table, fmt: str) -> None:
        self.table, self.fmt = table, fmt

    def leaf(self, node: Node, x: Any) -> Any:
        return self.table.blocks[node.path](x)

    def activation(self, name: str, x: Any) -> Any:
        return modules.activate(mx.nd, name, x)

    def concat(self, xs: list[Any], axis: int) -> Any:
        return mx.nd.concat(*xs, dim=axis)

    def merge(self, op: str, xs: list[Any]) -> Any:
        return combine(op, xs, mx.nd.broadcast_add, mx.nd.broadcast_mul)

    def channel_axis(self, rank: int) -> int:
        return 1 if self.fmt == "channels_first" else rank - 1

    def record(self, y: Any) -> Any:
        return y.asnumpy()


def _hybridize(net: modules.Sequential) -> None:
    """The root runs as one cached graph; its children stay imperative so that calling one on its own (as
    ``intermediates`` does) does not build and hold a static graph per block. ``static_shape=True`` makes the
    ``CachedOp`` set up its operators once (measured: LeNet batch 1 about 15% faster, ResNet-18 8%); a new input
    shape is still allowed (shapes are inferred on every call either way) and re-plans the graph's memory and
    operators once, as a new shape re-plans the memory of a ``static_alloc`` graph anyway."""
    net.hybridize(static_alloc=True, static_shape=True)
    for child in net._children.values():
        child.hybridize(False)


# ------------------------------------------------------------------------------------------ the model
class GluonModel(CompiledModel[modules.Sequential]):
    """The spec as a hybridized Gluon ``HybridSequential``. ``init``: None (Gluon's default: weights
    ``Uniform(0.07)``, biases and BN shifts zero, scales one) or an ``mx.init`` initializer; ``key``: an int seed."""

    backend = "mxnet"
    # a build without large-tensor support (the pip wheels) refuses 2**31 - 1 elements or more in one tensor with
    # "Size of tensor you are trying to allocate is larger than 2^31 elements" (measured, mxnet 1.9.1)
    max_elements = None if mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE") else 2**31 - 2
    size_note = "MXNet built without USE_INT64_TENSOR_SIZE"

    def _new_native(self) -> modules.Sequential:
        return _build(self.root, self.spec.data_format)

    def _native_init(self, native: modules.Sequential, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        check_init(init)
        table: _Table = native._deferinit
        _batch_norm_ranks(table, self._batch_norms, inference)
        # the report's layer shapes: the symbols each position returns in the trace below (see graph.Observer)
        observer = table.observer = graph.Observer({p: table.blocks[p] for p in inference.report.layers})
        if abstract:  # a symbolic trace and infer_shape: Parameter shapes only, nothing allocated
            graph.infer_parameter_shapes(native, stand_in(self.spec, inference, self.root), observer)
        else:
            with seeded(key):
                initialize(native, self._checking(native, init))
                _hybridize(native)
                with autograd.pause(train_mode=False), observer:
                    y = native(x)  # Gluon's deferred initialization: whole-graph infer_shape, then allocation
            observer.shapes = {"": tuple(y.shape)}
        return {name: NativeParam(p.name, tuple(p.shape), tuple(p.shape)) for name, p in table.params.items()}

    def _native_layer_shapes(self, native: modules.Sequential, x: Any, inference: Inference,
                             abstract: bool) -> dict[str, tuple]:
        # Gluon runs every layer in the spec's own layout (a channels-last convolution transposes in and back out
        # inside its ChannelsFirst block), so the shapes MXNet infers need no conversion.
        table: _Table = native._deferinit
        observer, table.observer = table.observer, None
        if observer is None:  # pragma: no cover - _native_init always leaves one
            return {}
        shapes = dict(observer.shapes)  # abstract: all found by the one infer_shape; concrete: the dry run's output
        if not abstract:  # the dry run's trace, through MXNet's symbolic shape inference (nothing runs), once
            shapes.update(self._layer_shapes_once(inference, abstract,
                                                  lambda: graph.observed_shapes(observer, tuple(x.shape))))
        return shapes

    def _materialize(self, init: Any, key: Any) -> None:
        native = self.native
        check_init(init)
        with seeded(key):  # shapes are known: initialize() allocates and fills at once
            initialize(native, self._checking(native, init))
        _hybridize(native)

    def _checking(self, native: modules.Sequential, init: Any) -> Any:
        if init is None:
            return None
        return Checked(init, {p.name: name for name, p in native._deferinit.params.items()}, self._who())

    def _abstract_snapshot(self) -> Callable[[], None]:
        # an abstract Gluon Parameter is one with a shape and no arrays: its state is its own attributes
        saved = [(p, dict(p.__dict__)) for p in self.native.collect_params().values()]

        def undo() -> None:
            for p, state in saved:
                p.__dict__.clear()
                p.__dict__.update(state)
        return undo

    def _to_native(self, x: Any) -> mx.nd.NDArray:
        arr = np.asarray(x)
        return mx.nd.array(arr, dtype=arr.dtype)  # mx.nd.array alone would make integer indices float32

    def _is_native(self, x: Any) -> bool:
        return isinstance(x, mx.nd.NDArray)

    def _shape_dtype(self, x: Any) -> tuple[tuple, Any]:
        return tuple(x.shape), np.dtype(x.dtype)

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.asnumpy() if isinstance(y, mx.nd.NDArray) else np.asarray(y)

    def _signature(self, x: mx.nd.NDArray) -> tuple:
        # the per-call cache key: NDArray.shape is already a tuple and the numpy scalar type hashes (each is a
        # ctypes call of about 1 us; the base class's tuple(shape), str(dtype) add as much again)
        return (x.shape, x.dtype)

    def _forward(self, x: mx.nd.NDArray, training: bool) -> mx.nd.NDArray:
        if x.dtype in (np.float64, np.float16):
            x = x.astype(np.float32)
        if training:
            with autograd.train_mode():
                return self._native(x)  # type: ignore[misc]
        if autograd.is_training():  # called inside the user's autograd.record(): inference is what was asked
            with autograd.predict_mode():
                return self._native(x)  # type: ignore[misc]
        y = fastpath.call_inference(self._native, x)  # the cached inference graph without Gluon's Python glue
        return self._native(x) if y is None else y  # type: ignore[misc]

    def _gradients(self, x: mx.nd.NDArray, training: bool) -> dict[str, np.ndarray]:
        if x.dtype in (np.float64, np.float16):
            x = x.astype(np.float32)
        params = self._native._deferinit.params  # type: ignore[union-attr]
        trainable = [name for name, info in self.report.params.items() if info.trainable]
        if not trainable:  # MXNet's backward refuses a graph with nothing to differentiate
            return {}
        # Always a training-mode pass (see graph.inference_layers for why); for inference-mode gradients BatchNorm
        # and Dropout are held at their inference behaviour.
        with nullcontext() if training else graph.inference_layers():
            with autograd.record(train_mode=True):
                total = self._native(x).sum()  # type: ignore[misc]
            total.backward(train_mode=True)
        return {name: params[name].grad().asnumpy() for name in trainable}

    def _intermediates(self, x: mx.nd.NDArray) -> dict[str, np.ndarray]:
        """Every position's inference-mode output, computed as ``_gradients`` computes it: a training-mode pass with
        BatchNorm and Dropout held at their inference behaviour. MXNet's oneDNN kernels round differently in training
        and inference mode, so a value within rounding of a ReLU's kink can sit on either side depending on the mode
        (zoo_unet, measured: -1.9e-8 in the training-mode pass that gradients take, 4.4e-9 in an inference-mode
        pass); the parity comparison reads which branch each framework's gradient took from these outputs
        (``parity_branches``), so they must be the gradient pass's. This pass's model output equals the hybridized
        training graph's exactly (measured on zoo_unet); the values are the inference outputs within rounding."""
        record: dict[str, Any] = {}
        runner = _Runner(self._native._deferinit, self.spec.data_format)  # type: ignore[union-attr]
        with graph.inference_layers(), autograd.pause(train_mode=True):
            tree.run(self.root, x, runner, record)
        return record

    def _get_weights(self) -> dict[str, np.ndarray]:
        params = self._native._deferinit.params  # type: ignore[union-attr]
        return {name: params[name].data().asnumpy() for name in self.report.params}

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        # Not Parameter.set_data: after an inference forward oneDNN may hold a conv weight in its own blocked
        # layout, which an in-place copy refuses (``to.IsDefaultData()``); a re-initialization gives fresh arrays.
        params = self._native._deferinit.params  # type: ignore[union-attr]
        for name in self.report.params:
            param = params[name]
            value = mx.init.Constant(mx.nd.array(weights[name], dtype=np.float32))
            param.initialize(value, ctx=param.list_ctx(), force_reinit=True)
