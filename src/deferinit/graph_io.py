"""Reading a graph spec (``LazyModel(inputs=, outputs=)``) back from its plain data (:func:`deferinit.load_spec`,
``LazyModel.from_dict``). The layers are read as a list spec's are; the graph itself is checked by
:class:`deferinit.graph.GraphModel` (cycles, dangling nodes, unused inputs), whatever made the data."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .errors import SpecError
from .graph import GraphModel
from .spec import Layer, show

__all__ = ["graph_from_dict"]

_KEYS = {"format", "version", "type", "name", "data_format", "layers", "inputs", "nodes", "outputs"}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _attend(item: Mapping[str, Any], seg: str, refs: dict[str, Layer], where: str) -> Layer:
    from .layers_graph import Attend

    ref = item.get("embedding")
    target = refs.get(str(ref.get("ref"))) if isinstance(ref, Mapping) and set(ref) == {"ref"} else None
    if target is None or set(item) - {"type", "name", "embedding"}:
        raise SpecError(f"{where} at '{seg}': an Attend needs 'embedding': {{'ref': <the path of an earlier "
                        f"Embedding>}} (and optionally 'name'), received {show(dict(item))}")
    try:
        return Attend(target, name=item.get("name"))  # type: ignore[arg-type]
    except SpecError as exc:
        raise SpecError(f"{where} at '{seg}': {exc}") from None


def graph_from_dict(data: Mapping[str, Any], where: str, read_layer: Callable[..., Layer]) -> GraphModel:
    unknown = sorted(set(data) - _KEYS, key=str)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for a graph LazyModel; expected some "
                        f"of {', '.join(sorted(_KEYS))}")
    if data.get("type", "GraphModel") not in ("GraphModel", "LazyModel"):
        raise SpecError(f"{where}: a spec with 'nodes' is a graph LazyModel, received type {show(data.get('type'))}")
    items = data.get("layers")
    if not isinstance(items, list):
        raise SpecError(f"{where}: expected 'layers' to be a list of layers, received {type(items).__name__}")
    refs: dict[str, Layer] = {}
    layers, taken = [], set()
    for i, item in enumerate(items):  # the segments of spec.segments(), known before each item is built
        name = item.get("name") if isinstance(item, Mapping) else None
        seg = name if isinstance(name, str) and name not in taken else str(i)
        layer = _attend(item, seg, refs, where) if isinstance(item, Mapping) and item.get("type") == "Attend" \
            else read_layer(item, seg, refs, where, 2)
        refs[seg] = layer
        layers.append(layer)
        taken.add(seg)
    for key in ("inputs", "nodes", "outputs"):
        if key not in data:
            raise SpecError(f"{where}: a graph LazyModel needs '{key}', received keys {', '.join(map(repr, sorted(data)))}")
    try:
        return GraphModel(layers, inputs=tuple(_plain(data["inputs"])), nodes=tuple(_plain(data["nodes"])),
                          outputs=_plain(data["outputs"]), name=data.get("name"),
                          data_format=data.get("data_format", "channels_first"))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise SpecError(f"{where}: a graph LazyModel cannot be built from these keys ({exc})") from None
