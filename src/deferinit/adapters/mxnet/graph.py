"""Gluon's graph machinery as the MXNet backend uses it: the tracing context, shape inference without allocating,
and the graph cache of the containers.

Gluon traces a hybridized block once and reuses that graph whatever the mode, so :class:`Graph` keeps one cached
graph per mode (training adds the BatchNorm statistics outputs, see ``modules.BatchNorm``) and, where
TensorFlow-style ``"same"`` padding with a stride depends on the input size, per input shape. Once Gluon has built
the inference graph, ``fastpath.call_inference`` calls its ``CachedOp`` directly. It touches Gluon 1.9's private
cache attributes; MXNet 1.9.1 is the last 1.x release, so they will not move.

A trace also records, where asked (:class:`Observer`), the symbol each observed block returned: the report's
per-layer shapes come from MXNet's own symbolic shape inference of that traced graph (:func:`observed_shapes`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Mapping

from mxnet import autograd, gluon, symbol

from . import fastpath

__all__ = ["tracing", "inference_layers", "frozen", "current", "traced_rank", "known_inputs", "infer_parameter_shapes", "Graph",
           "Observer", "observed_shapes"]

# ------------------------------------------------------------------------------------------ tracing context
_LOCAL = threading.local()


class _Trace:
    """What one symbolic trace knows: the concrete input shapes, and the BatchNorm statistics to output."""

    def __init__(self, inputs: dict[str, tuple]) -> None:
        self.inputs = inputs
        self.stats: dict[Any, tuple[Any, Any]] = {}  # by BatchNorm, insertion-ordered; a tied BN chains its updates


@contextmanager
def tracing(inputs: dict[str, tuple]) -> Iterator[_Trace]:
    stack = _LOCAL.__dict__.setdefault("stack", [])
    trace = _Trace(inputs)
    stack.append(trace)
    try:
        yield trace
    finally:
        stack.pop()


def current() -> _Trace | None:
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


def frozen() -> bool:
    return getattr(_LOCAL, "frozen", False)


@contextmanager
def inference_layers() -> Iterator[None]:
    """BatchNorm and Dropout behave as in inference while MXNet runs in training mode. Gradients of the inference
    model need it: after an inference-mode forward, MXNet 1.9.1's oneDNN max pooling has no workspace and its
    backward routes the gradient wrongly (measured against finite differences), so such gradients are taken in a
    training-mode pass with these two layers held at their inference behaviour (a graph of its own)."""
    before = frozen()
    _LOCAL.frozen = True
    try:
        yield
    finally:
        _LOCAL.frozen = before


def traced_rank(x: Any) -> int | None:
    """The rank of symbol ``x`` in the current trace (None outside one)."""
    trace = current()
    if trace is None:
        return None
    shape = x.infer_shape_partial(**known_inputs(trace, x))[1][0]
    return len(shape) if shape else None


def known_inputs(trace: _Trace, x: Any) -> dict[str, tuple]:
    """The trace's input shapes that symbol ``x`` takes (MXNet refuses a keyword it does not know: in a graph spec's
    trace, a branch may not depend on every input)."""
    if len(trace.inputs) == 1:
        return trace.inputs
    args = set(x.list_arguments())
    return {k: v for k, v in trace.inputs.items() if k in args}


def infer_parameter_shapes(net: gluon.HybridBlock, shape: tuple, observer: "Observer | None" = None) -> None:
    """Gluon's own shape inference without allocating: trace ``net`` symbolically, run ``infer_shape`` and set each
    Parameter's shape (what ``HybridBlock.infer_shape`` does, minus its need for an input NDArray). ``shape`` is
    concrete: a varying dim gets a stand-in size (``_standin.py``), since MXNet reads its unknown-dim marker 0 as
    "unknown" everywhere downstream and leaves a Flatten's output, a recurrent layer's or attention's input size,
    and the weights behind them, unknown (measured: GRU weight_ih (96, 0) for a (2, None) token input).
    With an ``observer``, the same ``infer_shape`` call also gives the output shape of every observed position
    (and ``""``, the model's output), kept in ``observer.shapes``."""
    shape = tuple(int(d) for d in shape)
    with tracing({"data": shape}), autograd.predict_mode(), observer or nullcontext():
        out = net(symbol.var("data"))
    seen = observer.symbols() if observer is not None else {}
    group = symbol.Group([out] + [_first(s) for s in seen.values()]) if seen else out
    arg_shapes, out_shapes, aux_shapes = group.infer_shape_partial(data=shape)
    found = dict(zip(group.list_arguments(), arg_shapes))
    found.update(zip(group.list_auxiliary_states(), aux_shapes))
    for param in net.collect_params().values():
        param.shape = tuple(found[param.name])
    if observer is not None:
        observer.shapes = dict(zip([""] + list(seen), map(tuple, out_shapes)))


# ------------------------------------------------------------------------------------------ observed shapes
class Observer:
    """The symbol each position's block returns while a symbolic trace of the model runs (Gluon forward hooks,
    attached only for the trace: in a hybridized model's first call, the children are called with symbols).
    A block at several positions (a tied layer) is called once per use, in the order of the positions; a tied
    container's insides are called again but are positions only once, under their first occurrence."""

    def __init__(self, positions: Mapping[str, gluon.Block]) -> None:
        self.positions = dict(positions)
        self.calls: dict[int, list[Any]] = {}
        self.shapes: dict[str, tuple] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "Observer":
        blocks = {id(b): b for b in self.positions.values()}
        self._handles = [b.register_forward_hook(self._hook) for b in blocks.values()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.detach()
        self._handles = []

    def _hook(self, block: gluon.Block, args: Any, out: Any) -> None:
        if isinstance(out, symbol.Symbol):
            self.calls.setdefault(id(block), []).append(out)

    def symbols(self) -> dict[str, Any]:
        """``{path: symbol}``: the k-th position of a block gets its k-th call (a position never called is absent,
        which the report check names)."""
        taken: dict[int, int] = {}
        found = {}
        for path, block in self.positions.items():
            k = taken[id(block)] = taken.get(id(block), -1) + 1
            calls = self.calls.get(id(block), [])
            if k < len(calls):
                found[path] = calls[k]
        return found


def observed_shapes(observer: Observer, shape: tuple) -> dict[str, tuple]:
    """MXNet's symbolic shape inference of the symbols ``observer`` saw (nothing is allocated or run)."""
    seen = observer.symbols()
    if not seen:
        return {}
    _, out_shapes, _ = symbol.Group([_first(s) for s in seen.values()]).infer_shape_partial(data=tuple(shape))
    return dict(zip(seen, map(tuple, out_shapes)))


def _first(sym: Any) -> Any:
    """A block's output symbol as one output (a multi-output symbol's first, as Gluon returns it)."""
    return sym[0] if len(sym.list_outputs()) > 1 else sym


# ------------------------------------------------------------------------------------------ graph cache
_GLUON_CACHE = ("_cached_graph", "_cached_op", "_cached_op_args", "_in_format", "_out_format")
_MAX_GRAPHS = 8


def _descendants(block: gluon.Block) -> Iterator[gluon.Block]:
    for child in block._children.values():
        yield child
        yield from _descendants(child)


class Graph:
    """Mixin for a HybridBlock: one Gluon cache per key (mode, and input shape where padding depends on it), and the
    BatchNorm statistics outputs of training-mode graphs written back after each call."""

    _cached_graph: Any  # Gluon's HybridBlock attributes, for the type checker
    _out_format: Any

    def _graph_key(self, args: tuple) -> tuple:
        d = self.__dict__
        if "_di_shaped" not in d:
            blocks = _descendants(self)  # type: ignore[arg-type]
            d["_di_shaped"] = any(getattr(b, "shape_dependent", False) for b in blocks)
        mode: tuple = (bool(autograd.is_training()), frozen())
        if not mode[0] and autograd.is_recording():  # an inference graph that will be differentiated: relu6's
            mode += ("recorded",)                      # exact kinks (activations.py), which plain inference skips
        return mode + (tuple(args[0].shape[1:]),) if d["_di_shaped"] else mode

    def _get_graph(self, *args):  # type: ignore[no-untyped-def]
        if not self._cached_graph:  # type: ignore[attr-defined]
            with tracing({"data": tuple(args[0].shape)}) as trace:
                inputs, out = super()._get_graph(*args)  # type: ignore[misc]
            d = self.__dict__
            d["_di_key"] = self._graph_key(args)
            d["_di_stats"] = [(bn.running_mean, bn.running_var) for bn in trace.stats]
            if trace.stats:
                extra = [s for pair in trace.stats.values() for s in pair]
                self._cached_graph = inputs, symbol.Group([out] + extra)
                self._out_format = [self._out_format, [0] * len(extra)]
        return self._cached_graph  # type: ignore[attr-defined]

    def _call_cached_op(self, *args):  # type: ignore[no-untyped-def]
        key = self._graph_key(args)
        d = self.__dict__
        if d.get("_di_key") != key:
            store = d.setdefault("_di_store", OrderedDict())
            if self._cached_graph and d.get("_di_key") is not None:  # type: ignore[attr-defined]
                store[d["_di_key"]] = tuple(getattr(self, a) for a in _GLUON_CACHE) + (d.get("_di_stats", []),)
                while len(store) > _MAX_GRAPHS:
                    store.popitem(last=False)
            saved: tuple = store.pop(key, None) or ((), None, [], None, None, [])
            for name, value in zip(_GLUON_CACHE + ("_di_stats",), saved):
                object.__setattr__(self, name, value)
            d["_di_key"] = key
        out = super()._call_cached_op(*args)  # type: ignore[misc]
        stats = d.get("_di_stats")
        if stats:
            out, new = out
            with autograd.pause():
                for i, (mean, var) in enumerate(stats):
                    new[2 * i].copyto(mean.data())
                    new[2 * i + 1].copyto(var.data())
        elif key == fastpath.INFERENCE and d.get("_di_fast") is None and fastpath.ENABLED:
            d["_di_fast"] = fastpath.Direct.of(self)
        return out

    def _clear_cached_op(self) -> None:
        super()._clear_cached_op()  # type: ignore[misc]
        for name in ("_di_store", "_di_key", "_di_stats", "_di_shaped", "_di_fast"):
            self.__dict__.pop(name, None)


