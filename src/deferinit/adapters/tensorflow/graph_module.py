"""Graph specs on Keras 3 (TensorFlow): :class:`GraphLayer`, a Keras layer whose ``run(inputs)`` runs the graph.

Its layers are the list specs' Keras layers (built by the one structural walk with this backend's builder and
held by one container, so Keras tracks their variables); each builds itself on its first call, Keras's own
deferred initialization. Attention called with separate queries, keys and values is Keras's
``MultiHeadAttention`` with ``key=`` and an ``attention_mask`` (True where a query may attend), which is d2l's
``masked_softmax`` up to the masked value (Keras adds -1e9, d2l sets -1e6: both weigh masked keys exactly 0).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import SpecError
from ...extend import register_builder
from ...graph import GraphModel
from ...layers_graph import Attend, embedding_path
from ...layouts import contiguous
from ...shapes import Node
from .. import tree
from ..graph_compiled import GraphCompiled
from . import _Builder, _Runner, _Table

# isort: off
import keras
import tensorflow as tf
from . import initializers as ki
from .params import variable_slots
# isort: on

__all__ = ["GraphLayer", "KerasGraphModel"]


class TiedProjection(keras.layers.Layer):  # type: ignore[misc]
    """``x @ table.T`` with the embedding table of another layer (its variable is that layer's, not this one's)."""

    table: Any = None

    def call(self, x: Any) -> Any:
        return keras.ops.matmul(x, keras.ops.transpose(self.table()))


@register_builder("tensorflow", Attend)
def _attend(node: Node, fmt: str) -> Any:
    return TiedProjection(name=node.path)


class GraphLayer(keras.layers.Layer):  # type: ignore[misc]
    def __init__(self, spec: GraphModel, root: Node, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "graph_model"), **kwargs)
        self.body, layers = tree.build(root, _Builder("graph_model", spec.data_format))
        table = _Table()
        table.layers = layers
        self._deferinit_table = table  # a plain object: Keras leaves it untracked
        self._deferinit_spec, self._deferinit_root = spec, root
        for node in root.leaves():
            if isinstance(node.layer, Attend):
                emb = layers[embedding_path(root, node.layer)]
                layers[node.path].table = lambda emb=emb: emb.embeddings

    def run(self, inputs: list[Any], record: dict[str, Any] | None = None, training: bool = False) -> list[Any]:
        """The outputs as a list; ``training`` as Keras's own (BatchNorm on the batch, updating its moving
        statistics; Dropout active)."""
        spec, root, table = self._deferinit_spec, self._deferinit_root, self._deferinit_table
        runner = _Runner(table, spec.data_format, training)
        slots = list(inputs)
        for node in spec.nodes:
            args = [slots[a] for a in node["args"]]
            if node["op"] == "layer":
                pnode = root.children[node["layer"]]
                first = record is not None and pnode.path not in record
                if len(args) == 1 and getattr(pnode.layer, "causal", False):
                    args = args * 3  # causal self-attention: the Keras layer alone would not mask it
                if len(args) > 1:
                    out = self._attention(table.layers[pnode.path], pnode, args, bool(node.get("valid_lens")),
                                          training)
                else:
                    out = tree.run(pnode, args[0], runner, record if first else None)
                if first:
                    record[pnode.path] = runner.record(out)  # type: ignore[index]
            elif node["op"] == "add":
                out = args[0]
                for a in args[1:]:
                    out = keras.ops.add(out, a)
            elif node["op"] == "multiply":
                out = args[0]
                for a in args[1:]:
                    out = keras.ops.multiply(out, a)
            else:
                axis = node.get("axis")
                out = keras.ops.concatenate(args, axis=runner.channel_axis(len(args[0].shape)) if axis is None else axis)
            slots.append(out)
        return [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]

    @staticmethod
    def _attention(layer: Any, pnode: Node, args: list[Any], lens: bool, training: bool = False) -> Any:
        q, k, v = args[:3]
        if not layer.built:
            keras.layers.MultiHeadAttention.build(layer, tuple(q.shape), tuple(v.shape), tuple(k.shape))
            layer.built = True  # Keras's __call__ marks it; built by hand here, so marked by hand
        if isinstance(q, keras.KerasTensor):  # the abstract build: shapes only, a mask changes none of them
            return keras.layers.MultiHeadAttention.compute_output_spec(layer, q, v, key=k)
        mask = _key_mask(q, k, args[3] if lens else None, bool(getattr(pnode.layer, "causal", False)))
        return keras.layers.MultiHeadAttention.call(layer, q, v, key=k, attention_mask=mask, training=training)


def _key_mask(q: Any, k: Any, valid_lens: Any, causal: bool) -> Any:
    """:func:`deferinit.graph_run.key_mask` in TensorFlow ops: the forward runs under ``tf.function`` with relaxed
    shapes, where the sizes are tensors, which ``tf.experimental.numpy``'s ``arange``/``ones`` do not take (so
    it cannot be that function's ``xp``, as ``jax.numpy`` is for JAX and NNX)."""
    if valid_lens is None and not causal:
        return None
    n, tq, tk = tf.shape(q)[0], tf.shape(q)[1], tf.shape(k)[1]
    j = tf.range(tk)[None, None, :]
    keep = tf.ones(tf.stack([n, tq, tk]), tf.bool)
    if valid_lens is not None:
        lens = tf.cast(valid_lens, tf.int32)
        lens = tf.broadcast_to(lens[:, None], tf.stack([n, tq])) if lens.shape.rank == 1 else lens
        keep = tf.logical_and(keep, j < lens[:, :, None])
    if causal:
        keep = tf.logical_and(keep, j <= tf.range(tq)[None, :, None])
    return keep


class KerasGraphModel(GraphCompiled[GraphLayer]):
    backend = "tensorflow"

    def _new_native(self) -> GraphLayer:
        return GraphLayer(self.spec, self.root)

    def _to_native(self, x: np.ndarray) -> Any:
        return tf.convert_to_tensor(x)

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.numpy() if hasattr(y, "numpy") else np.asarray(y)

    def _dry_run(self, native: GraphLayer, xs: list[Any], init: Any) -> None:
        if init is not None:
            raise SpecError(f"init: graph specs on tensorflow take None or a portable initializer so far, "
                            f"received {init!r}")
        native.run(xs)  # Keras's build on first call: the d2l dry run

    def _abstract_init(self, native: GraphLayer, specs: list[Any]) -> None:
        """Keras builds every layer symbolically on ``KerasTensor``s, creating shaped variables with no values, as
        list specs' abstract path does (``keras.StatelessScope(initialize_variables=False)``)."""
        with keras.StatelessScope(initialize_variables=False):
            native.run([keras.KerasTensor(tuple(s.shape), dtype=s.dtype) for s in specs])
        ki.forget_pending(native)

    def _slots(self, native: GraphLayer) -> dict[str, tuple[Any, Any]]:
        table = native._deferinit_table
        return {node.param_name(p): (var, layout) for node in self.root.leaves()
                for p, var, layout in variable_slots(node.layer, table.layers[node.path])}

    def _native_param(self, native: GraphLayer, name: str) -> tuple[str, tuple[int, ...]]:
        var, layout = self._slots(native)[name]
        return var.path, tuple(layout.canonical_shape(tuple(int(d) for d in var.shape)))

    def _run(self, native: GraphLayer, xs: list[Any], training: bool) -> list[Any]:
        # a cached tf.function over the graph's run, one per mode, as list specs' forward (fastpath.py): run
        # eagerly, op by op, the bench's GPT-2 and BERT-base took 2.4-2.5x a hand-written tf.function model
        fns = native._deferinit_table.fns
        fn = fns.get(("graph", training))
        if fn is None:
            def call(*inputs: Any) -> list[Any]:
                return native.run(list(inputs), training=training)
            fn = fns[("graph", training)] = tf.function(call, reduce_retracing=True)
        return list(fn(*xs))

    def _record(self, native: GraphLayer, xs: list[Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        native.run(xs, record)
        return record

    def _grads(self, native: GraphLayer, xs: list[Any]) -> dict[str, np.ndarray]:
        slots = self._slots(native)
        names = [n for n, p in self.report.params.items() if p.trainable]
        variables = [slots[n][0].value for n in names]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            total = tf.add_n([tf.reduce_sum(o) for o in native.run(xs) if o.dtype.is_floating])
        grads = tape.gradient(total, variables)
        out = {}
        for name, var, g in zip(names, variables, grads):
            g = np.zeros(var.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
            out[name] = contiguous(slots[name][1].grad(g))
        return out

    def _get(self, native: GraphLayer) -> dict[str, np.ndarray]:
        slots = self._slots(native)
        return {n: contiguous(slots[n][1].canonical(slots[n][0].numpy()))
                for n in self.report.params}

    def _set(self, native: GraphLayer, weights: Mapping[str, np.ndarray]) -> None:
        slots = self._slots(native)
        values: dict[int, list[Any]] = {}  # a variable may hold several parameters (an LSTM's folded biases)
        for name, value in weights.items():
            var, layout = slots[name]
            part = layout.native(np.asarray(value, dtype=np.float32), tuple(var.shape))
            if id(var) in values:
                values[id(var)][1] = values[id(var)][1] + part
            else:
                values[id(var)] = [var, part]
        for var, value in values.values():
            var.assign(contiguous(value))
