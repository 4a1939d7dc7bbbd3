# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""Graph specs on JAX (Flax linen): :class:`GraphModule`, a Flax module whose ``__call__(*inputs)`` runs the graph.

Its submodules are the list specs' own Flax modules (``structure.build``), adopted under the same names, so the
variable tree and every canonical <-> Flax layout are the list specs'; Flax's ``init`` finds the shapes from the
inputs (its own deferred initialization). Attention called with separate queries, keys and values is Flax's
``MultiHeadDotProductAttention`` with ``inputs_k``, ``inputs_v`` and a ``mask`` (True where a query may attend:
masked scores get Flax's large negative, which weighs them exactly 0 as d2l's -1e6 does). ``Attend`` is Flax's
own ``nn.Embed.attend`` on the embedding module.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...errors import SpecError
from ...extend import register_builder
from ...graph_run import key_mask
from ...layers_graph import Attend, embedding_path
from ...layouts import contiguous
from ...shapes import Node
from ..graph_compiled import GraphCompiled
from . import modules as M
from . import params as T
from . import structure

__all__ = ["GraphModule", "FlaxGraphModel"]


class _NoModule(nn.Module):
    """The position of an ``Attend``: no variables; the graph calls the embedding's ``attend`` instead."""

    def __call__(self, x: Any, train: bool = False) -> Any:
        raise RuntimeError("Attend runs through its embedding")  # pragma: no cover


@register_builder("jax", Attend)
def _attend(node: Node, cf: bool, name: str) -> T.Made:
    return _NoModule(name=name), {}


class GraphModule(nn.Module):
    layers: tuple = ()
    graph: Any = None  # (spec, root): plain data, read only
    preserve_adopted_names: ClassVar[bool] = True

    def __call__(self, *inputs: Any, train: bool = False) -> Any:
        spec, root = self.graph
        record = M._RECORD.get()  # set by the adapter's intermediates: every position's output, first call kept
        slots = list(inputs)
        for node in spec.nodes:
            args = [slots[a] for a in node["args"]]
            if node["op"] == "layer":
                k = node["layer"]
                layer, path = root.children[k].layer, root.children[k].path
                if isinstance(layer, Attend):
                    emb = self.layers[[c.path for c in root.children].index(embedding_path(root, layer))]
                    out = emb.attend(args[0])
                    slots.append(out if record is None or path in record else record.setdefault(path, out))
                    continue
                if len(args) == 1 and getattr(layer, "causal", False):
                    args = args * 3
                if len(args) > 1:
                    q, kk, v = args[:3]
                    keep = key_mask(q.shape[0], q.shape[1], kk.shape[1], args[3] if node.get("valid_lens") else None,
                                    bool(getattr(layer, "causal", False)), xp=jnp)
                    mask = None if keep is None else keep[:, None]
                    out = nn.MultiHeadDotProductAttention.__call__(self.layers[k], q, kk, v, mask=mask,
                                                                   deterministic=not train)
                else:
                    out = self.layers[k](args[0], train)
                if record is not None and path not in record:
                    record[path] = out
            elif node["op"] == "add":
                out = args[0]
                for a in args[1:]:
                    out = out + a
            elif node["op"] == "multiply":
                out = args[0]
                for a in args[1:]:
                    out = out * a
            else:
                axis, rank = node.get("axis"), args[0].ndim
                if axis is None:
                    axis = 1 if spec.data_format == "channels_first" or rank == 2 else rank - 1
                out = jnp.concatenate(args, axis=axis)
            slots.append(out)
        return [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]


def _st(native: Any) -> dict[str, Any]:
    return native._deferinit_graph  # type: ignore[no-any-return]


class FlaxGraphModel(GraphCompiled[Any]):
    """``native`` is the :class:`GraphModule`; ``variables`` what its ``apply`` takes:
    ``model.native.apply(model.variables, tokens, lens)`` is ``model((tokens, lens))`` (a list of outputs)."""

    backend = "jax"

    @property
    def variables(self) -> dict:
        _ = self.report
        return _st(self.native)["variables"]  # type: ignore[no-any-return]

    def _new_native(self) -> Any:
        module, built = structure.build(self.root, self.spec.data_format)
        native = GraphModule(layers=module.layers, graph=(self.spec, self.root))
        # Flax modules are frozen dataclasses: the variables ride on the instance, as in list specs
        object.__setattr__(native, "_deferinit_graph", {"built": built, "variables": None, "fns": {}, "rng": None})
        return native

    def _to_native(self, x: np.ndarray) -> Any:
        return jnp.asarray(x)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y)

    def _dry_run(self, native: Any, xs: list[Any], init: Any) -> None:
        if init is not None:
            raise SpecError(f"init: graph specs on jax take None or a portable initializer so far, received {init!r}")
        key = self._key if isinstance(self._key, (int, np.integer)) else 0
        _st(native)["variables"] = native.init(jax.random.PRNGKey(int(key)), *xs)
        _st(native)["rng"] = jax.random.fold_in(jax.random.PRNGKey(int(key)), 0x5EED)  # dropout, as list specs

    def _abstract_init(self, native: Any, specs: list[Any]) -> None:
        """Flax's own init under ``jax.eval_shape``: variables as shapes only, nothing allocated (as list specs)."""
        key = self._key if isinstance(self._key, (int, np.integer)) else 0
        xs = [jax.ShapeDtypeStruct(s.shape, jnp.float32 if s.dtype == "float32" else jnp.int32) for s in specs]
        _st(native)["variables"] = jax.eval_shape(native.init, jax.random.PRNGKey(int(key)), *xs)

    _key: Any = None

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> Any:
        self._key = key
        try:
            return super().apply_init(dummy_inputs, init=init, key=key, abstract=abstract)
        finally:
            self._key = None

    def _native_param(self, native: Any, name: str) -> tuple[str, tuple[int, ...]]:
        path, layout = _st(native)["built"].variables[name]
        shapes = [tuple(T.get(_st(native)["variables"], leaf.keys(path)).shape) for leaf in layout.leaves]
        return layout.native_name(path), tuple(layout.canonical_shape(shapes))

    def _fn(self, native: Any, training: bool) -> Any:
        """``native.apply`` under ``jax.jit``, one per mode (compiled once per input shapes, as list specs'; the
        compiled functions are dropped with the checked input signatures). Training: batch statistics updated
        (``mutable=["batch_stats"]``), the dropout key advanced."""
        fns = _st(native)["fns"]
        if len(self._checked) > 256:  # as list specs: past 256 input signatures, drop the checks and compilations
            self._checked.clear()
            fns.clear()
        fn = fns.get(training)  # type: ignore[call-overload]
        if fn is None:
            if training:
                def step(v: Any, rng: Any, *xs: Any) -> Any:
                    rng, sub = jax.random.split(rng)
                    outs, updates = native.apply(v, *xs, train=True, rngs={"dropout": sub}, mutable=["batch_stats"])
                    return outs, updates, rng
                fn = jax.jit(step)
            else:
                fn = jax.jit(native.apply)
            fns[training] = fn
        return fn

    def _run(self, native: Any, xs: list[Any], training: bool) -> list[Any]:
        st = _st(native)
        if not training:
            return self._fn(native, False)(st["variables"], *xs)  # type: ignore[no-any-return]
        if st["rng"] is None:
            st["rng"] = jax.random.fold_in(jax.random.PRNGKey(0), 0x5EED)
        outs, updates, st["rng"] = self._fn(native, True)(st["variables"], st["rng"], *xs)
        if updates:
            st["variables"] = {**st["variables"], **updates}
        return outs  # type: ignore[no-any-return]

    def _record(self, native: Any, xs: list[Any]) -> dict[str, Any]:
        fns = _st(native)["fns"]
        if "record" not in fns:
            def run(v: Any, *a: Any) -> dict:
                record: dict[str, Any] = {}
                token = M.recording(record)
                try:
                    native.apply(v, *a)
                finally:
                    M._RECORD.reset(token)
                return record
            fns["record"] = jax.jit(run)
        return fns["record"](_st(native)["variables"], *xs)  # type: ignore[no-any-return]

    def _grads(self, native: Any, xs: list[Any]) -> dict[str, np.ndarray]:
        variables = _st(native)["variables"]
        fns = _st(native)["fns"]
        if "grad" not in fns:
            def total(params: Any, rest: Any, *a: Any) -> Any:
                outs = native.apply({**rest, "params": params}, *a)
                return sum(jnp.sum(o) for o in outs if jnp.issubdtype(o.dtype, jnp.floating))
            fns["grad"] = jax.jit(jax.grad(total))
        grads = fns["grad"](variables["params"], {c: v for c, v in variables.items() if c != "params"}, *xs)
        out = {}
        for name, info in self.report.params.items():
            if info.trainable:
                path, layout = _st(native)["built"].variables[name]
                parts = [np.asarray(T.get(grads, leaf.keys(path)[1:])) for leaf in layout.leaves]  # params only
                out[name] = contiguous(layout.grad(parts))
        return out

    def _get(self, native: Any) -> dict[str, np.ndarray]:
        out = {}
        for name in self.report.params:
            path, layout = _st(native)["built"].variables[name]
            parts = [np.asarray(T.get(_st(native)["variables"], leaf.keys(path))) for leaf in layout.leaves]
            out[name] = contiguous(layout.canonical(parts))
        return out

    def _set(self, native: Any, weights: Mapping[str, np.ndarray]) -> None:
        variables = _st(native)["variables"]
        shares: dict[tuple, np.ndarray] = {}  # a variable two canonical parameters share holds their sum
        for name, value in weights.items():
            path, layout = _st(native)["built"].variables[name]
            keys = [leaf.keys(path) for leaf in layout.leaves]
            shapes = [tuple(T.get(variables, k).shape) for k in keys]
            for k, part in zip(keys, layout.native(np.asarray(value, np.float32), shapes)):
                shares[k] = part if k not in shares else shares[k] + part
        new = jax.tree_util.tree_map(lambda a: a, dict(variables))
        new = {c: dict(v) for c, v in new.items()}
        for k, value in shares.items():
            T.put(new, k, jax.device_put(contiguous(value)))
        _st(native)["variables"] = new
