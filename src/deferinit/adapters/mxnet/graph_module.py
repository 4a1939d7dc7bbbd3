"""Graph specs on MXNet (Gluon): :class:`GraphBlock`, a Gluon block whose ``forward(*inputs)`` runs the graph.

(``graph.py`` beside this file is Gluon's tracing machinery for list specs; this is the graph *spec*.) The blocks
are the list specs' own (``_build``: one ``Sequential`` holding every layer, so Gluon names and collects their
parameters); Gluon's deferred initialization gives them their shapes in the first forward, run imperatively.
Attention called with separate queries, keys and values is d2l's arithmetic on the block's own ``q``, ``k``,
``v`` and ``out`` Dense blocks, with d2l's ``masked_softmax`` (-1e6 where masked).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon

from ...extend import register_builder
from ...graph import GraphModel
from ...graph_run import key_mask
from ...layers_graph import Attend, embedding_path
from ...shapes import Node
from .. import tree
from ..graph_compiled import GraphCompiled
from . import _build, _Runner, graph
from .initializers import check_init, initialize, seeded

__all__ = ["GraphBlock", "GluonGraphModel"]


class TiedProjection(gluon.HybridBlock):  # type: ignore[misc]
    """``x @ table.T`` with another block's embedding table (not a parameter of this block): its array when the
    graph runs imperatively (``F`` is ``mx.nd``), its symbol in the abstract trace."""

    table: Any = None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.dot(x, self.table(F), transpose_b=True)


@register_builder("mxnet", Attend)
def _attend(layer: Attend, fmt: str) -> Any:
    return TiedProjection(), {}


class GraphBlock(gluon.Block):  # type: ignore[misc]
    def __init__(self, spec: GraphModel, root: Node) -> None:
        super().__init__()
        with self.name_scope():
            self.body = _build(root, spec.data_format)
        self._graph = (spec, root)
        table = self.body._deferinit
        for node in root.leaves():
            if isinstance(node.layer, Attend):
                emb = table.blocks[embedding_path(root, node.layer)]
                table.blocks[node.path].table = lambda F, emb=emb: emb.weight.var() if F is mx.sym else emb.weight.data()

    def forward(self, *inputs: Any, record: dict[str, Any] | None = None) -> Any:
        spec, root = self._graph
        table = self.body._deferinit
        runner = _Runner(table, spec.data_format)
        F = mx.sym if isinstance(inputs[0], mx.sym.Symbol) else mx.nd  # symbols: the abstract trace (shapes only)
        slots = list(inputs)
        for node in spec.nodes:
            args = [slots[a] for a in node["args"]]
            if node["op"] == "layer":
                pnode = root.children[node["layer"]]
                first = record is not None and pnode.path not in record
                if len(args) == 1 and getattr(pnode.layer, "causal", False):
                    args = args * 3
                if len(args) > 1:
                    out = _attention(F, table.blocks[pnode.path], pnode, args, bool(node.get("valid_lens")))
                elif F is mx.sym:  # the position's own block traces itself (containers included)
                    out = table.blocks[pnode.path](args[0])
                else:
                    out = tree.run(pnode, args[0], runner, record if first else None)
                if first:
                    record[pnode.path] = runner.record(out)  # type: ignore[index]
            elif node["op"] == "add":
                out = args[0]
                for a in args[1:]:
                    out = F.broadcast_add(out, a)
            elif node["op"] == "multiply":
                out = args[0]
                for a in args[1:]:
                    out = F.broadcast_mul(out, a)
            else:
                axis = node.get("axis")
                if axis is None:
                    axis = 1 if spec.data_format == "channels_first" else -1
                out = F.concat(*args, dim=axis)
            slots.append(out)
        return [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]


def _attention(F: Any, block: Any, pnode: Node, args: list[Any], lens: bool) -> Any:
    heads = block._heads
    q, k, v = block._split(F, block.q(args[0])), block._split(F, block.k(args[1])), block._split(F, block.v(args[2]))
    scores = F.batch_dot(q, k, transpose_b=True) / block._scale
    keep = None  # the abstract trace (symbols): shapes only, which no mask changes
    if F is mx.nd:
        n, tq, tk = args[0].shape[0], args[0].shape[1], args[1].shape[1]
        keep = key_mask(n, tq, tk, args[3].asnumpy() if lens else None, bool(getattr(pnode.layer, "causal", False)))
    if keep is not None:
        mask = F.array(np.repeat(keep, heads, axis=0).astype(np.float32))
        scores = F.where(mask, scores, F.ones_like(scores) * -1e6)
    weights = block.dropout(F.softmax(scores, axis=-1))
    out = F.reshape(F.batch_dot(weights, v), shape=(-4, -1, heads, 0, 0))
    return block.out(F.reshape(F.transpose(out, axes=(0, 2, 1, 3)), shape=(0, 0, -1)))


class GluonGraphModel(GraphCompiled[GraphBlock]):
    backend = "mxnet"

    def _new_native(self) -> GraphBlock:
        return GraphBlock(self.spec, self.root)

    def _to_native(self, x: np.ndarray) -> Any:
        return mx.nd.array(x, dtype=x.dtype)

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.asnumpy() if hasattr(y, "asnumpy") else np.asarray(y)

    def _dry_run(self, native: GraphBlock, xs: list[Any], init: Any) -> None:
        check_init(init)
        with seeded(self._key):
            initialize(native.body, init)
            with autograd.pause(train_mode=False):
                native(*xs)  # Gluon's deferred initialization: shapes on the first forward
            for p in native.body.collect_params().values():
                p.data()  # raises if any parameter is still deferred

    def _abstract_init(self, native: GraphBlock, specs: list[Any]) -> None:
        """A symbolic trace of the graph and MXNet's ``infer_shape``: each Parameter gets its shape and no arrays,
        as list specs' abstract path (``graph.infer_parameter_shapes``). A varying dim traces at size 1."""
        shapes = {f"deferinit_input{i}": tuple(1 if d is None else int(d) for d in s.shape) for i, s in enumerate(specs)}
        with graph.tracing(shapes) as trace, autograd.predict_mode():
            outs = native(*(mx.sym.var(name) for name in shapes))
        group = mx.sym.Group(outs)
        arg_shapes, _, aux_shapes = group.infer_shape_partial(**graph.known_inputs(trace, group))
        found = dict(zip(group.list_arguments(), arg_shapes))
        found.update(zip(group.list_auxiliary_states(), aux_shapes))
        for param in native.body.collect_params().values():
            param.shape = tuple(found[param.name])

    _key: Any = None

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> Any:
        self._key = key
        try:
            return super().apply_init(dummy_inputs, init=init, key=key, abstract=abstract)
        finally:
            self._key = None

    def _native_param(self, native: GraphBlock, name: str) -> tuple[str, tuple[int, ...]]:
        p = native.body._deferinit.params[name]
        return p.name, tuple(p.shape)

    def _run(self, native: GraphBlock, xs: list[Any], training: bool) -> list[Any]:
        with autograd.pause(train_mode=training):
            return native(*xs)  # type: ignore[no-any-return]

    def _record(self, native: GraphBlock, xs: list[Any]) -> dict[str, Any]:
        """The intermediates, computed as ``_grads`` computes them (see ``MXNetModel._intermediates``: the parity
        comparison reads each gradient's branches at ReLU kinks from them)."""
        record: dict[str, Any] = {}
        with graph.inference_layers(), autograd.pause(train_mode=True):
            native.forward(*xs, record=record)
        return record

    def _grads(self, native: GraphBlock, xs: list[Any]) -> dict[str, np.ndarray]:
        params = native.body._deferinit.params
        trainable = [name for name, info in self.report.params.items() if info.trainable]
        if not trainable:  # MXNet's backward refuses a graph with nothing to differentiate
            return {}
        with graph.inference_layers():  # a training-mode pass with BatchNorm and Dropout held at inference, as list specs
            with autograd.record(train_mode=True):
                outs = [o for o in native(*xs) if np.dtype(o.dtype).kind == "f"]
                total = outs[0].sum()
                for o in outs[1:]:
                    total = total + o.sum()
            total.backward(train_mode=True)
        return {name: params[name].grad().asnumpy() for name in trainable}

    def _get(self, native: GraphBlock) -> dict[str, np.ndarray]:
        params = native.body._deferinit.params
        return {n: params[n].data().asnumpy() for n in self.report.params}

    def _set(self, native: GraphBlock, weights: Mapping[str, np.ndarray]) -> None:
        params = native.body._deferinit.params
        for name, value in weights.items():
            param = params[name]
            param.initialize(mx.init.Constant(mx.nd.array(value, dtype=np.float32)), ctx=param.list_ctx(),
                             force_reinit=True)
