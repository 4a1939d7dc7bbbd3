"""Graph specs (Keras-functional style): ``di.Input``, layers called on symbolic tensors, ``di.add``,
``di.multiply``, ``di.concat``, and ``LazyModel(inputs=..., outputs=...)``.

A symbolic tensor records only how it was made. ``LazyModel(inputs=, outputs=)`` turns the tensors into plain
data (:class:`GraphModel`): the layers (each once, in the order of their first call; a layer object called twice
is one layer with tied parameters), the inputs (name and dtype) and the calls, each reading earlier *slots*
(slot ``i < len(inputs)`` is input ``i``, slot ``len(inputs) + j`` is call ``j``'s output). That form is what is
validated, serialized and walked, so a spec read from a file gets the same checks as one traced in Python.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import SpecError
from .spec import _NAME, Layer, LazyModel, check_int, show

__all__ = ["Input", "SymbolicTensor", "GraphModel", "add", "multiply", "concat", "OPS", "input_name"]

#: the graph operations that are not layers (no parameters)
OPS = ("add", "multiply", "concat")
_DTYPES = ("float32", "float64", "float16", "int32", "int64")
_counter = itertools.count()


class SymbolicTensor:
    """What a layer call on graph inputs returns: the call that made it, never any data."""

    __slots__ = ("op", "args", "attrs", "order", "roots", "uses", "input_name", "dtype", "__weakref__")

    def __init__(self, op: Any, args: tuple["SymbolicTensor", ...], attrs: dict[str, Any]) -> None:
        self.op, self.args, self.attrs = op, args, attrs
        self.order = next(_counter)
        self.uses: list[SymbolicTensor] = []  # every tensor made from this one (read on Inputs: the whole graph)
        self.input_name: str | None = None
        self.dtype: str | None = None
        self.roots: tuple[SymbolicTensor, ...] = tuple(dict.fromkeys(r for a in args for r in a.roots))
        for root in self.roots:
            root.uses.append(self)

    def describe(self) -> str:
        if self.op is None:
            return f"Input '{self.input_name}'" if self.input_name else "an unnamed Input"
        what = self.op if isinstance(self.op, str) else f"{type(self.op).__name__}" + (
            f" '{self.op.name}'" if self.op.name else "")
        return f"the output of {what} (tensor #{self.order})"

    def __repr__(self) -> str:
        return f"<deferinit symbolic tensor: {self.describe()}>"


def Input(*, name: str | None = None, dtype: str = "float32") -> SymbolicTensor:  # noqa: N802 - the contract
    """A graph input. It has no dims: they come from the data (``infer_shapes(spec, [shape, ...])``)."""
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise SpecError(f"Input: name must be None or a string of letters, digits, '_' and '-'. Received: name={show(name)}")
    if dtype not in _DTYPES:
        raise SpecError(f"Input: dtype must be one of {', '.join(map(repr, _DTYPES))}. Received: dtype={show(dtype)}")
    t = SymbolicTensor(None, (), {})
    t.input_name, t.dtype, t.roots = name, dtype, (t,)
    return t


def _tensor(where: str, value: Any) -> SymbolicTensor:
    if not isinstance(value, SymbolicTensor):
        raise SpecError(f"{where}: expected a symbolic tensor (a di.Input, or what a layer called on one returns), "
                        f"received {show(value)} ({type(value).__name__})")
    return value


def call_layer(layer: Layer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SymbolicTensor:
    """``layer(x)`` on a symbolic tensor; ``MultiHeadAttention`` takes ``(queries, keys, values, valid_lens=)``."""
    kind = type(layer).__name__
    if isinstance(layer, GraphModel):
        raise SpecError(f"{kind}: calling a graph spec inside another graph is not supported; inline its layers")
    from .layers_seq import MultiHeadAttention

    arity = (1, 3) if isinstance(layer, MultiHeadAttention) else (1,)
    allowed = {"valid_lens"} if isinstance(layer, MultiHeadAttention) else set()
    if len(args) not in arity or set(kwargs) - allowed:
        want = "(queries, keys, values, valid_lens=None) or one input" if allowed else "one symbolic tensor"
        raise SpecError(f"{kind}: called with {len(args)} positional argument(s) and keyword(s) {sorted(kwargs)}; "
                        f"expected {want}")
    tensors = tuple(_tensor(f"{kind} argument {i}", a) for i, a in enumerate(args))
    if allowed and len(tensors) == 1 and kwargs.get("valid_lens") is not None:
        tensors = tensors * 3  # self-attention with a mask: queries, keys and values are the one input
    attrs: dict[str, Any] = {}
    if kwargs.get("valid_lens") is not None:
        lens = _tensor(f"{kind} valid_lens", kwargs["valid_lens"])
        tensors, attrs = tensors + (lens,), {"valid_lens": True}
    return SymbolicTensor(layer, tensors, attrs)


def add(*tensors: Any) -> SymbolicTensor:
    """Element-wise sum of symbolic tensors of one shape (size-1 dims broadcast)."""
    return _op("add", tensors, {})


def multiply(*tensors: Any) -> SymbolicTensor:
    """Element-wise product of symbolic tensors (size-1 dims broadcast: ``(N, C, H, W) * (N, C, 1, 1)``)."""
    return _op("multiply", tensors, {})


def concat(tensors: Sequence[Any], axis: int | None = None) -> SymbolicTensor:
    """Concatenation; ``axis=None`` is the channel axis of the model's data format, as ``Concat`` does."""
    if not isinstance(tensors, (list, tuple)):
        raise SpecError(f"concat: expected a list of symbolic tensors, received {show(tensors)}")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise SpecError(f"concat: axis must be None or an integer. Received: axis={show(axis)}")
    return _op("concat", tuple(tensors), {"axis": axis})


def _op(op: str, tensors: tuple[Any, ...], attrs: dict[str, Any]) -> SymbolicTensor:
    if len(tensors) < 2:
        raise SpecError(f"{op}: expected at least two symbolic tensors, received {len(tensors)}")
    return SymbolicTensor(op, tuple(_tensor(f"{op} argument {i}", t) for i, t in enumerate(tensors)), attrs)


def input_name(spec_input: Mapping[str, Any], i: int) -> str:
    return spec_input.get("name") or f"input{i}"


# --------------------------------------------------------------------------------------------- the graph spec
@dataclass(frozen=True, eq=False, repr=False, init=False)
class GraphModel(LazyModel):
    """A :class:`LazyModel` made by ``LazyModel(inputs=..., outputs=...)``: see the module docstring."""

    inputs: Any = ()
    nodes: Any = ()
    outputs: Any = ()
    #: plain data (checked by ``_check_plain``): keyed by value in ``spec_key.content_key``
    _plain_fields = ("inputs", "nodes", "outputs")

    def __init__(self, layers: Sequence[Layer] | None = None, *, inputs: Any = None, outputs: Any = None,
                 nodes: Any = None, name: str | None = None, data_format: str = "channels_first") -> None:
        if inputs is None or outputs is None:
            raise SpecError(f"LazyModel: a graph spec needs both inputs= and outputs= (one tensor or a list each). "
                            f"Received: inputs={show(inputs)}, outputs={show(outputs)}")
        if nodes is None:
            layers, inputs, nodes, outputs = _trace(inputs, outputs)
        for key, value in (("layers", layers if layers is not None else ()), ("inputs", inputs), ("nodes", nodes),
                           ("outputs", outputs), ("name", name), ("data_format", data_format)):
            object.__setattr__(self, key, value)
        self.__post_init__()

    def validate(self) -> None:
        super().validate()
        _check_plain(self)

    @property
    def multi_output(self) -> bool:
        return isinstance(self.outputs, (list, tuple))

    def input_dtypes(self) -> list[str]:
        return [i["dtype"] for i in self.inputs]

    def input_names(self) -> list[str]:
        return [input_name(i, k) for k, i in enumerate(self.inputs)]


def _as_list(what: str, value: Any) -> tuple[list[Any], bool]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(f"LazyModel: {what}= must not be empty")
        return list(value), True
    return [value], False


def _trace(inputs: Any, outputs: Any) -> tuple[tuple[Layer, ...], tuple[dict[str, Any], ...], tuple[dict[str, Any], ...], Any]:
    ins, _ = _as_list("inputs", inputs)
    outs, out_list = _as_list("outputs", outputs)
    for i, t in enumerate(ins):
        if not isinstance(t, SymbolicTensor) or t.op is not None:
            raise SpecError(f"LazyModel: inputs[{i}] must be a di.Input(...), received {show(t)}")
    for i, t in enumerate(outs):
        _tensor(f"LazyModel: outputs[{i}]", t)
    if len({id(t) for t in ins}) != len(ins):
        raise SpecError("LazyModel: the same di.Input is listed twice in inputs=")
    names = [t.input_name or f"input{i}" for i, t in enumerate(ins)]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SpecError(f"LazyModel: two inputs are both named '{dup}'; give them different name= values")
    mine = {id(t) for t in ins}
    for i, t in enumerate(outs):  # each output must come from the listed inputs, and only from them
        foreign = [r for r in t.roots if id(r) not in mine]
        if t.op is None and id(t) in mine:
            continue
        if len(foreign) == len(t.roots):
            raise SpecError(f"LazyModel: outputs[{i}] ({t.describe()}) does not depend on the inputs "
                            f"{', '.join(names)}; it is computed from {foreign[0].describe()}")
        if foreign:
            raise SpecError(f"LazyModel: outputs[{i}] ({t.describe()}) uses a tensor from another graph: it depends on "
                            f"{foreign[0].describe()}, which is not in inputs=; list it in inputs= or build from these")
    needed: dict[int, SymbolicTensor] = {}
    stack = list(outs)
    while stack:
        t = stack.pop()
        if id(t) not in needed:
            needed[id(t)] = t
            stack.extend(t.args)
    for i, t in enumerate(ins):
        if id(t) not in needed:
            raise SpecError(f"LazyModel: inputs[{i}] ({t.describe()}) is never used by outputs=")
    for t in ins:
        for use in t.uses:
            if id(use) not in needed:
                raise SpecError(f"LazyModel: {use.describe()} is dangling: it is computed from the inputs but no "
                                f"output uses it; use it in outputs= or build it from fresh di.Input tensors")
    calls = sorted((t for t in needed.values() if t.op is not None), key=lambda t: t.order)
    slots = {id(t): i for i, t in enumerate(ins)}
    layers: dict[int, tuple[int, Layer]] = {}
    nodes: list[dict[str, Any]] = []
    for t in calls:
        args = [slots[id(a)] for a in t.args]
        if isinstance(t.op, str):
            node: dict[str, Any] = {"op": t.op, "args": args}
            if t.op == "concat" and t.attrs.get("axis") is not None:
                node["axis"] = t.attrs["axis"]
        else:
            index = layers.setdefault(id(t.op), (len(layers), t.op))[0]
            node = {"op": "layer", "layer": index, "args": args}
            if t.attrs.get("valid_lens"):
                node["valid_lens"] = True
        slots[id(t)] = len(ins) + len(nodes)
        nodes.append(node)
    spec_inputs = tuple({"name": t.input_name, "dtype": t.dtype} if t.input_name else {"dtype": t.dtype} for t in ins)
    out_slots = [slots[id(t)] for t in outs]
    return (tuple(layer for _, layer in layers.values()), spec_inputs, tuple(nodes),
            out_slots if out_list else out_slots[0])


def _check_plain(spec: GraphModel) -> None:
    """The checks on the plain form (a traced graph passes them; a file may not)."""
    def bad(what: str) -> SpecError:
        return SpecError(f"LazyModel graph: {what}")

    if not isinstance(spec.inputs, (list, tuple)) or not spec.inputs:
        raise bad(f"expected 'inputs' to be a non-empty list of {{'name', 'dtype'}}, received {show(spec.inputs)}")
    for i, item in enumerate(spec.inputs):
        if not isinstance(item, Mapping) or set(item) - {"name", "dtype"} or item.get("dtype", "float32") not in _DTYPES:
            raise bad(f"expected inputs[{i}] to be {{'name': str, 'dtype': one of {', '.join(_DTYPES)}}}, "
                      f"received {show(item)}")
    n_in = len(spec.inputs)
    if not isinstance(spec.nodes, (list, tuple)):
        raise bad(f"expected 'nodes' to be a list, received {show(spec.nodes)}")
    used = [0] * (n_in + len(spec.nodes))
    layer_used = [False] * len(spec.layers)
    for j, node in enumerate(spec.nodes):
        here = f"node {j}"
        if not isinstance(node, Mapping) or node.get("op") not in OPS + ("layer",):
            raise bad(f"expected {here} to be a mapping with 'op' one of {', '.join(OPS + ('layer',))}, received {show(node)}")
        args = node.get("args")
        if not isinstance(args, (list, tuple)) or not args:
            raise bad(f"expected {here} to have a non-empty 'args' list, received {show(args)}")
        for a in args:
            check_int(f"LazyModel graph {here}", "args", a, minimum=0)
            if a >= n_in + j:  # only earlier slots: a later one (or its own) is a cycle
                raise bad(f"{here} reads slot {a}, which is not computed before it: a cycle (a node may only read "
                          f"the inputs and earlier nodes, slots below {n_in + j})")
            used[a] += 1
        if node["op"] == "layer":
            k: int = node.get("layer")  # type: ignore[assignment]
            check_int(f"LazyModel graph {here}", "layer", k, minimum=0)
            if k >= len(spec.layers):
                raise bad(f"{here} calls layer {k}, but there are {len(spec.layers)} layers")
            layer_used[k] = True
    outs = spec.outputs if isinstance(spec.outputs, (list, tuple)) else [spec.outputs]
    for o in outs:
        check_int("LazyModel graph", "outputs", o, minimum=0)
        if o >= len(used):
            raise bad(f"output slot {o} does not exist (there are {len(used)} slots)")
        used[o] += 1
    for i in range(n_in):
        if not used[i]:
            raise bad(f"input {i} ('{input_name(spec.inputs[i], i)}') is never used")
    for j in range(len(spec.nodes)):
        if not used[n_in + j]:
            raise bad(f"node {j} ({spec.nodes[j]['op']}) is dangling: its output is used by no node and no output")
    for k, flag in enumerate(layer_used):
        if not flag:
            raise bad(f"layer {k} ({type(spec.layers[k]).__name__}) is listed but never called")
    for k, layer in enumerate(spec.layers):
        if isinstance(layer, GraphModel):
            raise bad(f"layer {k} is a graph spec; graph specs cannot be nested")
