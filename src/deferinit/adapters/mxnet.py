"""MXNet (Gluon) backend: the spec as Gluon blocks, every shape found by Gluon's deferred initialization.

Leaves are ``gluon.nn`` layers created with their input dims at 0 (``in_units=0``, ``in_channels=0``), so Gluon
infers them: concretely, ``initialize()`` then the first forward (Gluon's whole-graph ``infer_shape`` inside its
cache build); abstractly, a symbolic trace and ``infer_shape``, which only sets each Parameter's shape and
allocates nothing (a few ms for 1.6e9 parameters). Gluon names parameters from process-wide counters
(``dense0_weight``), so canonical names map to Parameters through a table filled while building, never by parsing
names. Layouts already match the canonical ones (Dense ``(out, in)``, Conv OIHW). The native model is a hybridized
``HybridSequential``: the steady-state forward is Gluon's cached graph (``static_alloc``, ``static_shape``), one
graph per mode, which an inference call runs directly, without Gluon's per-call Python glue (see ``_mxnet_blocks``);
BatchNorm follows PyTorch's running-statistics rule (MXNet's own differs, see there).
Sequence and token layers are built in ``_mxnet_seq``. Every layer of the spec is supported.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Mapping

import numpy as np

with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon import nn

from ..errors import DTypeError, ShapeMismatchError, SpecError, UnsupportedLayerError, where
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
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from ..shapes import Inference, Node
from ..spec import Concat, Residual, Sequential
from . import _mxnet_blocks as blocks
from . import _mxnet_nan as nan
from ._mxnet_seq import SEQUENCE_LEAVES
from ._standin import stand_in
from .compiled import CompiledModel, NativeParam

__all__ = ["GluonModel"]

Built = tuple[gluon.HybridBlock, dict[str, Any]]  # the block for a position, and its Parameters by spec name


# ------------------------------------------------------------------------------------------ leaf builders
def _split_activation(name: str | None) -> tuple[str | None, str | None]:
    """Gluon's Dense/Conv take sigmoid/tanh themselves; others follow as a block of their own (relu: _mxnet_nan)."""
    return (name, None) if name in (None, "sigmoid", "tanh") else (None, name)


def _then(block: gluon.HybridBlock, activation: str | None) -> gluon.HybridBlock:
    if activation is None:
        return block
    seq = nn.HybridSequential()
    seq.add(block, blocks.activation_block(activation))
    return seq


def _params(block: gluon.HybridBlock, **names: str | None) -> dict[str, Any]:
    return {spec_name: getattr(block, attr) for spec_name, attr in names.items() if attr is not None}


def _dense(layer: Dense, fmt: str) -> Built:
    own, after = _split_activation(layer.activation)
    dense = nn.Dense(layer.units, activation=own, use_bias=layer.use_bias, flatten=False, in_units=0)
    return _then(dense, after), _params(dense, weight="weight", bias="bias" if layer.use_bias else None)


def _conv_padding(layer: Conv1D | Conv2D) -> tuple[Any, blocks.Pad | None]:
    """Gluon's own (symmetric) padding where it can express the spec's, else an explicit Pad before a valid conv."""
    if not isinstance(layer.padding, str):
        return layer.padding, None
    if layer.padding == "valid":
        return 0, None
    if any(s > 1 for s in layer.stride):  # TensorFlow's "same" with a stride: the pads depend on the input size
        return 0, blocks.Pad(layer.pads, layer.ndim)
    pads = layer.pads((None,) * layer.ndim)  # stride 1: total = dilated kernel - 1, the odd pixel after
    if all(b == a for b, a in pads):
        return tuple(b for b, _ in pads), None
    return 0, blocks.Pad(pads, layer.ndim)


def _conv(layer: Conv1D | Conv2D, fmt: str) -> Built:
    own, after = _split_activation(layer.activation)
    padding, pad = _conv_padding(layer)
    cls, layout = (nn.Conv1D, "NCW") if layer.ndim == 1 else (nn.Conv2D, "NCHW")
    conv = cls(layer.channels, layer.kernel_size, strides=layer.stride, padding=padding, dilation=layer.dilation,
               groups=layer.groups, layout=layout, activation=own, use_bias=layer.use_bias, in_channels=0)
    block: gluon.HybridBlock = conv
    if pad is not None:
        block = nn.HybridSequential()
        block.add(pad, conv)
    if fmt == "channels_last":
        block = blocks.ChannelsFirst(block, layer.ndim)
    return _then(block, after), _params(conv, weight="weight", bias="bias" if layer.use_bias else None)


def _layout(fmt: str) -> str:
    return "NCHW" if fmt == "channels_first" else "NHWC"


def _pool(layer: MaxPool2D | AvgPool2D, fmt: str) -> Built:
    common = dict(strides=layer.strides, padding=layer.padding, layout=_layout(fmt), ceil_mode=False)
    if isinstance(layer, MaxPool2D):
        return nan.MaxPool2D(layer.pool_size, **common), {}
    return nn.AvgPool2D(layer.pool_size, count_include_pad=True, **common), {}


def _global_avg_pool(layer: GlobalAvgPool2D, fmt: str) -> Built:
    seq = nn.HybridSequential()
    seq.add(nn.GlobalAvgPool2D(layout=_layout(fmt)), nn.Flatten())
    return seq, {}


def _batch_norm(layer: BatchNorm, fmt: str) -> Built:
    bn = blocks.BatchNorm(axis=1 if fmt == "channels_first" else -1, momentum=layer.momentum, epsilon=layer.eps)
    return bn, _params(bn, weight="gamma", bias="beta", running_mean="running_mean", running_var="running_var")


def _layer_norm(layer: LayerNorm, fmt: str) -> Built:
    ln = nn.LayerNorm(axis=-1, epsilon=layer.eps, in_channels=0)
    return ln, _params(ln, weight="gamma", bias="beta")


def _embedding(layer: Embedding, fmt: str) -> Built:
    emb = nn.Embedding(layer.num_embeddings, layer.dim)  # both dims are the spec's: nothing to infer
    return emb, _params(emb, weight="weight")


def _activation(layer: Any, fmt: str) -> Built:
    return blocks.activation_block(layer.activation), {}


LEAVES: dict[type, Callable[[Any, str], Built]] = {
    Dense: _dense, Conv1D: _conv, Conv2D: _conv, MaxPool2D: _pool, AvgPool2D: _pool,
    GlobalAvgPool2D: _global_avg_pool, BatchNorm: _batch_norm, LayerNorm: _layer_norm,
    Dropout: lambda layer, fmt: (blocks.Dropout(layer.rate), {}), Flatten: lambda layer, fmt: (nn.Flatten(), {}),
    Identity: lambda layer, fmt: (blocks.identity(), {}), Activation: _activation, ReLU: _activation,
    Sigmoid: _activation, Tanh: _activation, GELU: _activation, Softmax: _activation, Embedding: _embedding,
    **SEQUENCE_LEAVES,
}


# ------------------------------------------------------------------------------------------ structure
class _Table:
    """Canonical name -> Parameter and path -> block, kept beside the native model (a plain object, so Gluon's
    check for blocks hidden in containers does not look inside)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.blocks: dict[str, gluon.HybridBlock] = {}


def _build(root: Node, fmt: str) -> blocks.Sequential:
    table = _Table()

    def build(node: Node) -> gluon.HybridBlock:
        if node.tied_to is not None:  # the same layer again: the same block, so Gluon shares its parameters
            block = table.blocks[node.tied_to.path]
        else:
            block = leaf(node) if _is_leaf(node) else container(node)
        table.blocks[node.path] = block
        return block

    def container(node: Node, block: gluon.HybridBlock | None = None) -> gluon.HybridBlock:
        layer = node.layer
        if block is None:
            if isinstance(layer, Residual):
                block = blocks.Residual(layer.activation)
            elif isinstance(layer, Concat):
                block = blocks.Concat(1 if fmt == "channels_first" else -1)
            else:
                block = blocks.Sequential()
        with block.name_scope():
            kids = [build(child) for child in node.children]
        if isinstance(layer, Residual):
            block.body = kids[0]
            if len(kids) > 1:
                block.shortcut = kids[1]
        else:
            block.add(*kids)
        return block

    def leaf(node: Node) -> gluon.HybridBlock:
        builder = LEAVES.get(type(node.layer))
        if builder is None:
            raise UnsupportedLayerError(f"{where(node.path, node.layer, 'mxnet')} has no Gluon builder; supported: "
                                        + ", ".join(sorted(t.__name__ for t in LEAVES)))
        block, params = builder(node.layer, fmt)
        for pname, param in params.items():
            table.params[node.param_name(pname)] = param
        return block

    net = container(root, blocks.Sequential())
    net._deferinit = table
    return net


def _is_leaf(node: Node) -> bool:
    return not isinstance(node.layer, (Sequential, Residual, Concat))


@contextmanager
def _seeded(key: Any) -> Iterator[None]:
    """``mx.random.seed(key)`` for Gluon's initializers (a few, e.g. Orthogonal, draw from numpy's global generator:
    seeded too, and restored afterwards so the caller's numpy stream is untouched)."""
    if key is None:
        yield
        return
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise DTypeError(f"key: the mxnet backend expected an int seed or None, received {type(key).__name__}")
    state = np.random.get_state()
    mx.random.seed(int(key) & 0x7FFFFFFF)
    np.random.seed(int(key) & 0xFFFFFFFF)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_init(init: Any) -> None:
    if init is not None and not isinstance(init, mx.init.Initializer):
        raise SpecError(f"init: the mxnet backend expected None, a portable initializer or an mx.init initializer "
                        f"(e.g. mx.init.Xavier()), received {init!r}")


class _Checked(mx.init.Initializer):
    """A user's initializer whose failures to fill a parameter name it: Gluon broadcasts the values an initializer
    gives into the parameter's array, so values of another shape fail there, as numpy's broadcasting error."""

    def __init__(self, init: Any, names: dict[str, str], who: str) -> None:
        super().__init__()
        self._init, self._names, self._who = init, names, who

    def _init_weight(self, desc: Any, arr: Any) -> None:  # what Gluon calls for every Parameter it initializes
        try:
            self._init._init_weight(desc, arr)
        except ValueError as exc:
            name = self._names.get(str(desc))
            if name is None or not any(w in str(exc) for w in ("broadcast", "shape")):
                raise
            raise ShapeMismatchError(f"{self._who}: the initializer gave parameter '{name}' (native '{desc}') values "
                                     f"that do not fit its shape {tuple(arr.shape)} ({str(exc).splitlines()[0]}); "
                                     f"nothing was changed") from exc


def _initialize(net: blocks.Sequential, init: Any) -> None:
    if init is None:
        net.initialize()  # Gluon's default: Uniform(0.07) weights, each layer's own bias/scale initializers
    else:
        net.initialize(init)


def _hybridize(net: blocks.Sequential) -> None:
    """The root runs as one cached graph; its children stay imperative so that calling one on its own (as
    ``intermediates`` does) does not build and hold a static graph per block. ``static_shape=True`` makes the
    ``CachedOp`` set up its operators once (measured: LeNet batch 1 about 15% faster, ResNet-18 8%); a new input
    shape is still allowed (shapes are inferred on every call either way) and re-plans the graph's memory and
    operators once, as a new shape re-plans the memory of a ``static_alloc`` graph anyway."""
    net.hybridize(static_alloc=True, static_shape=True)
    for child in net._children.values():
        child.hybridize(False)


# ------------------------------------------------------------------------------------------ the model
class GluonModel(CompiledModel[blocks.Sequential]):
    """The spec as a hybridized Gluon ``HybridSequential``. ``init``: None (Gluon's default: weights
    ``Uniform(0.07)``, biases and BN shifts zero, scales one) or an ``mx.init`` initializer; ``key``: an int seed."""

    backend = "mxnet"
    # a build without large-tensor support (the pip wheels) refuses 2**31 - 1 elements or more in one tensor with
    # "Size of tensor you are trying to allocate is larger than 2^31 elements" (measured, mxnet 1.9.1)
    max_elements = None if mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE") else 2**31 - 2
    size_note = "MXNet built without USE_INT64_TENSOR_SIZE"

    def _new_native(self) -> blocks.Sequential:
        return _build(self.root, self.spec.data_format)

    def _native_init(self, native: blocks.Sequential, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool) -> dict[str, NativeParam]:
        _check_init(init)
        if abstract:  # a symbolic trace and infer_shape: Parameter shapes only, nothing allocated
            blocks.infer_parameter_shapes(native, stand_in(self.spec, inference, self.root))
        else:
            with _seeded(key):
                _initialize(native, self._checking(native, init))
                _hybridize(native)
                with autograd.pause(train_mode=False):
                    native(x)  # Gluon's deferred initialization: whole-graph infer_shape, then allocation
        table: _Table = native._deferinit
        return {name: NativeParam(p.name, tuple(p.shape), tuple(p.shape)) for name, p in table.params.items()}

    def _native_layer_shapes(self, native: blocks.Sequential, x: Any, inference: Inference, abstract: bool) -> dict:
        """Gluon's own shape inference at every layer position: the position-by-position walk of
        ``_intermediates`` traced on a symbol, every position's output grouped, one ``infer_shape`` (nothing
        allocated, nothing computed). A varying dim gets the stand-in size MXNet needs (``_standin.py``); the
        compiled model reports it as None again."""
        table: _Table = native._deferinit
        shape = stand_in(self.spec, inference, self.root)
        record: dict[str, Any] = {}

        def run(node: Node, y: Any) -> Any:
            layer = node.layer
            if node.tied_to is None and isinstance(layer, Sequential):
                for child in node.children:
                    y = run(child, y)
                out = y
            else:
                if node.tied_to is None and isinstance(layer, (Residual, Concat)):
                    for child in node.children:
                        run(child, y)
                out = table.blocks[node.path](y)
            record[node.path] = out
            return out

        with blocks.tracing({"data": shape}), autograd.predict_mode():
            y = mx.sym.var("data")
            for child in self.root.children:
                y = run(child, y)
            names = list(record)
            _, outs, _ = mx.sym.Group([record[n] for n in names] + [y]).infer_shape_partial(data=shape)
        return {name: tuple(out) for name, out in zip([*names, ""], outs)}

    def _materialize(self, init: Any, key: Any) -> None:
        native = self.native
        _check_init(init)
        with _seeded(key):  # shapes are known: initialize() allocates and fills at once
            _initialize(native, self._checking(native, init))
        _hybridize(native)

    def _checking(self, native: blocks.Sequential, init: Any) -> Any:
        if init is None:
            return None
        return _Checked(init, {p.name: name for name, p in native._deferinit.params.items()}, self._who())

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
        y = blocks.call_inference(self._native, x)  # the cached inference graph without Gluon's Python glue
        return self._native(x) if y is None else y  # type: ignore[misc]

    def _gradients(self, x: mx.nd.NDArray, training: bool) -> dict[str, np.ndarray]:
        if x.dtype in (np.float64, np.float16):
            x = x.astype(np.float32)
        params = self._native._deferinit.params  # type: ignore[union-attr]
        trainable = [name for name, info in self.report.params.items() if info.trainable]
        if not trainable:  # MXNet's backward refuses a graph with nothing to differentiate
            return {}
        # Always a training-mode pass (see blocks.inference_layers for why); for inference-mode gradients BatchNorm
        # and Dropout are held at their inference behaviour.
        with nullcontext() if training else blocks.inference_layers():
            with autograd.record(train_mode=True):
                total = self._native(x).sum()  # type: ignore[misc]
            total.backward(train_mode=True)
        return {name: params[name].grad().asnumpy() for name in trainable}

    def _intermediates(self, x: mx.nd.NDArray) -> dict[str, np.ndarray]:
        table: _Table = self._native._deferinit  # type: ignore[union-attr]
        record: dict[str, Any] = {}

        def run(node: Node, x: Any) -> Any:
            block = table.blocks[node.path]
            layer = node.layer
            if node.tied_to is None and isinstance(layer, Sequential):
                for child in node.children:
                    x = run(child, x)
                y = x
            else:
                if node.tied_to is None and isinstance(layer, (Residual, Concat)):
                    for child in node.children:
                        run(child, x)
                y = block(x)  # children are imperative (see _hybridize): this runs the block alone
            record[node.path] = y
            return y

        with autograd.pause(train_mode=False):
            for child in self.root.children:
                x = run(child, x)
        return {path: y.asnumpy() for path, y in record.items()}

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
