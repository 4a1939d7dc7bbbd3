"""Graph specs on PyTorch: :class:`GraphNet`, an ``nn.Module`` whose ``forward(*inputs)`` runs the graph.

Its children are the spec's layers, built by the list specs' walk (``structure.TorchBuilder``), named by their
canonical segments, so ``state_dict`` keys are the canonical names (attention's d2l ``W_q``... aside, as in list
specs); the lazy modules are torch's own and find their shapes in the dry run of ``apply_init``. A layer called
twice is one module: torch shares its parameters. Attention called with separate queries, keys and values masks
keys as d2l's ``masked_softmax`` does (``-1e6`` before the softmax).
"""

# mypy: allow-subclassing-any
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from ...errors import BackendError
from ...extend import generation, register_builder
from ...graph import GraphModel
from ...layers import Embedding
from ...layers_graph import Attend, embedding_path
from ...shapes import Node
from ...spec_key import content_key
from .. import tree
from ..graph_compiled import GraphCompiled
from ..rules_cache import GRAPH_TEMPLATES
from . import fastpath
from . import tensors as tt
from .leaves import kernel_attrs, native_attr
from .modules import F32, SPEC, Step, child_name
from .structure import TorchBuilder, TorchRunner, global_hooks
from .template import snapshot

__all__ = ["GraphNet", "TorchGraphModel", "masked_attention"]


def masked_attention(m: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor | None,
                     causal: bool) -> torch.Tensor:
    """d2l's ``MultiHeadAttention.forward`` with ``valid_lens`` (``(N,)`` or ``(N, Tq)``) and a causal mask."""
    queries, keys, values = m.transpose_qkv(m.W_q(q)), m.transpose_qkv(m.W_k(k)), m.transpose_qkv(m.W_v(v))
    scores = torch.bmm(queries, keys.transpose(1, 2)) / m.scale
    if lens is not None or causal:
        n, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        keys_at = torch.arange(tk, device=scores.device)
        keep = torch.ones((n, tq, tk), dtype=torch.bool, device=scores.device)
        if lens is not None:
            per_query = lens[:, None].expand(n, tq) if lens.dim() == 1 else lens
            keep = keep & (keys_at[None, None, :] < per_query[:, :, None])
        if causal:
            keep = keep & (keys_at[None, None, :] <= torch.arange(tq, device=scores.device)[None, :, None])
        scores = scores.masked_fill(~keep.repeat_interleave(m.num_heads, dim=0), -1e6)
    weights = F.softmax(scores, dim=-1)
    return m.W_o(m.transpose_output(torch.bmm(m.dropout(weights), values)))  # type: ignore[no-any-return]


class TiedProjection(nn.Module):
    """``x @ table.T`` with the table of an embedding module elsewhere in the net (not a submodule of this one,
    so ``state_dict`` and ``parameters()`` hold it once, under the embedding)."""

    _template_own = ("table",)  # a copy of the net (template.py) ties it anew: GraphNet.adopt

    def __init__(self) -> None:
        super().__init__()
        self.table: Any = None  # a function returning the embedding's weight, set by GraphNet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.table().T  # type: ignore[no-any-return]


@register_builder("torch", Attend)
def _attend(layer: Attend, rank: int | None) -> list[Step]:
    return [Step("", TiedProjection(), SPEC)]


class GraphNet(nn.Module):
    """The native module of a graph spec: ``forward(*inputs)`` returns one tensor, or a tuple for several outputs."""

    _template_own = ("spec", "root", "_arranged")  # not copied with the modules (template.py): see adopt

    def __init__(self, spec: GraphModel, root: Node) -> None:
        super().__init__()
        built = tree.build(root, TorchBuilder(root, spec.data_format == "channels_last"))[0][0].module
        for name, module in built.named_children():
            self.add_module(name, module)
        self.adopt(spec, root)

    def adopt(self, spec: GraphModel, root: Node) -> GraphNet:
        """Sets what is not a module: the spec, its plan, the runner's arrangement of each leaf and the tied
        projections' tables (each reads its embedding's weight). Called once built, and on a copy of a template."""
        self.spec, self.root = spec, root
        self.channels_last = spec.data_format == "channels_last"
        self._arranged: dict[str, Any] = {}  # TorchRunner's modules of each leaf, kept across forwards
        for node in root.leaves():
            if isinstance(node.layer, Attend):
                emb = self.module_at(embedding_path(root, node.layer))
                self.module_at(node.path).table = lambda emb=emb: emb.weight
        return self

    def module_at(self, path: str) -> nn.Module:
        net: nn.Module = self
        for seg in path.split("."):
            net = net._modules[child_name(seg)]  # type: ignore[assignment]
        return net

    def forward(self, *inputs: torch.Tensor) -> Any:
        result = tuple(self.run(list(inputs)))
        return result if self.spec.multi_output else result[0]

    def run(self, inputs: list[torch.Tensor], record: dict[str, Any] | None = None) -> list[torch.Tensor]:
        """The outputs as a list; with ``record``, each layer position's output at the layer's first call."""
        runner = TorchRunner(self.module_at, self.channels_last, self._arranged)
        slots = list(inputs)
        for node in self.spec.nodes:
            args = [slots[a] for a in node["args"]]
            if node["op"] == "layer":
                pnode = self.root.children[node["layer"]]
                first = record is not None and pnode.path not in record
                if len(args) > 1:
                    lens = args[3] if node.get("valid_lens") else None
                    out = masked_attention(self.module_at(pnode.path), args[0], args[1], args[2], lens,
                                           bool(getattr(pnode.layer, "causal", False)))
                else:
                    out = tree.run(pnode, args[0], runner, record if first else None)
                if first:
                    record[pnode.path] = runner.record(out)  # type: ignore[index]
            elif node["op"] == "add":
                out = args[0]
                for a in args[1:]:
                    out = out + a
            elif node["op"] == "multiply":
                out = args[0]
                for a in args[1:]:
                    out = out * a
            else:
                axis = node.get("axis")
                out = torch.cat(args, runner.channel_axis(args[0].dim()) if axis is None else axis)
            slots.append(out)
        return [slots[o] for o in (self.spec.outputs if self.spec.multi_output else [self.spec.outputs])]


class TorchGraphModel(GraphCompiled[GraphNet]):
    """A graph spec on torch. A repeat abstract ``apply_init`` of an equal spec on inputs of equal shapes and dtypes
    copies the modules (meta tensors) the second one's meta dry run left (``template.py``, as list specs do)
    instead of dry-running torch's lazy modules again; the shapes it reports are still the tensors torch made."""

    backend = "torch"
    _cloned: GraphNet | None = None  # the last template copy, until its abstract init
    _template_at: tuple | None = None  # the template key of the current abstract init

    def _new_native(self) -> GraphNet:
        return GraphNet(self.spec, self.root)

    def _native_for(self, arrays: list[Any], abstract: bool) -> GraphNet:
        self._cloned = self._template_at = None
        if not (abstract and fastpath.ENABLED) or global_hooks():
            return self._new_native()  # (a user's global module hook sees every dry run, as it always did)
        if "_content" not in self.__dict__:
            self._content = content_key(self.spec)
        content = self._content
        if content is None or any(None in a.shape for a in arrays):
            return self._new_native()
        self._template_at = key = (content, tuple((tuple(a.shape), a.dtype) for a in arrays), generation(),
                                   torch.get_default_dtype())
        template = GRAPH_TEMPLATES.get(key)
        if template is None:
            return self._new_native()
        self._cloned = template.clone("meta")[0].adopt(self.spec, self.root)  # type: ignore[attr-defined]
        return self._cloned

    def _keep(self, native: GraphNet) -> None:
        """After an abstract dry run: mark its key the first time, keep a template the second."""
        key, self._template_at = self._template_at, None
        if key is None:
            return
        if GRAPH_TEMPLATES.turn(key):
            GRAPH_TEMPLATES.keep(key, snapshot(native, {}, {}, False))

    def _to_native(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)

    def _dry_run(self, native: GraphNet, xs: list[Any], init: Any) -> None:
        with tt.seeded(self._key):
            for node in self.root.leaves():  # torch ships no lazy Embedding: allocated first, as by a constructor
                if isinstance(node.layer, Embedding):
                    tt.allocate(native.module_at(node.path), (node.layer.num_embeddings, node.layer.dim),
                                torch.device("cpu"))
            native.eval()
            with torch.no_grad():
                native(*xs)
            if init is not None:
                with torch.no_grad():
                    if getattr(getattr(init, "func", init), "__module__", "") == "torch.nn.init":
                        for node in self.root.leaves():
                            for attr in kernel_attrs(node.layer):
                                init(native.module_at(node.path).get_parameter(attr))
                    else:
                        native.apply(init)
        left = [p for p, m in native.named_modules() if isinstance(m, LazyModuleMixin)]
        left += [n for n, t in native.named_parameters() if is_lazy(t)]
        if left:
            raise BackendError(f"{self._who()}: the dry run left uninitialized modules or tensors: {left}")

    def _abstract_init(self, native: GraphNet, specs: list[Any]) -> None:
        """torch's own lazy modules on the meta device: shapes only, no parameter memory (as list specs); a copy of
        a template (``_native_for``) is that already."""
        cloned, self._cloned = self._cloned, None
        if cloned is native:
            return
        meta = torch.device("meta")
        for node in self.root.leaves():
            if isinstance(node.layer, Embedding):
                tt.allocate(native.module_at(node.path), (node.layer.num_embeddings, node.layer.dim), meta)
        tt.rehome(native, "meta")
        native.eval()
        xs = [torch.empty(s.shape, dtype=torch.float32 if s.dtype == "float32" else torch.int64, device=meta)
              for s in specs]
        with torch.no_grad(), meta:
            native(*xs)
        self._keep(native)

    _key: Any = None

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> Any:
        self._key = key
        try:
            return super().apply_init(dummy_inputs, init=init, key=key, abstract=abstract)
        finally:
            self._key = None

    @property
    def _nodes(self) -> dict[str, Node]:
        """Every plan position by path, first occurrence (the plan is fixed: computed once)."""
        nodes: dict[str, Node] | None = self.__dict__.get("_node_at")
        if nodes is None:
            nodes = {}
            for c in self.root.walk():
                nodes.setdefault(c.path, c)
            self._node_at = nodes
        return nodes

    def _tensor(self, native: GraphNet, name: str) -> torch.Tensor:
        owner, _, pname = name.rpartition(".")
        node = self._nodes[owner]
        t: Any = native.module_at(owner)
        for part in native_attr(node.layer, pname).split("."):
            t = getattr(t, part)
        return t  # type: ignore[no-any-return]

    def _native_param(self, native: GraphNet, name: str) -> tuple[str, tuple[int, ...]]:
        owner, _, pname = name.rpartition(".")
        node = self._nodes[owner]
        native_name = ".".join(child_name(s) for s in owner.split(".")) + "." + native_attr(node.layer, pname)
        return native_name, tuple(self._tensor(native, name).shape)

    def _run(self, native: GraphNet, xs: list[Any], training: bool) -> list[Any]:
        if native.training != training:
            native.train(training)
        out = native(*xs)
        return list(out) if self.spec.multi_output else [out]

    def _record(self, native: GraphNet, xs: list[Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        native.eval()
        with torch.no_grad():
            native.run(xs, record)
        return record

    def _grads(self, native: GraphNet, xs: list[Any]) -> dict[str, np.ndarray]:
        names = [n for n, p in self.report.params.items() if p.trainable]
        params = [self._tensor(native, n) for n in names]
        native.eval()
        with torch.enable_grad():
            total = sum(o.sum() for o in native.run(xs) if o.is_floating_point())
            grads = torch.autograd.grad(total, params, allow_unused=True)
        return {n: (np.zeros(tuple(p.shape), np.float32) if g is None else g.detach().to("cpu", F32).numpy())
                for n, p, g in zip(names, params, grads)}

    def _get(self, native: GraphNet) -> dict[str, np.ndarray]:
        return {n: self._tensor(native, n).detach().to("cpu", F32).numpy() for n in self.report.params}

    def _set(self, native: GraphNet, weights: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self._tensor(native, name).copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
