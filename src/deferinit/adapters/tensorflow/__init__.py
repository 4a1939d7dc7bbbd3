"""The TensorFlow backend: Keras 3 layers whose shapes Keras infers itself when the model is first built.

A spec becomes an ordinary ``keras.Sequential`` tree (spec ``Sequential``/``LazyModel``), with two small
container layers for ``Residual`` and ``Concat``; each leaf is one Keras layer (a builder per spec class in
``leaves.py``): stock Keras layers wherever Keras has one (``GRU``, ``LSTM``, ``SimpleRNN``, ``Bidirectional``,
``MultiHeadAttention``, ``Reshape``...), small ``build()``-on-first-call layers otherwise (``modules.py``,
``sequence.py``). The tree is built by the one structural walk, ``adapters/tree.py``, from this backend's
container constructors (``containers.py``).
Nothing has a shape until Keras builds the model on its first call (``apply_init``), or builds it
symbolically with no values (``abstract=True``). The containers build their children from the input shape
(Keras's advice for containers, ``build_child``) rather than by tracing their calls in scratch graphs:
a ResNet-18 dry run takes 0.7 s where the same model written with subclassed Keras blocks takes 2.2 s.

Names: Keras names variables from process-wide counters unless layers are named, so every layer is named by
its canonical path (``"3.body.1"``; Keras allows dots, only ``/`` is refused) and the adapter maps canonical
names to Keras variables by STRUCTURE (a table from canonical name to the variable object, filled from the
layers it built), never by parsing names. ``native_name`` is the variable's ``.path``.

Layouts (``params.py``, on :mod:`deferinit.layouts`): Dense kernel ``(in, out)``, Conv kernel ``(*kernel, in // groups, out)``,
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

Forward: ``__call__`` runs a cached ``tf.function`` over the model call (``fastpath.py``, which says what it
saves and how to turn it off).

Reports: every layer's output shape is observed in the dry run ``apply_init`` already does (the containers note
each child's output while a recorder is active, ``containers.py``); on the abstract path, in Keras's own symbolic
shape inference of the model just built, which allocates nothing. Keras runs every layer in the spec's data
format (channels_first convolutions that run channels_last inside transpose back before they return), so the
observed shapes are in the spec's layout as they are.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import numpy as np

from ...errors import SpecError
from ...layouts import contiguous
from ...merges import combine
from ...shapes import Inference, Node
from .. import tree
from ..compiled import CompiledModel, NativeParam

# isort: off
# Keras 3 fixes its backend at first import: backend.py checks KERAS_BACKEND (a clear error if it names another
# backend) and sets it before importing keras, so it must come first.
from . import backend  # noqa: F401
from . import containers as kc
from . import fastpath
from . import initializers as ki
from . import modules as kl
from . import nan as kn
from .leaves import build_leaf
from .params import PARAMS, Layout, initializer_slots, variable_slots
import keras
import tensorflow as tf
# isort: on

__all__ = ["KerasModel", "PARAMS"]


class _Table:
    """What the adapter knows about one native model: the Keras layer at each path, the variable behind each
    canonical parameter, and the compiled forward functions."""

    def __init__(self) -> None:
        self.layers: dict[str, Any] = {}
        self.vars: dict[str, tuple[Any, Layout]] = {}
        self.fns: dict[tuple[Any, ...], Any] = {}  # (training, rank); ("graph", training) for graph specs
        self.shapes: dict[str, tuple] = {}  # observed in apply_init's dry run, for the report


def _positions(node: Node) -> kc.Positions:
    return kc.Positions([(child.path, child.tied_to is not None) for child in node.children])


class _Builder(tree.Builder[Any]):
    """Keras's containers for the one structural walk; a tied position is the same Keras layer object (Keras
    shares its variables)."""

    backend = "tensorflow"

    def __init__(self, root_name: str, data_format: str) -> None:
        self.root_name, self.fmt = root_name, data_format

    def _name(self, node: Node) -> str:
        # TensorFlow refuses an outermost name scope that starts with '_' (nested ones may): '_m' -> 'lazy_model_m'
        root = self.root_name
        return node.path or (f"lazy_model{root}" if root.startswith("_") else root)

    def leaf(self, node: Node) -> Any:
        return build_leaf(node, self.fmt)

    def sequential(self, node: Node, children: list[tuple[str, Any]]) -> Any:
        name = self._name(node)
        kids = [k for _, k in children] or [keras.layers.Identity(name=f"{name}.identity")]
        return kc.Seq(kids, positions=_positions(node), name=name)

    def residual(self, node: Node, body: Any, shortcut: Any | None) -> Any:
        act = kn.activation(getattr(node.layer, "activation", None))
        return kc.Residual(body, shortcut, activation=act, positions=_positions(node), name=self._name(node))

    def concat(self, node: Node, branches: list[tuple[str, Any]]) -> Any:
        return kc.Concat([b for _, b in branches], axis=1 if self.fmt == "channels_first" else -1,
                         positions=_positions(node), name=self._name(node))

    def merge(self, node: Node, branches: list[tuple[str, Any]]) -> Any:
        return kc.Merge([b for _, b in branches], node.layer.op,  # type: ignore[attr-defined]
                        positions=_positions(node), name=self._name(node))


class _Runner(tree.Runner[Any]):
    """Keras's tensor operations for the intermediates walk (inference mode) and graph specs' forward."""

    def __init__(self, table: _Table, data_format: str, training: bool = False) -> None:
        self.table, self.fmt, self.training = table, data_format, training

    def leaf(self, node: Node, x: Any) -> Any:
        return kl.call_layer(self.table.layers[node.path], x, self.training)

    def add(self, a: Any, b: Any) -> Any:
        return keras.ops.add(a, b)

    def activation(self, name: str, x: Any) -> Any:
        return keras.activations.get(kn.activation(name))(x)

    def concat(self, xs: list[Any], axis: int) -> Any:
        return keras.ops.concatenate(xs, axis=axis)

    def merge(self, op: str, xs: list[Any]) -> Any:
        return combine(op, xs, keras.ops.add, keras.ops.multiply)

    def channel_axis(self, rank: int) -> int:
        return 1 if self.fmt == "channels_first" else rank - 1

    def record(self, y: Any) -> Any:
        return y.numpy()


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
        native, layers = tree.build(self.root, _Builder(self.spec.name or "lazy_model", self.spec.data_format))
        table = _Table()
        table.layers = layers
        # Kept on the model itself (Keras tracks only layers, variables and containers, so a plain object is
        # left alone): a table held by the adapter would keep every replaced model alive.
        native._deferinit_table = table
        return native

    def _table(self, native: Any = None) -> _Table:
        return (self.native if native is None else native)._deferinit_table  # type: ignore[no-any-return]

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
                chosen = ki.seeded(init if init is not None else getattr(owner, attr), seed, name)
                setattr(owner, attr, self._checking(chosen, name) if init is not None else chosen)

    def _checking(self, init: Any, name: str) -> ki.Checked:
        return ki.Checked(init, name, self._init_value_error, self._init_errors)

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
                chosen = adapt(ki.seeded(init if init is not None else owner._kernel_initializer, seed, name))
                var.assign((self._checking(chosen, name) if init is not None else chosen)(tuple(var.shape),
                                                                                          dtype=var.dtype))

    def _native_init(self, native: Any, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
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
        table = self._table(native)
        with kc.recording() as seen:  # each position's output shape, for the report (_native_layer_shapes)
            if abstract:
                # Keras builds every layer symbolically and creates shaped variables with no values. Measured for
                # 24 x Dense(8192) (1.6e9 parameters, 6.4 GB of values): 40-70 ms (up to 0.4 s on a loaded machine)
                # and under 1 MB of resident memory; 8 residual blocks of Dense(4096): 0.15 s, under 1 MB.
                with keras.StatelessScope(initialize_variables=False):
                    native.build(inference.report.input_shape)
                    # Keras's own symbolic shape inference of the model it just built (no values, nothing
                    # allocated): the build's own loop over the outermost layers is keras.Sequential's, not ours
                    out = native.compute_output_spec(keras.KerasTensor(inference.report.input_shape,
                                                                       dtype=inference.report.input_dtype))
                ki.forget_pending(native)
            else:
                out = native(x, training=False)  # Keras's build on first call: the d2l dry run
            seen.shapes[""] = tuple(out.shape)
        table.shapes = seen.shapes
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

    def _native_layer_shapes(self, native: Any, x: Any, inference: Inference, abstract: bool) -> Mapping[str, tuple]:
        # observed while _native_init ran the dry run (or Keras's symbolic build): no second pass
        return self._table(native).shapes

    def _materialize(self, init: Any, key: Any) -> None:
        native, seed = self.native, self._check_init(init, key)
        self._init_errors = []
        chosen = {}
        if init is not None or seed is not None:  # the variables exist: give them the initializer directly
            table = self._table(native)
            for name, _, _, adapt in self._kernel_slots(native):
                var = table.vars[name][0]  # a kernel with no value yet keeps its initializer
                new = adapt(ki.seeded(init if init is not None else ki.initializer_of(var), seed, name))
                chosen[id(var)] = self._checking(new, name) if init is not None else new
        ki.materialize(native, chosen)

    def _abstract_snapshot(self) -> Callable[[], None]:
        return ki.snapshot(self.native)

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
    def _signature(self, x: Any) -> tuple:
        # TensorFlow interns its DTypes: the dtype object itself is a cheaper cache key than str(dtype)
        return (tuple(x.shape), x.dtype)

    def _compiled(self, training: bool, rank: int) -> Any:
        return fastpath.compiled(self.native, training, rank)

    def _forward(self, x: Any, training: bool) -> Any:
        if x.dtype is tf.float32 and fastpath.ENABLED:  # the steady state: one lookup, then the compiled function
            fn = self._native._deferinit_table.fns.get((training, x.shape.rank))  # type: ignore[union-attr]
            if fn is not None:
                return fn(x)
        return fastpath.forward(self._native, x, training)

    def _intermediates(self, x: Any) -> dict[str, np.ndarray]:
        record: dict[str, Any] = {}
        tree.run(self.root, fastpath.tensor(x), _Runner(self._table(), self.spec.data_format), record)
        return record

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        x = fastpath.tensor(x)
        table = self._table()
        names = [n for n, p in self.report.params.items() if p.trainable]
        variables = [table.vars[n][0].value for n in names]
        fn = fastpath.compiled(self.native, training, len(x.shape)) if fastpath.ENABLED else \
            partial(self.native, training=training)
        with tf.GradientTape() as tape:
            tape.watch(variables)
            total = tf.reduce_sum(fn(x))
        grads = tape.gradient(total, variables)
        out = {}
        for name, var, g in zip(names, variables, grads):
            g = np.zeros(var.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
            out[name] = contiguous(table.vars[name][1].grad(g))
        return out

    # ------------------------------------------------------------------ weights
    def _get_weights(self) -> dict[str, np.ndarray]:
        table = self._table()
        return {name: contiguous(layout.canonical(var.numpy()))
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
            var.assign(contiguous(value))
