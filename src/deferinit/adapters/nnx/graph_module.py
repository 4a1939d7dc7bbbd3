# mypy: disable-error-code="misc"
"""Graph specs on Flax NNX: :class:`GraphModule`, an ``nnx.Module`` whose ``__call__(*inputs)`` runs the graph.

Its ``layers`` are the list specs' own NNX modules (``structure.NnxBuilder``), built in ``apply_init`` once the
graph's reference rules know every layer's input dims (NNX modules are eager), with ``rngs=nnx.Rngs(key)``, under
``nnx.eval_shape`` when abstract; each created variable's shape is checked against the rules, as for list specs.
A layer called twice is one module object: NNX shares its state. Attention called with separate queries, keys
and values is ``nnx.MultiHeadAttention`` with ``inputs_k``, ``inputs_v`` and a ``mask`` (True where a query may
attend, built with jax.numpy so the forward jits); ``Attend`` is NNX's own ``nnx.Embed.attend`` on the embedding.
The forward runs under ``nnx.jit``; intermediates eagerly, position by position (``tree.run``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...errors import ShapeMismatchError, SpecError
from ...extend import register_builder
from ...graph_run import key_mask
from ...graph_shapes import infer_graph
from ...layers_graph import Attend, embedding_path
from ...layouts import contiguous
from ...shapes import Node
from .. import tree
from ..graph_compiled import GraphCompiled
from ..jax.host_init import key_words
from ..jax.modules import activate
from . import modules as M
from .leaves import Made
from .structure import Built, NnxBuilder, find, write

__all__ = ["GraphModule", "NnxGraphModel"]


class _NoModule(nnx.Module):
    """The position of an ``Attend``: no variables; the graph calls the embedding's ``attend`` instead."""

    def __call__(self, x: Any, train: bool = False) -> Any:
        raise RuntimeError("Attend runs through its embedding")  # pragma: no cover


@register_builder("nnx", Attend)
def _attend(node: Node, cf: bool, rngs: nnx.Rngs, in_shape: tuple) -> Made:
    return _NoModule(), {}


class _Static:
    """Plain data an NNX module carries as static metadata, compared and hashed by identity (spec and plan)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _mask(q: Any, k: Any, lens: Any, causal: bool) -> Any:
    """``(N, 1, Tq, Tk)`` (a head axis for ``nnx.MultiHeadAttention``): :func:`~deferinit.graph_run.key_mask`."""
    keep = key_mask(q.shape[0], q.shape[1], k.shape[1], lens, causal, xp=jnp)
    return None if keep is None else keep[:, None]


class _Runner(tree.Runner[Any]):
    def __init__(self, native: nnx.Module, built: Built, cf: bool, train: bool) -> None:
        self.native, self.built, self.cf, self.train = native, built, cf, train

    def leaf(self, node: Node, x: Any) -> Any:
        return find(self.native, self.built.native[node.path])(x, self.train)

    def activation(self, name: str, x: Any) -> Any:
        return activate(name, x)

    def concat(self, xs: list, axis: int) -> Any:
        return jnp.concatenate(xs, axis=axis)

    def channel_axis(self, rank: int) -> int:
        return 1 if self.cf or rank == 2 else rank - 1


class GraphModule(nnx.Module):
    """``module(*inputs)`` is the graph's outputs as a list; ``layers`` holds one NNX module per spec layer."""

    def __init__(self, spec: Any, root: Node, built: Built, layers: list) -> None:
        self.layers = nnx.List(layers)
        self.graph = _Static((spec, root, built))

    def __call__(self, *inputs: Any, train: bool = False, record: dict | None = None) -> list:
        spec, root, built = self.graph.value
        cf = spec.data_format == "channels_first"
        runner = _Runner(self, built, cf, train)
        paths = [c.path for c in root.children]
        slots = list(inputs)
        for node in spec.nodes:
            args = [slots[a] for a in node["args"]]
            if node["op"] == "layer":
                pnode = root.children[node["layer"]]
                first = record is not None and pnode.path not in record
                if isinstance(pnode.layer, Attend):
                    out = self.layers[paths.index(embedding_path(root, pnode.layer))].attend(args[0])
                elif len(args) > 1 or getattr(pnode.layer, "causal", False):
                    q, k, v = (args * 3)[:3] if len(args) == 1 else args[:3]
                    lens = args[3] if node.get("valid_lens") else None
                    out = nnx.MultiHeadAttention.__call__(self.layers[node["layer"]], q, k, v,
                                                          mask=_mask(q, k, lens, bool(pnode.layer.causal)),
                                                          deterministic=not train)
                else:
                    out = tree.run(pnode, args[0], runner, record if first else None)
                if first:
                    record[pnode.path] = out  # type: ignore[index]
            elif node["op"] in ("add", "multiply"):
                out = args[0]
                for a in args[1:]:
                    out = out + a if node["op"] == "add" else out * a
            else:
                axis = node.get("axis")
                out = jnp.concatenate(args, axis=runner.channel_axis(args[0].ndim) if axis is None else axis)
            slots.append(out)
        return [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]


def _infer(m: GraphModule, xs: tuple) -> list:
    return m(*xs, train=False)


def _train(m: GraphModule, xs: tuple) -> list:
    return m(*xs, train=True)


class NnxGraphModel(GraphCompiled[Any]):
    """``native`` is the :class:`GraphModule`: ``model.native(tokens, lens)`` is ``model((tokens, lens))`` as a
    list of outputs; ``nnx.state``, ``nnx.split``/``merge``, ``nnx.grad`` work on it as on any NNX module."""

    backend = "nnx"
    _key: Any = None

    def _new_native(self) -> Any:
        return GraphModule(self.spec, self.root, Built(), [])  # its layers are built by apply_init

    def _to_native(self, x: np.ndarray) -> Any:
        return jnp.asarray(x)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y)

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> Any:
        self._key = key
        try:
            return super().apply_init(dummy_inputs, init=init, key=key, abstract=abstract)
        finally:
            self._key = None

    def _build(self, native: GraphModule, shapes: list[Any], abstract: bool) -> None:
        inference = infer_graph(self.spec, shapes, backend=self.backend, root=self.root)
        key = self._key if isinstance(self._key, (int, np.integer)) else 0
        holder: list[NnxBuilder] = []

        def make() -> Any:
            builder = NnxBuilder(self.root, self.spec.data_format == "channels_first", nnx.Rngs(int(key)),
                                 inference.inputs)
            holder[:] = [builder]
            return tree.build(self.root, builder)[0]
        if abstract:
            made = nnx.eval_shape(make)
        else:
            with M.host_draws(key_words(jax.random.key(int(key)))):  # NNX's default initializers, drawn in NumPy
                made = make()
        built = holder[0].built
        native.layers = made.layers
        native.graph = _Static((self.spec, self.root, built))
        created = len(nnx.to_flat_state(nnx.state(native, nnx.Any(nnx.Param, nnx.BatchStat))))
        held = len({k for name in built.variables for k in built.keys(name)})
        if created != held:
            raise ShapeMismatchError(f"{self._who()}: NNX created {created} variables where the spec's layers hold "
                                     f"{held}")

    def _dry_run(self, native: Any, xs: list[Any], init: Any) -> None:
        if init is not None:
            raise SpecError(f"init: graph specs on nnx take None (NNX's own initializers) or a portable initializer, "
                            f"received {init!r}")
        self._build(native, [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs], False)
        native(*xs)  # the dry run: NNX's modules on the inputs, as the other backends' deferred initialization

    def _abstract_init(self, native: Any, specs: list[Any]) -> None:
        self._build(native, specs, True)

    @staticmethod
    def _built(native: Any) -> Built:
        return native.graph.value[2]  # type: ignore[no-any-return]

    def _native_param(self, native: Any, name: str) -> tuple[str, tuple[int, ...]]:
        built = self._built(native)
        layout, keys = built.variables[name][1], built.keys(name)
        shapes = [tuple(int(d) for d in find(native, k).shape) for k in keys]
        return "/".join(str(p) for p in keys[0]), tuple(layout.canonical_shape(shapes))  # checked by the caller

    def _run(self, native: Any, xs: list[Any], training: bool) -> list[Any]:
        # nnx.jit with the module bound once by nnx.cached_partial, as list specs' forward: a new nnx.jit per call
        # walked the whole module graph on every call (the bench's GPT-2 ran 3.4x and BERT-base 5.7x a
        # hand-written NNX model); variables are still read and written through (load_weights, batch statistics)
        fns = self.__dict__.setdefault("_jitted", {})
        bound = fns.get(training)
        if bound is None or bound[0] is not native:
            bound = fns[training] = (native, nnx.cached_partial(nnx.jit(_train if training else _infer), native))
        return bound[1](tuple(xs))  # type: ignore[no-any-return]

    def _record(self, native: Any, xs: list[Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        native(*xs, record=record)
        return record

    def _grads(self, native: Any, xs: list[Any]) -> dict[str, np.ndarray]:
        def total(m: Any) -> Any:
            return sum(jnp.sum(o) for o in m(*xs) if jnp.issubdtype(o.dtype, jnp.floating))
        grads = nnx.grad(total)(native)
        flat = {tuple(p): v for p, v in nnx.to_flat_state(grads)}
        built, out = self._built(native), {}
        for name, info in self.report.params.items():
            if info.trainable:
                layout = built.variables[name][1]
                out[name] = contiguous(layout.grad([np.asarray(flat[k][...]) for k in built.keys(name)]))
        return out

    def _get(self, native: Any) -> dict[str, np.ndarray]:
        built, out = self._built(native), {}
        for name in self.report.params:
            layout = built.variables[name][1]
            parts = [np.asarray(find(native, k)[...]) for k in built.keys(name)]
            out[name] = contiguous(layout.canonical(parts))
        return out

    def _set(self, native: Any, weights: Mapping[str, np.ndarray]) -> None:
        built = self._built(native)
        shares: dict[tuple, np.ndarray] = {}  # a variable two canonical parameters share holds their sum
        for name, value in weights.items():
            layout, keys = built.variables[name][1], built.keys(name)
            shapes = [tuple(find(native, k).shape) for k in keys]
            for k, part in zip(keys, layout.native(np.asarray(value, np.float32), shapes)):
                shares[k] = part if k not in shares else shares[k] + part
        write(native, {k: jax.device_put(contiguous(v)) for k, v in shares.items()})
