"""Specs as data: ``to_dict`` / ``from_dict`` and spec files (``.json``, ``.toml``, ``.yaml``).

Spec files are data only: they are parsed with ``json``, ``tomllib`` and ``yaml.safe_load``, never
executed, and every key is checked (an unknown key is a :class:`SpecError` naming its position).
Only fields that differ from their defaults are written, so files stay short. A layer object used twice
is written once and referred to afterwards as ``{"ref": "<path of its first use>"}``, so ties survive a
round trip.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Mapping

from .errors import BackendUnavailableError, SpecError
from .layers import (
    GELU,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .layers_graph import Attend
from .layers_seq import SEQUENCE_LAYERS
from .merges import Add, Multiply
from .spec import MAX_DEPTH, Concat, Container, Layer, LazyModel, Residual, Sequential, show
from .spec_files import check_expansion, read_spec_data

__all__ = ["layer_to_dict", "model_from_dict", "load_spec", "save_spec", "LAYER_TYPES", "register_layer"]

FORMAT = "deferinit.spec"
VERSION = 1


#: every layer type a spec file may name; an explicit table (no subclass walking)
LAYER_TYPES: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    Dense, Conv1D, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, BatchNorm, LayerNorm, Dropout, Flatten, Identity,
    Activation, ReLU, Sigmoid, Tanh, GELU, Softmax, Embedding, *SEQUENCE_LAYERS, Sequential, Residual, Concat,
    Add, Multiply, LazyModel)}
LAYER_TYPES["Attend"] = Attend  # graph specs' tied output projection (layers_graph.py)


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a layer type known to spec files (for layers added by later modules or by users)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def _plain(value: Any, seen: dict[int, str], path: str) -> Any:
    if isinstance(value, Layer):
        return _to_dict(value, seen, path)
    if isinstance(value, (tuple, list)):
        return [_plain(v, seen, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):  # a graph spec's inputs and nodes: a copy, so the spec stays immutable
        return {k: _plain(v, seen, path) for k, v in value.items()}
    return value


def _short(layer: Layer, field: str, value: Any) -> Any:
    """``3`` for ``(3, 3)`` where the layer takes an int for the field and makes the same tuple of it (a kernel
    size); the tuple itself elsewhere (``Reshape((4, 4))`` is not ``Reshape(4)``)."""
    if not (isinstance(value, tuple) and value and all(type(v) is int and v == value[0] for v in value)):
        return value
    key = (type(layer), field, value)
    same = _SHORT.get(key)
    if same is None:  # asked of the layer's own validation once per type, field and value
        try:
            same = getattr(dataclasses.replace(layer, **{field: value[0]}), field) == value
        except (SpecError, TypeError, ValueError):
            same = False
        if len(_SHORT) < 4096:
            _SHORT[key] = same
    return value[0] if same else value


_SHORT: dict[tuple[Any, ...], bool] = {}


def _to_dict(layer: Layer, seen: dict[int, str], path: str) -> dict[str, Any]:
    if id(layer) in seen:
        return {"ref": seen[id(layer)]}
    seen[id(layer)] = path
    out: dict[str, Any] = {"type": type(layer).__name__}
    segs = [seg for seg, _ in layer.children] if isinstance(layer, Container) else []
    for f in dataclasses.fields(layer):
        value = getattr(layer, f.name)
        if not isinstance(layer, Container):
            value = _short(layer, f.name, value)
        if f.kw_only and f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.name in ("layers", "branches"):
            out[f.name] = [_plain(v, seen, f"{path}.{segs[i]}" if path else segs[i]) for i, v in enumerate(value)]
        elif isinstance(value, Layer):
            out[f.name] = _plain(value, seen, f"{path}.{f.name}" if path else f.name)
        else:
            out[f.name] = _plain(value, seen, path)
    return out


def layer_to_dict(layer: Layer) -> dict[str, Any]:
    """Plain data (lists, strings, numbers) describing ``layer``; a LazyModel gets a format header."""
    body = _to_dict(layer, {}, "")
    if isinstance(layer, LazyModel):
        return {"format": FORMAT, "version": VERSION, **body}
    return body


def _unknown_type(here: str, kind: Any) -> SpecError:
    close = difflib.get_close_matches(kind, list(LAYER_TYPES), n=3, cutoff=0.6) if isinstance(kind, str) else []
    if not close and isinstance(kind, str):  # 'dense', 'conv2d': a difference of case only
        close = [t for t in LAYER_TYPES if t.lower() == kind.lower()]
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return SpecError(f"{here}: expected 'type' to be one of {', '.join(sorted(LAYER_TYPES))}, received "
                     f"{show(kind)}{hint}")


def _from(data: Any, path: str, refs: dict[str, Layer], where: str, depth: int = 1) -> Layer:
    here = f"{where} at '{path or '<root>'}'"
    if not isinstance(data, Mapping):
        raise SpecError(f"{here}: expected a layer mapping with a 'type' key, received {type(data).__name__} {show(data)}")
    if set(data) == {"ref"}:
        ref = data["ref"]
        target = refs.get(str(ref)) if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None
        if target is None:
            raise SpecError(f"{here}: expected 'ref' to name an earlier layer path, received ref={show(ref)}")
        return target
    kind = data.get("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise _unknown_type(here, kind)
    if issubclass(cls, Container) and depth > MAX_DEPTH:  # refused before recursing any deeper
        raise SpecError(f"{here}: expected containers nested at most {MAX_DEPTH} deep (deferinit.spec.MAX_DEPTH), "
                        f"received a {kind} at depth {depth}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = set(fields) | {"type"} | ({"format", "version"} if cls is LazyModel else set())
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        raise SpecError(f"{here}: unknown key(s) {', '.join(map(repr, unknown))} for {kind}; expected some of "
                        f"{', '.join(sorted(set(fields) - {'_'}))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("type", "format", "version"):
            continue
        if key in ("layers", "branches"):
            if not isinstance(value, list):
                raise SpecError(f"{here}: expected '{key}' to be a list of layers, received {type(value).__name__}")
            items: list[Layer] = []
            taken: set[str] = set()
            for i, item in enumerate(value):  # the segments of spec.segments(), known before each item is built
                name = item.get("name") if isinstance(item, Mapping) else None
                seg = name if isinstance(name, str) and name not in taken else str(i)
                layer = _from(item, f"{path}.{seg}" if path else seg, refs, where, depth + 1)
                items.append(layer)
                taken.add(layer.name if layer.name is not None and layer.name not in taken else str(i))
            kwargs[key] = items
        elif key in ("body", "shortcut") and value is not None:
            kwargs[key] = _from(value, f"{path}.{key}" if path else key, refs, where, depth + 1)
        else:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    positional = [f.name for f in fields.values() if not f.kw_only]
    missing = [p for p in positional if p not in kwargs]
    if missing:
        raise SpecError(f"{here}: {kind} needs {', '.join(map(repr, missing))}, received keys "
                        f"{', '.join(map(repr, sorted(data, key=str)))}")
    try:
        layer = cls(**kwargs)
    except SpecError as exc:
        raise SpecError(f"{here}: {exc}") from None
    except TypeError as exc:
        raise SpecError(f"{here}: {kind} cannot be built from these keys ({exc})") from None
    refs[path] = layer
    return layer


def model_from_dict(data: Any, *, where: str = "spec") -> LazyModel:
    """Rebuild a :class:`LazyModel` from :func:`layer_to_dict` output (or a parsed spec file)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping with 'layers', received {type(data).__name__}")
    if data.get("format", FORMAT) != FORMAT:
        raise SpecError(f"{where}: expected format {FORMAT!r}, received format {show(data.get('format'))}")
    if data.get("version", VERSION) != VERSION:
        raise SpecError(f"{where}: expected version {VERSION}, received version {show(data.get('version'))}")
    if "layers" not in data:
        raise SpecError(f"{where}: expected a 'layers' list, received keys {', '.join(map(show, sorted(data, key=str)))}")
    check_expansion(data, where)
    if "nodes" in data:  # a graph spec (LazyModel(inputs=, outputs=))
        from .graph_io import graph_from_dict

        return graph_from_dict(data, where, _from)
    model = _from({"type": "LazyModel", **data}, "", {}, where)
    assert isinstance(model, LazyModel)
    return model


def load_spec(path: str | Path) -> LazyModel:
    """Read a spec file (``.json``, ``.toml``, ``.yaml``/``.yml``). Files are data: nothing is executed, and what
    is read is bounded (see :mod:`deferinit.spec_files`): a SpecError names the file beyond the limits."""
    path = Path(path)
    return model_from_dict(read_spec_data(path), where=str(path))


def save_spec(spec: LazyModel, path: str | Path) -> Path:
    """Write ``spec`` as ``.json``, ``.toml`` (needs ``tomli-w``) or ``.yaml`` (needs PyYAML)."""
    path = Path(path)
    data = spec.to_dict()
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif suffix == ".toml":
        try:
            import tomli_w
        except ImportError:
            raise BackendUnavailableError("writing TOML spec files needs tomli-w: pip install tomli-w") from None
        text = tomli_w.dumps(data)
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise BackendUnavailableError("writing YAML spec files needs PyYAML: pip install pyyaml") from None
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise SpecError(f"{path}: expected a .json, .toml or .yaml suffix, received {suffix or '(none)'!r}")
    path.write_text(text, encoding="utf-8")
    return path


# The built-in layer families that add themselves to LAYER_TYPES when imported: imported here, so that a spec file
# or a parity artifact naming them loads in a process that has not used them yet (``import deferinit`` loads
# them lazily, on first access).
from . import layers_extra as _layers_extra  # noqa: E402,F401
from . import layers_up as _layers_up  # noqa: E402,F401
