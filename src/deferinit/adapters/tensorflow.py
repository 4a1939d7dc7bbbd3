"""The TensorFlow backend: Keras 3 layers whose shapes Keras infers itself when the model is first built.

A spec becomes an ordinary ``keras.Sequential`` tree (spec ``Sequential``/``LazyModel``), with two small
container layers for ``Residual`` and ``Concat``; each leaf is one Keras layer (a builder per spec class in
``LEAVES``): stock Keras layers wherever Keras has one (``GRU``, ``LSTM``, ``SimpleRNN``, ``Bidirectional``,
``MultiHeadAttention``, ``Reshape``...), small ``build()``-on-first-call layers otherwise (``_tensorflow_seq``).
Nothing has a shape until Keras builds the model on its first call (``apply_init``), or builds it
symbolically with no values (``abstract=True``). The containers build their children from the input shape
(Keras's advice for containers, ``build_child``) rather than by tracing their calls in scratch graphs:
a ResNet-18 dry run takes 0.7 s where the same model written with subclassed Keras blocks takes 2.2 s.

Names: Keras names variables from process-wide counters unless layers are named, so every layer is named by
its canonical path (``"3.body.1"``; Keras allows dots, only ``/`` is refused) and the adapter maps canonical
names to Keras variables by STRUCTURE (a table from canonical name to the variable object, filled from the
layers it built), never by parsing names. ``native_name`` is the variable's ``.path``.

Layouts (``_tensorflow_params``): Dense kernel ``(in, out)``, Conv kernel ``(*kernel, in // groups, out)``,
transposed to the canonical ``(out, in)`` / ``(out, in // groups, *kernel)``; recurrent kernels ``(in, G*H)``
in Keras's gate order; attention kernels ``(D, heads, head_dim)``. Keras's SimpleRNN/LSTM keep one bias
per gate, which holds ``bias_ih + bias_hh``: the report counts PyTorch's two (``bias_hh`` exported as zero),
so its totals exceed Keras's ``count_params()`` by one bias per recurrent cell.

Data format: Keras layers take ``data_format=``, so every spatial layer runs in the spec's own layout, as a
hand-written Keras model for that layout would. TensorFlow's own CPU convolution takes only NHWC; oneDNN
(default on x86 Linux) and GPUs also take NCHW, so whether channels_first convolutions can run natively is
asked of TensorFlow once, and where they cannot they run channels_last between two transposes (measured on
a ResNet-18-like net, batch 1 at 96x96: ~15 ms either way within noise, up to ~25 % more at worst). Keras
itself transposes around channels_first pooling, which TensorFlow's CPU kernels lack.

Forward: ``__call__`` runs a cached ``tf.function`` over the model call (one for inference, one for training,
per input rank, with ``reduce_retracing`` so new batch, spatial or sequence sizes share one relaxed trace); a
float32 tensor reaches it after one dict lookup (about 1 us over the base class's 3-4 us of checks). Measured on
the same net: 15-17 ms, the same as a hand-written ``tf.function`` and ``predict_on_batch``; the eager Keras
call takes 60-70 ms.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SpecError, UnsupportedLayerError
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
from ..layers_seq import (
    GRU,
    LSTM,
    RNN,
    ClassToken,
    MultiHeadAttention,
    OneHot,
    Permute,
    PositionalEncoding,
    PositionEmbedding,
    Reshape,
    Scale,
    Take,
)
from ..shapes import Inference, Node
from ..spec import Concat, Residual, Sequential
from .compiled import CompiledModel, NativeParam

# isort: off
# Keras 3 fixes its backend at first import: _tensorflow_layers checks KERAS_BACKEND (a clear error if it names
# another backend) and sets it before importing keras, so it must come first.
from . import _tensorflow_layers as kl
from . import _tensorflow_nan as kn
from . import _tensorflow_seq as ks
from ._tensorflow_params import PARAMS, Layout, initializer_slots, variable_slots
import keras
import tensorflow as tf
from keras.src.backend.common import global_state
# isort: on

__all__ = ["KerasModel", "LEAVES", "PARAMS"]


# ============================================================================================ leaf builders
def _dense(node: Node, fmt: str) -> Any:
    s: Dense = node.layer  # type: ignore[assignment]
    return keras.layers.Dense(s.units, activation=kn.activation(s.activation), use_bias=s.use_bias, name=node.path)


def _conv(node: Node, fmt: str) -> Any:
    s = node.layer
    cls = kl.Conv1D if isinstance(s, Conv1D) else kl.Conv2D
    return cls(filters=s.channels, kernel_size=s.kernel_size, spec_strides=s.stride, spec_padding=s.padding,
               dilation_rate=s.dilation, groups=s.groups, activation=kn.activation(s.activation), use_bias=s.use_bias,
               data_format=fmt, name=node.path)


def _pool(node: Node, fmt: str) -> Any:
    s = node.layer
    cls = kn.MaxPool2D if isinstance(s, MaxPool2D) else kl.AvgPool2D
    return cls(pool_size=s.pool_size, strides=s.strides, pads=s.padding, data_format=fmt, name=node.path)


def _batch_norm(node: Node, fmt: str) -> Any:
    s: BatchNorm = node.layer  # type: ignore[assignment]
    # the channel axis: 1 for channels_first (and for (N, C) data either way), last for channels_last
    return kl.BatchNorm(axis=1 if fmt == "channels_first" else -1, momentum=1.0 - s.momentum, epsilon=s.eps,
                        name=node.path)


def _flatten(node: Node, fmt: str) -> Any:
    # Keras's Flatten(data_format="channels_first") moves channels last before flattening (to keep weights
    # portable between formats); the spec flattens the data in its own order, which is a plain reshape.
    return keras.layers.Flatten(data_format="channels_last", name=node.path)


def _activation(node: Node, fmt: str) -> Any:
    return keras.layers.Activation(kn.activation(node.layer.activation), name=node.path)  # Keras's gelu is the erf form


def _recurrent(node: Node, fmt: str) -> Any:
    return ks.recurrent(node.layer, node.path)


def _attention(node: Node, fmt: str) -> Any:
    s: MultiHeadAttention = node.layer  # type: ignore[assignment]
    return ks.SelfAttention(num_heads=s.num_heads, key_dim=s.head_dim, use_bias=s.use_bias,
                            output_shape=s.num_hiddens, dropout=s.dropout, name=node.path)


LEAVES: dict[type, Callable[[Node, str], Any]] = {
    Dense: _dense, Conv1D: _conv, Conv2D: _conv, MaxPool2D: _pool, AvgPool2D: _pool, BatchNorm: _batch_norm,
    GlobalAvgPool2D: lambda node, fmt: keras.layers.GlobalAveragePooling2D(data_format=fmt, name=node.path),
    LayerNorm: lambda node, fmt: keras.layers.LayerNormalization(axis=-1, epsilon=node.layer.eps, name=node.path),
    Dropout: lambda node, fmt: keras.layers.Dropout(node.layer.rate, name=node.path),
    Flatten: _flatten, Identity: lambda node, fmt: keras.layers.Identity(name=node.path),
    Activation: _activation, ReLU: _activation, Sigmoid: _activation, Tanh: _activation, GELU: _activation,
    Softmax: _activation,
    Embedding: lambda node, fmt: keras.layers.Embedding(node.layer.num_embeddings, node.layer.dim, name=node.path),
    # sequences are batch-first in either data format
    RNN: _recurrent, GRU: _recurrent, LSTM: _recurrent, MultiHeadAttention: _attention,
    PositionalEncoding: lambda node, fmt: ks.PositionalEncoding(node.layer.max_len, name=node.path),
    ClassToken: lambda node, fmt: ks.ClassToken(name=node.path),
    PositionEmbedding: lambda node, fmt: ks.PositionEmbedding(name=node.path),
    Reshape: lambda node, fmt: keras.layers.Reshape(node.layer.shape, name=node.path),
    Permute: lambda node, fmt: keras.layers.Permute(node.layer.dims, name=node.path),
    Scale: lambda node, fmt: keras.layers.Rescaling(node.layer.factor, name=node.path),
    Take: lambda node, fmt: ks.Take(node.layer.index, axis=node.layer.axis, name=node.path),
    OneHot: lambda node, fmt: ks.OneHot(node.layer.num_classes, name=node.path),
}


class _Table:
    """What the adapter knows about one native model: the Keras layer at each path, the variable behind each
    canonical parameter, and the compiled forward functions."""

    def __init__(self) -> None:
        self.layers: dict[str, Any] = {}
        self.vars: dict[str, tuple[Any, Layout]] = {}
        self.fns: dict[tuple[bool, int], Any] = {}


def _seeded(initializer: Any, key: int | None, name: str) -> Any:
    """A fresh copy of a Keras initializer for one parameter, seeded from ``(key, canonical name)`` when a key
    is given, so values do not depend on the order in which Keras creates variables. Always a copy: one
    unseeded Keras initializer instance returns the same values at every call, so sharing the user's object
    across layers would make equal-shaped kernels identical. Plain callables are returned as they are."""
    if not hasattr(initializer, "get_config") or not hasattr(type(initializer), "from_config"):
        return initializer
    config = dict(initializer.get_config())
    if "seed" in config and key is not None:
        config["seed"] = zlib.crc32(f"{key}:{name}".encode()) & 0x7FFFFFFF
    return type(initializer).from_config(config)


class _Checked:
    """A user's initializer for one parameter, whose values are checked: Keras would keep a variable of whatever
    shape it returns (and fail later, in a layer's call). Real values of another dtype are cast to the
    variable's; the first problem is kept in ``errors`` too, because Keras rewrites the messages of errors raised
    inside a layer's call."""

    def __init__(self, init: Any, name: str, check: Callable[..., Any], errors: list) -> None:
        self.init, self.name, self.check, self.errors = init, name, check, errors

    def __call__(self, shape: Any, dtype: Any = None, **kwargs: Any) -> Any:
        value = tf.convert_to_tensor(self.init(shape, dtype=dtype, **kwargs))
        real = value.dtype.is_floating or value.dtype.is_integer
        error = self.check(self.name, tuple(shape), tuple(value.shape), value.dtype.name, real)
        if error is not None:
            self.errors.append(error)
            raise error
        want = tf.as_dtype(dtype) if dtype is not None else tf.float32
        return value if value.dtype == want else tf.cast(value, want)


# ============================================================================================ the adapter
class KerasModel(CompiledModel[Any]):
    """A spec compiled for Keras 3 on TensorFlow. ``native`` is a ``keras.Sequential`` (a subclass whose call is
    the plain layer loop). ``init`` may be a Keras initializer (applied to kernels, recurrent kernels, attention
    projections and embeddings; biases, norms and the class token keep Keras's zeros/ones); ``key`` an int that
    seeds every random Keras initializer per canonical parameter."""

    backend = "tensorflow"
    # tf.one_hot takes its depth as int32: 2**31 fails at tracing ("must be non-negative but is -2147483648")
    max_dim = 2**31 - 1
    size_note = "TensorFlow passes sizes such as one_hot's depth as int32"
    abstract_tables = True  # PositionalEncoding builds its numpy table in build(), abstract or not

    # ------------------------------------------------------------------ building
    def _new_native(self) -> Any:
        fmt, table = self.spec.data_format, _Table()

        def build(node: Node) -> Any:
            if node.tied_to is not None:  # the same Keras layer object: Keras shares its variables
                return table.layers[node.tied_to.path]
            s = node.layer
            # TensorFlow refuses an outermost name scope that starts with '_' (nested ones may): '_m' -> 'lazy_model_m'
            root = self.spec.name or "lazy_model"
            name = node.path or (f"lazy_model{root}" if root.startswith("_") else root)
            if isinstance(s, Sequential):
                kids = [build(child) for child in node.children]
                layer = kl.Seq(kids or [keras.layers.Identity(name=f"{name}.identity")], name=name)
            elif isinstance(s, Residual):
                kids = [build(child) for child in node.children]
                layer = kl.Residual(kids[0], kids[1] if len(kids) > 1 else None, activation=kn.activation(s.activation),
                                  name=name)
            elif isinstance(s, Concat):
                layer = kl.Concat([build(child) for child in node.children],
                                  axis=1 if fmt == "channels_first" else -1, name=name)
            else:
                builder = LEAVES.get(type(s))
                if builder is None:
                    raise UnsupportedLayerError(f"layer '{node.path}' ({type(s).__name__}) on backend tensorflow: "
                                                f"no Keras layer expresses it; use the layers in deferinit.layers")
                layer = builder(node, fmt)
            table.layers[node.path] = layer
            return layer

        native = build(self.root)
        # Kept on the model itself (Keras tracks only layers, variables and containers, so a plain object is
        # left alone): a table held by the adapter would keep every replaced model alive.
        native._deferinit_table = table
        return native

    def _table(self, native: Any = None) -> _Table:
        return (self.native if native is None else native)._deferinit_table

    def _kernel_slots(self, native: Any) -> Any:
        """``(canonical name, object, initializer attribute or None, adapt)`` of every weight a kernel initializer
        fills (None: a kernel Keras creates inside its layer's build, initialized after it; see initializer_slots)."""
        table = self._table(native)
        for node in self.root.leaves():
            for pname, owner, attr, adapt in initializer_slots(node.layer, table.layers[node.path]):
                yield node.param_name(pname), owner, attr, adapt

    def _check_init(self, init: Any, key: Any) -> int | None:
        if init is not None and not callable(init):
            raise SpecError(f"init: the tensorflow backend expected a portable initializer, a Keras initializer "
                            f"(e.g. keras.initializers.GlorotUniform()) or a callable (shape, dtype), received {init!r}")
        return None if key is None else self._int_key(key)

    def _set_initializers(self, native: Any, init: Any, key: Any) -> None:
        """Put the framework's own ``init`` (or Keras's default) on every kernel, seeded per name by ``key``."""
        seed = self._check_init(init, key)
        for name, owner, attr, _ in self._kernel_slots(native):
            if attr is not None:
                chosen = _seeded(init if init is not None else getattr(owner, attr), seed, name)
                setattr(owner, attr, self._checking(chosen, name) if init is not None else chosen)

    def _checking(self, init: Any, name: str) -> _Checked:
        return _Checked(init, name, self._init_value_error, self._init_errors)

    def _initialize_late(self, native: Any, init: Any, key: Any) -> None:
        """The kernels whose layers Keras makes while building (MultiHeadAttention's projections, each given a
        copy of the attention layer's one initializer): with ``init`` or ``key``, drawn again per name."""
        seed = self._check_init(init, key)
        if init is None and seed is None:
            return
        table = self._table(native)
        for name, owner, attr, adapt in self._kernel_slots(native):
            if attr is None:
                var = table.vars[name][0]
                chosen = adapt(_seeded(init if init is not None else owner._kernel_initializer, seed, name))
                var.assign((self._checking(chosen, name) if init is not None else chosen)(tuple(var.shape),
                                                                                          dtype=var.dtype))

    def _native_init(self, native: Any, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool) -> dict[str, NativeParam]:
        self._init_errors: list = []
        try:
            return self._native_init_checked(native, x, inference, init, key, abstract)
        except Exception:
            if self._init_errors:  # the user's initializer's own error, as raised (not as Keras rewrote it)
                raise self._init_errors[0] from None
            raise

    def _native_init_checked(self, native: Any, x: Any, inference: Inference, init: Any, key: Any,
                             abstract: bool) -> dict[str, NativeParam]:
        self._set_initializers(native, init, key)
        if abstract:
            # Keras builds every layer symbolically and creates shaped variables with no values. Measured for
            # 24 x Dense(8192) (1.6e9 parameters, 6.4 GB of values): 40-70 ms (up to 0.4 s on a loaded machine)
            # and under 1 MB of resident memory; 8 residual blocks of Dense(4096): 0.15 s, under 1 MB.
            with keras.StatelessScope(initialize_variables=False):
                native.build(inference.report.input_shape)
            self._forget_pending(native)
        else:
            native(x, training=False)  # Keras's build on first call: the d2l dry run
        table = self._table(native)
        found = {}
        for node in self.root.leaves():
            for pname, var, layout in variable_slots(node.layer, table.layers[node.path]):
                name = node.param_name(pname)
                table.vars[name] = (var, layout)
                shape = tuple(int(d) for d in var.shape)
                found[name] = NativeParam(var.path, shape, layout.canonical_shape(shape))
        if not abstract:
            self._initialize_late(native, init, key)
        return found

    @staticmethod
    def _forget_pending(native: Any) -> None:
        # Variables made in a StatelessScope wait in a process-wide list that the next top-level symbolic
        # Keras call (any model's) would initialize; taking ours out keeps the model abstract until
        # materialize() (which initializes them itself).
        pending = global_state.get_global_attribute("uninitialized_variables")
        if pending:
            ours = {id(v) for v in native.variables}
            global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])

    def _materialize(self, init: Any, key: Any) -> None:
        native, seed = self.native, self._check_init(init, key)
        self._init_errors = []
        if init is not None or seed is not None:  # the variables exist: give them the initializer directly
            table = self._table(native)
            for name, _, _, adapt in self._kernel_slots(native):
                var = table.vars[name][0]  # a kernel with no value yet keeps its initializer
                chosen = adapt(_seeded(init if init is not None else var._initializer, seed, name))
                var._initializer = self._checking(chosen, name) if init is not None else chosen
        for var in native.variables:
            if var._value is None:
                var._deferred_initialize()

    def _abstract_snapshot(self) -> Callable[[], None]:
        # an abstract Keras variable is one with no value yet and its initializer kept for later: put both back
        saved = [(var, var._initializer, var._value) for var in self.native.variables]

        def undo() -> None:
            for var, initializer, value in saved:
                var._initializer, var._value = initializer, value
        return undo

    # ------------------------------------------------------------------ data
    def _to_native(self, x: Any) -> Any:
        return tf.convert_to_tensor(x)

    def _is_native(self, x: Any) -> bool:
        return isinstance(x, (tf.Tensor, tf.Variable, keras.Variable, keras.KerasTensor))

    def _shape_dtype(self, x: Any) -> tuple[tuple, Any]:
        dtype = x.dtype
        return tuple(x.shape), np.dtype(dtype.as_numpy_dtype if hasattr(dtype, "as_numpy_dtype") else dtype)

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.numpy() if hasattr(y, "numpy") else np.asarray(y)

    # ------------------------------------------------------------------ forward
    def _compiled(self, training: bool, rank: int) -> Any:
        table = self._table()
        fn = table.fns.get((training, rank))
        if fn is None:
            # Keras's own fast path (predict_on_batch, fit) is a tf.function over the model call with relaxed
            # shapes; this is that function without Keras's data-adapter work around it. One per rank: relaxing
            # across ranks would leave a shape of unknown rank, which Keras layers cannot take.
            fn = table.fns[(training, rank)] = tf.function(partial(self.native.__call__, training=training),
                                                           reduce_retracing=True)
        return fn

    @staticmethod
    def _tensor(x: Any) -> Any:
        """A tf tensor the model takes: Keras variables read, other floats cast to float32 (the parameters')."""
        if isinstance(x, keras.Variable):
            x = x.value
        return tf.cast(x, tf.float32) if x.dtype.is_floating and x.dtype != tf.float32 else x

    def _signature(self, x: Any) -> tuple:
        # TensorFlow interns its DTypes: the dtype object itself is a cheaper cache key than str(dtype)
        return (tuple(x.shape), x.dtype)

    def _forward(self, x: Any, training: bool) -> Any:
        if x.dtype is tf.float32:  # the steady state: one lookup, then the compiled function
            fn = self._native._deferinit_table.fns.get((training, x.shape.rank))  # type: ignore[union-attr]
            if fn is not None:
                return fn(x)
        if isinstance(x, keras.KerasTensor):  # symbolic use inside another Keras model
            return self.native(x, training=training)
        x = self._tensor(x)
        return self._compiled(training, len(x.shape))(x)

    def _native_layer_shapes(self, native: Any, x: Any, inference: Inference, abstract: bool) -> dict:
        """Keras's own shape inference at every layer position: the position-by-position walk of
        ``_intermediates`` run on a symbolic ``KerasTensor`` (each layer's ``compute_output_spec``; nothing is
        allocated or computed), varying dims left None."""
        sym = keras.KerasTensor(inference.report.input_shape, dtype=inference.report.input_dtype)
        record: dict[str, Any] = {}
        out = self._walk(self._table(native), sym, record, lambda y: tuple(y.shape))
        record[""] = tuple(out.shape)
        return record

    def _intermediates(self, x: Any) -> dict[str, np.ndarray]:
        record: dict[str, Any] = {}
        self._walk(self._table(), self._tensor(x), record, lambda y: y.numpy())
        return record

    def _walk(self, table: Any, x: Any, record: dict, keep_as: Callable[[Any], Any]) -> Any:
        """The plan position by position with the native layers, each position's output kept as ``keep_as``."""

        def run(node: Node, x: Any, keep: bool) -> Any:
            target = node.tied_to or node
            layer, s = table.layers[target.path], target.layer
            inner = keep and node.tied_to is None
            if isinstance(s, Sequential):
                y = x
                for child in target.children:
                    y = run(child, y, inner)
                if not target.children:
                    y = layer(x)
            elif isinstance(s, Residual):
                y = run(target.children[0], x, inner)
                short = run(target.children[1], x, inner) if len(target.children) > 1 else x
                y = layer.combine(y, short)
            elif isinstance(s, Concat):
                y = layer.combine([run(child, x, inner) for child in target.children])
            else:
                y = kl.call_layer(layer, x, False)
            if keep and node.path:
                record[node.path] = keep_as(y)
            return y

        return run(self.root, x, True)

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        x = self._tensor(x)
        table = self._table()
        names = [n for n, p in self.report.params.items() if p.trainable]
        variables = [table.vars[n][0].value for n in names]
        fn = self._compiled(training, len(x.shape))
        with tf.GradientTape() as tape:
            tape.watch(variables)
            total = tf.reduce_sum(fn(x))
        grads = tape.gradient(total, variables)
        out = {}
        for name, var, g in zip(names, variables, grads):
            g = np.zeros(var.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
            out[name] = np.ascontiguousarray(table.vars[name][1].grad(g), dtype=np.float32)
        return out

    # ------------------------------------------------------------------ weights
    def _get_weights(self) -> dict[str, np.ndarray]:
        table = self._table()
        return {name: np.ascontiguousarray(layout.canonical(var.numpy()), dtype=np.float32)
                for name, (var, layout) in ((n, table.vars[n]) for n in self.report.params)}

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        table = self._table()
        values: dict[int, list] = {}  # id(variable) -> [variable, value]: a variable may hold several parameters
        for name in self.report.params:
            var, layout = table.vars[name]
            part = layout.native(np.asarray(weights[name], dtype=np.float32), tuple(var.shape))
            if id(var) in values:
                values[id(var)][1] = values[id(var)][1] + part
            else:
                values[id(var)] = [var, part]
        for var, value in values.values():
            var.assign(np.ascontiguousarray(value, dtype=np.float32))

