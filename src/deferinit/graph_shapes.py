"""Shape inference and the NumPy reference forward of graph specs (:mod:`deferinit.graph`).

Each layer call runs the list specs' walk (:class:`deferinit.shapes._Walk`) on the layer's plan node, so the
rules, the tie checks (a layer called twice must fit the same parameters) and the report entries are the list
specs' own; the graph adds the merges (``add``, ``multiply``, ``concat``) and attention's separate queries, keys,
values and ``valid_lens``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .errors import DTypeError, ShapeMismatchError, fmt_shape
from .graph import GraphModel
from .layers_base import RuleContext
from .report import LayerInfo, ParamInfo, ShapeReport
from .shapes import Inference, Node, _Walk, as_dtype, input_kind, normalize_shape, plan
from .spec import Shape, show

__all__ = ["infer_graph", "broadcast", "concat_shape"]


def broadcast(what: str, shapes: Sequence[Shape]) -> Shape:
    """The shape of an element-wise merge: equal ranks, each dim equal or 1 (None where unknown)."""
    out = list(shapes[0])
    for i, s in enumerate(shapes[1:], 1):
        if len(s) != len(out):
            raise ShapeMismatchError(f"{what} expected inputs of one rank, received {fmt_shape(shapes[0])} and "
                                     f"{fmt_shape(s)} (argument {i})")
        for ax, d in enumerate(s):
            a = out[ax]
            if a == d or d == 1:
                continue
            if a == 1:
                out[ax] = d
            elif a is None or d is None:
                out[ax] = a if d is None else d
            else:
                raise ShapeMismatchError(f"{what} expected shapes that are equal or 1 on every axis, received "
                                         f"{fmt_shape(shapes[0])} and {fmt_shape(s)} (argument {i}, axis {ax})")
    return tuple(out)


def concat_shape(what: str, shapes: Sequence[Shape], axis: int) -> Shape:
    first = shapes[0]
    for i, s in enumerate(shapes[1:], 1):
        if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != axis):
            raise ShapeMismatchError(f"{what} expected shapes that differ only on axis {axis}, received "
                                     f"{fmt_shape(first)} and {fmt_shape(s)} (argument {i})")
    sizes = [s[axis] for s in shapes]
    return first[:axis] + (None if None in sizes else sum(sizes),) + first[axis + 1:]


def _axis(spec: GraphModel, node: Mapping[str, Any], rank: int) -> int:
    axis = node.get("axis")
    if axis is None:
        return 1 if spec.data_format == "channels_first" or rank == 2 else rank - 1
    return int(axis) % rank


def _attention(walk: _Walk, pnode: Node, shapes: list[Shape], kinds: list[str], lens: bool, record: bool) -> Shape:
    q, k, v = shapes[:3]
    ctx = RuleContext(pnode.path, pnode.layer, walk.data_format)
    for name, s in zip(("queries", "keys", "values"), (q, k, v)):
        ctx.need_rank(s, (3,), f"of {name} (batch, steps, features)")
    if not (k[2] == v[2] == q[2]) or k[1] != v[1] or not (q[0] == k[0] == v[0]):
        raise ctx.mismatch("queries (N, Tq, D), keys and values (N, Tk, D) with one batch N and one feature size D",
                           f"queries {fmt_shape(q)}, keys {fmt_shape(k)}, values {fmt_shape(v)}")
    if lens:
        s = shapes[3]
        if kinds[3] != "int" or s not in ((q[0],), (q[0], q[1])):
            raise ctx.mismatch(f"valid_lens of integers of shape ({q[0]},) or ({q[0]}, {q[1]})",
                               f"{kinds[3]} valid_lens of shape {fmt_shape(s)}")
    out, _ = walk.run(pnode, q, kinds[0], record)
    return out


def infer_graph(spec: GraphModel, input_shapes: Any, *, dtype: Any = None, backend: str = "numpy",
                fixed: Mapping[str, Shape] | None = None, root: Node | None = None) -> Inference:
    names = spec.input_names()
    if not isinstance(input_shapes, (list, tuple)) or len(input_shapes) != len(names) or (
            len(names) > 1 and not all(isinstance(s, (list, tuple)) or hasattr(s, "shape") for s in input_shapes)):
        if len(names) == 1 and isinstance(input_shapes, tuple) and all(isinstance(d, (int, type(None))) for d in input_shapes):
            input_shapes = [input_shapes]
        elif not (isinstance(input_shapes, (list, tuple)) and len(input_shapes) == len(names)):
            raise ShapeMismatchError(f"the model expected {len(names)} input(s) ({', '.join(names)}), one shape each, "
                                     f"received {show(input_shapes)}")
    dtypes = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype] * len(names)
    shapes: list[Shape] = []
    kinds: list[str] = []
    for i, (name, s) in enumerate(zip(names, input_shapes)):
        dt = dtypes[i] if dtypes[i] is not None else getattr(s, "dtype", None) or spec.inputs[i].get("dtype", "float32")
        s = tuple(s.shape) if hasattr(s, "shape") and not isinstance(s, tuple) else s
        try:
            shapes.append(normalize_shape(s))
            kinds.append(input_kind(dt))
        except (ShapeMismatchError, DTypeError) as exc:
            raise type(exc)(f"input '{name}': {exc}") from None
        want = spec.inputs[i].get("dtype", "float32")
        if input_kind(want) != kinds[-1]:
            raise DTypeError(f"input '{name}' expected {want} data (as declared by its di.Input), received dtype "
                             f"{as_dtype(dt).name}")
    root = root or plan(spec)
    walk = _Walk(spec.data_format, backend, fixed)
    slots, slot_kinds = list(shapes), list(kinds)
    called: set[int] = set()
    for j, node in enumerate(spec.nodes):
        args = [slots[a] for a in node["args"]]
        arg_kinds = [slot_kinds[a] for a in node["args"]]
        if node["op"] == "layer":
            pnode = root.children[node["layer"]]
            record = node["layer"] not in called
            called.add(node["layer"])
            if len(args) > 1:
                out, kind = _attention(walk, pnode, args, arg_kinds, bool(node.get("valid_lens")), record), "float"
            else:
                out, kind = walk.run(pnode, args[0], arg_kinds[0], record)
        else:
            what = f"{node['op']} (graph node {j})"
            if node["op"] == "concat":
                out = concat_shape(what, args, _axis(spec, node, len(args[0])))
            else:
                out = broadcast(what, args)
            kind = "float" if "float" in arg_kinds else "int"
        slots.append(out)
        slot_kinds.append(kind)
    outs = [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]
    params = {name: ParamInfo(shape=p.shape, trainable=p.trainable, native_name=name, native_shape=p.shape,
                              source="reference") for name, p in walk.params.items()}
    layers: dict[str, LayerInfo] = dict(walk.layers)
    multi_in = len(shapes) > 1
    report = ShapeReport(backend=backend, input_shape=tuple(shapes) if multi_in else shapes[0],  # type: ignore[arg-type]
                         output_shape=tuple(outs) if spec.multi_output else outs[0],  # type: ignore[arg-type]
                         params=params, layers=layers,
                         input_dtype=",".join(as_dtype(dtypes[i] or spec.inputs[i].get("dtype", "float32")).name
                                              for i in range(len(names))),
                         data_format=spec.data_format, roles={name: p.role for name, p in walk.params.items()})
    return Inference(report, walk.params, root, walk.inputs)
