"""Framework-free shape inference: walks a spec with the reference rules and builds a ShapeReport.

The walk is shared by every backend: :func:`plan` resolves paths and ties once (adapters build their
native modules from it), :func:`infer` runs the rules. No parameter memory is allocated: inference costs
memory proportional to the number of layers, so a 1.7e11-parameter spec is reported in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from .errors import DTypeError, ShapeMismatchError, fmt_shape, where
from .layers import Leaf, ParamSpec, RuleContext, check_kind
from .merges import Merge
from .report import LayerInfo, ParamInfo, ShapeReport
from .spec import Concat, Container, Layer, LazyModel, Residual, Sequential, Shape, show

__all__ = ["Node", "plan", "infer", "infer_shapes", "Inference", "input_kind", "normalize_shape", "spec_dtype", "as_dtype"]


@dataclass(eq=False)
class Node:
    """A layer at one position. A tied position (the same layer object seen before) points at the first."""

    path: str
    layer: Layer
    children: list["Node"] = field(default_factory=list)
    tied_to: "Node | None" = None

    def param_name(self, pname: str) -> str:
        owner = self.tied_to or self
        return f"{owner.path}.{pname}" if owner.path else pname

    def walk(self) -> Iterator["Node"]:
        """Every node below (not this one), depth first; tied positions appear, their subtrees do not."""
        for child in self.children:
            yield child
            yield from child.walk()

    def leaves(self) -> Iterator["Node"]:
        """First occurrences of leaf layers, in order."""
        return (n for n in self.walk() if n.tied_to is None and isinstance(n.layer, Leaf))


def plan(spec: Layer) -> Node:
    """Resolve dotted paths (position, or ``name=``) and ties for a spec."""
    return _plan(spec, "", {})


def _plan(layer: Layer, path: str, first: dict[int, Node]) -> Node:
    # a module-level function, not a recursive closure: a closure that calls itself is a reference cycle, and
    # every apply_init would leave its tree to the garbage collector
    seen = first.get(id(layer))
    if seen is not None:
        return Node(path, layer, [], tied_to=seen)
    node = Node(path, layer)
    first[id(layer)] = node
    node.children = [_plan(child, f"{path}.{seg}" if path else seg, first) for seg, child in layer.children]
    return node


def _is_int(d: Any) -> bool:
    return isinstance(d, int) or (type(d).__module__ == "numpy" and hasattr(d, "__index__"))


def normalize_shape(shape: Any) -> Shape:
    """An input shape as a tuple of positive ints or ``None``; anything else is a ShapeMismatchError."""
    if type(shape) is tuple and shape and all(type(d) is int and d >= 1 for d in shape):
        return shape  # an array's own shape: the usual case, already what is returned
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeMismatchError(f"the model input expected a shape (a tuple of sizes), received {show(shape)}") from None
    for d in dims:
        ok = d is None or (_is_int(d) and not isinstance(d, bool) and type(d).__name__ != "bool_" and d >= 1)
        if not ok:
            raise ShapeMismatchError(f"the model input expected every dim to be a positive integer or None, "
                                     f"received shape {fmt_shape(dims)}"
                                     + ("; an empty batch or axis cannot be initialized or run" if d == 0 else ""))
    if not dims:
        raise ShapeMismatchError("the model input expected at least a batch axis, received shape ()")
    return tuple(None if d is None else int(d) for d in dims)


def as_dtype(dtype: Any) -> Any:
    """A numpy dtype from a numpy one, a name, or a framework's (``torch.float32``, ``tf.int64``)."""
    import numpy as np

    if isinstance(dtype, np.dtype):
        return dtype
    for candidate in (dtype, getattr(dtype, "as_numpy_dtype", None), str(dtype).rsplit(".", 1)[-1]):
        try:
            if candidate is not None:
                return np.dtype(candidate)
        except (TypeError, ValueError):
            continue
    raise DTypeError(f"the model input expected a numeric dtype, received {show(dtype)}")


_NAMES: dict[Any, str] = {}


def _name(dtype: Any) -> str:
    """``dtype.name``, remembered: numpy 2 computes it in Python (about 4 us, a tenth of a small model's rules)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name
    return name


def spec_dtype(spec: Layer) -> str:
    """The input dtype a spec takes: int64 when the first layer that cares (not a Dropout, Flatten, Identity,
    Reshape...) takes token ids (``Embedding``, ``OneHot``), float32 otherwise."""
    layers = spec.iter_layers() if isinstance(spec, Container) else iter((spec,))
    first = next((la for la in layers if isinstance(la, Leaf) and la.accepts != "any"), None)
    return "int64" if first is not None and first.accepts == "int" else "float32"


def input_kind(dtype: Any) -> str:
    """``float`` or ``int`` for a dtype layers can take; DTypeError for bool, complex and the rest."""
    dt = as_dtype(dtype)
    if dt.kind == "f":
        return "float"
    if dt.kind in "iu":
        return "int"
    raise DTypeError(f"the model input expected floating-point data (or integer indices for an Embedding), "
                     f"received dtype {dt.name}")


T = TypeVar("T")
_MISSING = object()


@dataclass
class Inference:
    """What a walk found: the report plus what adapters and initializers need beside it."""

    report: ShapeReport
    params: dict[str, ParamSpec]      # canonical name -> rule's view (with init role)
    root: Node
    inputs: dict[str, Shape] = field(default_factory=dict)  # path -> input shape of each position

    def kept(self, name: str, make: Callable[[], T]) -> T:
        """``make()``, computed once and kept on this inference: facts that depend on it alone (its memory footprint,
        a backend's parameter paths, the report's frozen entries). The adapters' rules cache shares one inference
        between equal specs on equal inputs, so what is kept here is shared with them too."""
        value = self.__dict__.get(name, _MISSING)
        if value is _MISSING:
            value = self.__dict__[name] = make()
        return value  # type: ignore[no-any-return]


class _Walk:
    def __init__(self, data_format: str, backend: str, fixed: Mapping[str, Shape] | None) -> None:
        self.data_format, self.backend, self.fixed = data_format, backend, fixed
        self.params: dict[str, ParamSpec] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.inputs: dict[str, Shape] = {}

    def run(self, node: Node, shape: Shape, kind: str, record: bool = True) -> tuple[Shape, str]:
        if node.tied_to is not None:
            try:
                out, kind = self.run(node.tied_to, shape, kind, record=False)
            except (ShapeMismatchError, DTypeError) as exc:  # the rules ran at the first use's path: name this one
                raise type(exc)(f"{where(node.path, node.layer)}, the same layer object as "
                                f"'{node.tied_to.path}' used again: {exc}") from None
            if record:
                self.inputs[node.path] = shape
                self.layers[node.path] = LayerInfo(node.path, type(node.layer).__name__, out, (), node.tied_to.path)
            return out, kind
        layer = node.layer
        if record:
            self.inputs[node.path] = shape
            if not isinstance(layer, Leaf):  # a container's entry now keeps pre-order (a leaf's comes next anyway)
                self.layers[node.path] = None  # type: ignore[assignment]
        if isinstance(layer, Leaf):
            out, kind, names = self.leaf(node, shape, kind)
        else:
            out, kind = self.container(node, shape, kind, record)
            names = ()
        if record:
            self.layers[node.path] = LayerInfo(node.path, type(layer).__name__, out, names)
        return out, kind

    def leaf(self, node: Node, shape: Shape, kind: str) -> tuple[Shape, str, tuple[str, ...]]:
        ctx = RuleContext(node.path, node.layer, self.data_format, None)
        check_kind(ctx, node.layer, kind)  # type: ignore[arg-type]
        out, params = node.layer.infer(shape, ctx)  # type: ignore[attr-defined]
        names = []
        for pname, pspec in params.items():
            full = node.param_name(pname)
            names.append(full)
            want = self.fixed.get(full) if self.fixed is not None else self.params.get(full, pspec).shape
            if want is not None and tuple(want) != pspec.shape:
                raise self.refit(node, full, tuple(want), pspec.shape, shape, tied=self.fixed is None)
            self.params.setdefault(full, pspec)
        out_kind = "float" if node.layer.accepts == "int" else kind  # type: ignore[attr-defined]
        return out, out_kind, tuple(names)

    @staticmethod
    def refit(node: Node, full: str, want: Shape, got: Shape, shape: Shape, tied: bool) -> ShapeMismatchError:
        """The input no longer fits a parameter whose shape is fixed (initialized, or shared by a tie)."""
        layer = node.layer
        axis = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), 0)
        what = getattr(layer, "fan_names", {}).get(axis) or getattr(layer, "fan_name", "input size")
        if len(want) != len(got):
            expected, received = f"parameter '{full}' of shape {fmt_shape(want)}", f"one of shape {fmt_shape(got)}"
        else:
            expected, received = f"{want[axis]} {what}", f"{got[axis]}"
        why = "shared with an earlier use of the same layer" if tied else "as when initialized"
        return ShapeMismatchError(f"{where(node.path, layer)} expected {expected}, {why} (parameter '{full}' is "
                                  f"{fmt_shape(want)}), received {received} (input shape {fmt_shape(shape)})")

    def container(self, node: Node, shape: Shape, kind: str, record: bool) -> tuple[Shape, str]:
        layer = node.layer
        if isinstance(layer, Sequential):
            for child in node.children:
                shape, kind = self.run(child, shape, kind, record)
            return shape, kind
        if isinstance(layer, Residual):
            body, rest = node.children[0], node.children[1:]
            out, out_kind = self.run(body, shape, kind, record)
            short, _ = self.run(rest[0], shape, kind, record) if rest else (shape, kind)
            if out != short:
                ctx = RuleContext(node.path, layer, self.data_format)
                raise ctx.mismatch(f"body and shortcut outputs of the same shape (to add them); the shortcut gives "
                                   f"{fmt_shape(short)}", f"body output {fmt_shape(out)}",
                                   "add a shortcut (e.g. a 1x1 Conv2D) that matches the body")
            return out, "float"
        if isinstance(layer, Concat):
            outs = [self.run(child, shape, kind, record) for child in node.children]
            ctx = RuleContext(node.path, layer, self.data_format)
            first = outs[0][0]
            axis = ctx.channel_axis(len(first))
            for i, (out, _) in enumerate(outs[1:], 1):
                same = len(out) == len(first) and all(a == b for j, (a, b) in enumerate(zip(out, first)) if j != axis)
                if not same:
                    raise ctx.mismatch(f"branch outputs that differ only on the channel axis {axis}; branch 0 gives "
                                       f"{fmt_shape(first)}", f"branch {i} output {fmt_shape(out)}")
            channels = [o[axis] for o, _ in outs]
            total = None if any(c is None for c in channels) else sum(channels)
            return first[:axis] + (total,) + first[axis + 1:], "float"
        if isinstance(layer, Merge):
            outs = [self.run(child, shape, kind, record) for child in node.children]
            ctx = RuleContext(node.path, layer, self.data_format)
            return merged_shape(ctx, [o for o, _ in outs]), "float"
        raise TypeError(f"unknown container {type(layer).__name__}")  # pragma: no cover - spec.py is closed


def infer(spec: LazyModel, input_shape: Any, *, dtype: Any = None, backend: str = "numpy",
          fixed: Mapping[str, Shape] | None = None, root: Node | None = None) -> Inference:
    """Run the reference rules. ``fixed`` maps canonical parameter names to shapes that the input must fit
    (those of an initialized model), so a later call with a wrong feature dim names the layer."""
    if not isinstance(spec, LazyModel):
        from .errors import SpecError

        raise SpecError(f"expected a deferinit.LazyModel, received {type(spec).__name__}")
    if hasattr(spec, "nodes"):  # a graph spec (deferinit.graph): one shape per input
        from .graph_shapes import infer_graph

        return infer_graph(spec, input_shape, dtype=dtype, backend=backend, fixed=fixed, root=root)  # type: ignore[arg-type]
    if hasattr(input_shape, "shape") and hasattr(input_shape, "dtype") and not isinstance(input_shape, tuple):
        # an array, a framework tensor or a ShapeDtype: its shape, and its dtype unless one is given
        dtype = input_shape.dtype if dtype is None else dtype
        input_shape = tuple(input_shape.shape)
    shape = normalize_shape(input_shape)
    dtype = as_dtype(spec_dtype(spec) if dtype is None else dtype)
    kind = input_kind(dtype)
    root = root or plan(spec)
    walk = _Walk(spec.data_format, backend, fixed)
    out, _ = walk.run(root, shape, kind, record=True)
    walk.layers.pop("", None)
    params = {name: ParamInfo(shape=p.shape, trainable=p.trainable, native_name=name, native_shape=p.shape,
                              source="reference") for name, p in walk.params.items()}
    report = ShapeReport(backend=backend, input_shape=shape, output_shape=out, params=params, layers=walk.layers,
                         input_dtype=_name(dtype), data_format=spec.data_format,
                         roles={name: p.role for name, p in walk.params.items()})
    return Inference(report, walk.params, root, walk.inputs)


def infer_shapes(spec: LazyModel, input_shape: Sequence[int | None] | Any, *, dtype: Any = None) -> ShapeReport:
    """Parameter and output shapes of ``spec`` for an input of ``input_shape``, with no framework and no
    parameter memory. Dims may be ``None`` where they vary (batch, spatial, sequence); a parameter that would
    depend on one raises :class:`ShapeMismatchError` naming the layer and the dim.

    ``input_shape`` may also be an array (numpy or a framework's) or a ``ShapeDtype``: its shape is used, and
    its dtype unless ``dtype`` is given. ``dtype=None`` is otherwise the spec's own: int64 when the first
    layer takes token ids (``Embedding``, ``OneHot``), float32 otherwise."""
    return infer(spec, input_shape, dtype=dtype).report


def merged_shape(ctx: RuleContext, outs: list[Shape]) -> Shape:
    """The output shape of an element-wise merge (``Add``, ``Multiply``): one rank, each size equal or 1 across
    the branches (NumPy broadcasting); an unknown size stays unknown unless another branch fixes it."""
    first, out = outs[0], list(outs[0])
    for i, o in enumerate(outs[1:], 1):
        fits = len(o) == len(first) and all(a == b or a == 1 or b == 1 or a is None or b is None
                                            for a, b in zip(o, out))
        if not fits:
            raise ctx.mismatch(f"branch outputs of one rank whose sizes are equal or 1 on every axis (to "
                               f"{type(ctx.layer).__name__.lower()} them element-wise); branch 0 gives "
                               f"{fmt_shape(first)}", f"branch {i} output {fmt_shape(o)}")
        out = [_broadcast_dim(a, b) for a, b in zip(out, o)]
    return tuple(out)


def _broadcast_dim(a: Any, b: Any) -> Any:
    if a == 1 or a is None:
        return a if b == 1 else b
    return a
