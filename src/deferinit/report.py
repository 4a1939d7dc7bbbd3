"""ShapeReport: the one format every backend answers in.

A report holds canonical content (input/output shapes, per-layer output shapes, and each parameter's
canonical name, shape, dtype and trainability) and backend-specific annotations (the backend's name, each
parameter's native name and native shape, and whether a dim came from the framework's own inference or
had to be taken from the reference rules). ``diff`` compares only the canonical content, so the same spec
gives an empty diff across all backends. Reports serialize to JSON and back exactly, which is how reports
made in different virtualenvs (MXNet cannot share one with TensorFlow or JAX) are compared.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import SpecError, fmt_shape

__all__ = ["ParamInfo", "LayerInfo", "ShapeReport"]

FORMAT = "deferinit.report"
VERSION = 1

Shape = tuple[Any, ...]  # tuple[int | None, ...]


def _shape(value: Any) -> Shape:
    if value and all(isinstance(d, (list, tuple)) for d in value):  # a graph's shapes: one per input or output
        return tuple(_shape(d) for d in value)
    return tuple(None if d is None else int(d) for d in value)


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: canonical ``shape``; ``native_name``/``native_shape`` as the framework holds it.

    ``source`` is ``"native"`` when the framework's own deferred initialization found the shape, and
    ``"reference"`` where the framework has no deferred form of that layer and the adapter took the dim
    from the reference rules (the numpy backend is itself the reference).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    trainable: bool = True
    native_name: str = ""
    native_shape: tuple[int, ...] = ()
    source: str = "native"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "trainable": self.trainable,
                "native_name": self.native_name, "native_shape": list(self.native_shape), "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParamInfo":
        return cls(shape=_shape(d["shape"]), dtype=str(d.get("dtype", "float32")),
                   trainable=bool(d.get("trainable", True)), native_name=str(d.get("native_name", "")),
                   native_shape=_shape(d.get("native_shape", d["shape"])), source=str(d.get("source", "native")))


@dataclass(frozen=True)
class LayerInfo:
    """One layer position: its type, output shape, parameters, and the position it is tied to if any.

    ``source`` says where ``output_shape`` came from, as :attr:`ParamInfo.source` does: ``"native"`` when the
    framework computed that layer's output in its own dry run or trace, ``"reference"`` when it is the reference
    rules' answer (the numpy backend, and reports from :func:`~deferinit.infer_shapes`). A dim that varies
    (``None`` in the input) stays ``None`` in a native shape too: the framework traced it with a stand-in size.
    """

    path: str
    type: str
    output_shape: Shape
    params: tuple[str, ...] = ()
    tied_to: str | None = None
    source: str = "reference"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "output_shape": list(self.output_shape), "params": list(self.params)}
        if self.tied_to is not None:
            d["tied_to"] = self.tied_to
        d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, path: str, d: Mapping[str, Any]) -> "LayerInfo":
        return cls(path=path, type=str(d["type"]), output_shape=_shape(d["output_shape"]),
                   params=tuple(d.get("params", ())), tied_to=d.get("tied_to"),
                   source=str(d.get("source", "reference")))


@dataclass(frozen=True)
class ShapeReport:
    """Inferred shapes of one spec on one input, in canonical names and layouts."""

    backend: str
    input_shape: Shape
    output_shape: Shape
    params: Mapping[str, ParamInfo]
    layers: Mapping[str, LayerInfo] = field(default_factory=dict)
    input_dtype: str = "float32"
    data_format: str = "channels_first"
    #: canonical name -> role (kernel, bias, embedding...) where the reference rules gave it; not serialized
    roles: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def shard(self, plan: Any, mesh_shape: Mapping[str, int]) -> Any:
        """Each parameter's sharding and local shard shape, and the bytes per device, under ``plan`` (a
        :class:`~deferinit.sharding.ShardingPlan`) over ``mesh_shape`` (``{"data": 4}``): a
        :class:`~deferinit.sharding.ShardedReport`, validated with no framework and no memory."""
        from .sharding import shard_report

        return shard_report(self, plan, mesh_shape)

    # ------------------------------------------------------------------ counts
    @property
    def total_params(self) -> int:
        """Every entry, trainable or not (as Keras counts; BatchNorm statistics included)."""
        return sum(p.size for p in self.params.values())

    @property
    def trainable_params(self) -> int:
        return sum(p.size for p in self.params.values() if p.trainable)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def layer_output_shapes(self) -> dict[str, Shape]:
        return {path: info.output_shape for path, info in self.layers.items()}

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "backend": self.backend,
            "input_shape": list(self.input_shape), "input_dtype": self.input_dtype,
            "data_format": self.data_format, "output_shape": list(self.output_shape),
            "total_params": self.total_params, "trainable_params": self.trainable_params,
            "params": {name: p.to_dict() for name, p in self.params.items()},
            "layers": {path: info.to_dict() for path, info in self.layers.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShapeReport":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise SpecError(f"not a deferinit shape report: expected a mapping with format={FORMAT!r}, "
                            f"received {type(d).__name__}"
                            + (f" with format={d.get('format')!r}" if isinstance(d, Mapping) else ""))
        if d.get("version") != VERSION:
            raise SpecError(f"shape report: expected version {VERSION}, received version {d.get('version')!r}")
        try:
            return cls(backend=str(d["backend"]), input_shape=_shape(d["input_shape"]),
                       output_shape=_shape(d["output_shape"]),
                       params={str(k): ParamInfo.from_dict(v) for k, v in d["params"].items()},
                       layers={str(k): LayerInfo.from_dict(str(k), v) for k, v in d.get("layers", {}).items()},
                       input_dtype=str(d.get("input_dtype", "float32")),
                       data_format=str(d.get("data_format", "channels_first")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpecError(f"shape report: malformed content ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str) -> "ShapeReport":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"shape report: expected JSON, received text that fails at line {exc.lineno} "
                            f"column {exc.colno}: {exc.msg}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ comparison
    def diff(self, other: "ShapeReport") -> list[str]:
        """Readable lines where the canonical content differs; empty when equal.

        Backend names, native names, native shapes and sources are ignored: they are expected to differ.
        """
        lines: list[str] = []
        for attr in ("input_shape", "output_shape", "input_dtype", "data_format"):
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                lines.append(f"{attr}: {_show(a)} != {_show(b)}")
        lines += _diff_maps("param", self.params, other.params,
                            lambda p: (p.shape, p.dtype, p.trainable),
                            lambda p: f"shape {fmt_shape(p.shape)} {p.dtype}{'' if p.trainable else ' non-trainable'}")
        lines += _diff_maps("layer", self.layers, other.layers,
                            lambda info: (info.type, info.output_shape, info.params, info.tied_to),
                            lambda info: f"{info.type} -> {fmt_shape(info.output_shape)}"
                                         + (f" tied to {info.tied_to}" if info.tied_to else ""))
        if not lines and list(self.params) != list(other.params):
            lines.append("param order differs: " + ", ".join(self.params) + " != " + ", ".join(other.params))
        return lines

    # ------------------------------------------------------------------ display
    @property
    def param_bytes(self) -> int:
        """Bytes the parameters take in their dtypes (every entry, as ``total_params`` counts them)."""
        return sum(p.size * _itemsize(p.dtype) for p in self.params.values())

    def table(self, depth: int | None = None) -> str:
        """The report as a table, one row per layer and parameter, with each parameter's memory.

        ``depth``: show layers nested at most that deep (1: the top-level layers only); the parameters of
        deeper layers are summed into the row of their shown ancestor, as torchinfo's and Keras's summaries do.
        """
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise SpecError(f"ShapeReport.table: expected depth to be a positive integer or None, received {depth!r}")
        head = (f"ShapeReport(backend={self.backend}, input={fmt_shape(self.input_shape)} {self.input_dtype}, "
                f"output={fmt_shape(self.output_shape)}, {self.data_format})")
        rows = [("layer", "type", "output shape", "param", "shape", "count", "memory", "native")]
        for info, own, below in _visible(self.layers, depth):
            first = (info.path, info.type, fmt_shape(info.output_shape) + (f" = {info.tied_to}" if info.tied_to else ""))
            cells = [self._param_cells(pname) for pname in own if pname in self.params]
            hidden = [self.params[n] for n in below if n in self.params]
            if hidden:
                cells.append((f"({len(hidden)} nested)", "", f"{sum(p.size for p in hidden):,}",
                              _fmt_bytes(sum(p.size * _itemsize(p.dtype) for p in hidden)), ""))
            for i, cell in enumerate(cells or [("", "", "", "", "")]):
                rows.append((first if i == 0 else ("", "", "")) + cell)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(c.rjust(w) if j in (5, 6) else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()
                          for r in rows]
        lines.insert(2, "-" * min(sum(widths) + 2 * len(widths), 120))
        trainable = sum(p.size * _itemsize(p.dtype) for p in self.params.values() if p.trainable)
        lines.append(f"Total params: {self.total_params:,} (trainable {self.trainable_params:,}, "
                     f"non-trainable {self.non_trainable_params:,})")
        lines.append(f"Params memory: {_fmt_bytes(self.param_bytes)} (trainable {_fmt_bytes(trainable)}, "
                     f"non-trainable {_fmt_bytes(self.param_bytes - trainable)})")
        if any(p.source == "reference" for p in self.params.values()):
            lines.append("[reference]: " + ("the numpy backend is the reference itself: every shape comes from "
                                            "deferinit's shape rules, with no framework" if self.backend == "numpy" else
                                            f"{self.backend} has no deferred (lazy) form of that layer, so the shape "
                                            f"came from deferinit's shape rules, not from the framework's inference"))
        return "\n".join(lines)

    def _param_cells(self, pname: str) -> tuple[str, str, str, str, str]:
        p = self.params[pname]
        native = ""
        if p.native_name:
            native = p.native_name + ("" if p.native_shape == p.shape else " " + fmt_shape(p.native_shape))
            native += " [reference]" if p.source == "reference" else ""
        return (pname.rsplit(".", 1)[-1], fmt_shape(p.shape), f"{p.size:,}", _fmt_bytes(p.size * _itemsize(p.dtype)),
                native)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (f"ShapeReport(backend={self.backend!r}, input_shape={self.input_shape}, "
                f"output_shape={self.output_shape}, params={len(self.params)}, total_params={self.total_params})")


def _visible(layers: Mapping[str, LayerInfo], depth: int | None) -> list[tuple[LayerInfo, Shape, list[Any]]]:
    """(layer, its own parameters, the parameters of its hidden descendants) for each layer shown at ``depth``.
    Layers come in pre-order, so a layer's ancestors are the open entries of a stack of paths."""
    shown: list[tuple[LayerInfo, Shape, list[Any]]] = []
    stack: list[str] = []
    holder: dict[str, list[Any]] = {}
    for path, info in layers.items():
        while stack and not path.startswith(stack[-1] + "."):
            stack.pop()
        if depth is None or len(stack) < depth:
            shown.append((info, info.params, holder.setdefault(path, [])))
        else:
            holder[stack[depth - 1]].extend(info.params)
        stack.append(path)
    return shown


def _itemsize(dtype: str) -> int:
    import numpy as np  # here, not at import: the report is read where numpy may not be wanted yet

    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:  # a dtype numpy lacks (bfloat16 from a JAX report): its bits are in its name
        bits = re.findall(r"\d+", dtype)
        return int(bits[-1]) // 8 if bits else 4


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return ""  # pragma: no cover


def _show(value: Any) -> str:
    return fmt_shape(value) if isinstance(value, tuple) else repr(value)


def _diff_maps(kind: str, a: Mapping[str, Any], b: Mapping[str, Any], key: Any, show: Any) -> list[str]:
    lines = []
    for name in a:
        if name not in b:
            lines.append(f"{kind} '{name}': {show(a[name])} only in the first report")
        elif key(a[name]) != key(b[name]):
            lines.append(f"{kind} '{name}': {show(a[name])} != {show(b[name])}")
    lines += [f"{kind} '{name}': {show(b[name])} only in the second report" for name in b if name not in a]
    return lines
