"""The spec: immutable, backend-neutral layer descriptions with no input dims.

Layers are frozen dataclasses whose first field is the output size and whose other fields are keyword-only.
They validate their own fields at construction (a :class:`SpecError` saying ``Received: units=-3``) and
carry their shape rule beside their fields (see ``layers.py``). What inference finds goes into a
:class:`~deferinit.report.ShapeReport`, never back into the spec.

Identity matters: one layer object used twice in a spec is ONE layer with tied parameters, so layers are
compared by value (``to_dict``) but the walker tells ties apart by ``id``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator
from typing import Sequence as Seq

from .errors import SpecError

__all__ = ["Layer", "Container", "Sequential", "LazyModel", "Residual", "Concat", "ACTIVATIONS", "DATA_FORMATS",
           "MAX_DEPTH", "MAX_INT", "show", "segments"]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "softmax", "silu", "relu6", "hard_swish", "hard_sigmoid",
               "leaky_relu", "gelu_tanh")
DATA_FORMATS = ("channels_first", "channels_last")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")  # matched with fullmatch: '$' would accept a trailing newline

#: containers may nest this deep at most (a LazyModel counts as one). Real models nest fewer than 10 deep; every
#: walk below (the frameworks' own module calls included) recurses once or more per level, and Keras uses about
#: ten Python frames a level, so a few hundred levels exhaust Python's stack in some backend.
MAX_DEPTH = 64
#: every size, count and index in a spec is below 2**63 (an int64); larger ones overflow every framework
MAX_INT = 2**63 - 1

Shape = tuple[Any, ...]  # tuple[int | None, ...]


# --------------------------------------------------------------------------------------------- validators
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxtuple, _SHOW.maxdict, _SHOW.maxlevel = 60, 60, 8, 8, 6, 3


def show(value: Any) -> str:
    """``repr(value)`` for a message, bounded: long strings and deep or long lists are cut, and an integer too
    long for ``str`` (Python refuses past 4300 digits) is described by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        digits = int(abs(value).bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}<an integer of about {digits:,} digits>"
    try:
        return _SHOW.repr(value)
    except Exception:  # a user object whose __repr__ fails
        return f"<a {type(value).__name__}>"


def _bad(layer: str, field: str, value: Any, need: str) -> SpecError:
    return SpecError(f"{layer}: {field} must be {need}. Received: {field}={show(value)}")


_TOO_BIG = "at most 2**63 - 1 (a larger size overflows the int64 sizes of every framework)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(layer: str, field: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    if type(value) is int and minimum <= value <= MAX_INT:  # the usual case, decided at once (not bool: its type)
        return
    if value is None and optional:
        return
    if _is_int(value) and value > MAX_INT:
        raise _bad(layer, field, value, _TOO_BIG)
    if not _is_int(value) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _bad(layer, field, value, need + (" or None" if optional else ""))


def check_tuple(layer: str, field: str, value: Any, n: int, *, minimum: int = 1, optional: bool = False) -> tuple[Any, ...]:
    """Normalize ``int | tuple`` to an ``n``-tuple of ints >= minimum."""
    # the usual cases first, decided with type() (not bool, not a subclass): a spec's constructors were a third of
    # LeNet's fresh spec-compile-apply_init overhead, mostly here
    if type(value) is int:
        if minimum <= value <= MAX_INT:
            return (value,) * n
    elif type(value) is tuple and len(value) == n and all(type(v) is int and minimum <= v <= MAX_INT for v in value):
        return value
    if value is None and optional:
        return None  # type: ignore[return-value]
    items = (value,) * n if _is_int(value) else value
    if isinstance(items, list):
        items = tuple(items)
    if isinstance(items, tuple) and any(_is_int(v) and v > MAX_INT for v in items):
        raise _bad(layer, field, value, _TOO_BIG)
    ok = isinstance(items, tuple) and len(items) == n and all(_is_int(v) and v >= minimum for v in items)
    if not ok:
        need = f"an integer >= {minimum} or a tuple of {n} such integers"
        raise _bad(layer, field, value, need)
    return items


def check_activation(layer: str, value: Any, field: str = "activation", optional: bool = True) -> None:
    if value is None and optional:
        return
    if value not in ACTIVATIONS:
        raise _bad(layer, field, value, "one of " + ", ".join(repr(a) for a in ACTIVATIONS) + (" or None" if optional else ""))


def check_float(layer: str, field: str, value: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            number = float(value)  # an int past a float's range (10**400) would overflow in every framework
        except OverflowError:
            ok = False
    if ok:
        ok = (number > lo if lo_open else number >= lo) and (number < hi if hi_open else number <= hi)
    if not ok:
        interval = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
        raise _bad(layer, field, value, f"a number in {interval}")


# --------------------------------------------------------------------------------------------- base class
@dataclass(frozen=True, eq=False, repr=False)
class Layer:
    """Base of every spec node. Subclasses are frozen dataclasses; ``name`` is keyword-only on all."""

    _: KW_ONLY
    name: str | None = None

    #: names of the parameters the layer owns, in report order (leaf layers set this)
    param_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not _NAME.fullmatch(self.name)):
            raise _bad(type(self).__name__, "name", self.name,
                       "None or a string of letters, digits, '_' and '-' that does not start with a digit")
        self.validate()
        if isinstance(self, Container):
            _set_depth(self)

    def validate(self) -> None:
        """Check the fields; raise :class:`SpecError`. Subclasses extend this."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Called on symbolic tensors (``di.Input``), a layer builds a graph spec: see :mod:`deferinit.graph`."""
        from .graph import call_layer

        return call_layer(self, args, kwargs)

    @property
    def children(self) -> tuple[tuple[str, "Layer"], ...]:
        """``(segment, child)`` pairs for containers; empty for leaf layers."""
        return ()

    # -- value semantics (identity is used for ties; see the module docstring)
    def to_dict(self) -> dict[str, Any]:
        from .serialize import layer_to_dict

        return layer_to_dict(self)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        import json  # not at import: ``import deferinit`` loads as little as it can

        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.kw_only:
                if f.default is not dataclasses.MISSING and value == f.default:
                    continue
                parts.append(f"{f.name}={value!r}")
            else:
                parts.append(repr(value))
        return f"{type(self).__name__}({', '.join(parts)})"


def _as_layers(owner: str, field: str, items: Any) -> tuple[Layer, ...]:
    if isinstance(items, Layer) or isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise _bad(owner, field, items, "a list of layers")
    for i, item in enumerate(items):
        if not isinstance(item, Layer):
            raise SpecError(f"{owner}: {field}[{i}] must be a deferinit layer. Received: {show(item)} "
                            f"({type(item).__name__})")
    return tuple(items)


@dataclass(frozen=True, eq=False, repr=False)
class Container(Layer):
    """A layer made of other layers; its shape rule is structural (see ``shapes.py``)."""

    def iter_layers(self) -> Iterator[Layer]:
        """Every layer below this one, depth first, ties included once per position."""
        for _, child in self.children:
            yield child
            if isinstance(child, Container):
                yield from child.iter_layers()


def _set_depth(container: Container) -> None:
    """Containers are built from the inside out, so each knows how deep it nests from its children alone."""
    depth = 1 + max((getattr(child, "_depth", 0) for _, child in container.children), default=0)
    if depth > MAX_DEPTH:
        kind = type(container).__name__
        raise SpecError(f"{kind}: expected containers nested at most {MAX_DEPTH} deep (deferinit.spec.MAX_DEPTH; real "
                        f"models nest fewer than 10, and deeper ones exhaust Python's stack in the frameworks). "
                        f"Received: a {kind} whose layers nest {depth} containers deep")
    object.__setattr__(container, "_depth", depth)


def segments(layers: Seq[Layer]) -> list[str]:
    """The path segment of each of a container's layers: its ``name=``, or its position. A layer used twice in
    one container (a tie) has its name at its first use and its position at the next ones, so that every
    position has a path of its own."""
    taken: set[str] = set()
    out = []
    for i, layer in enumerate(layers):
        seg = layer.name if layer.name is not None and layer.name not in taken else str(i)
        taken.add(seg)
        out.append(seg)
    return out


def _check_unique_names(owner: str, layers: Seq[Layer]) -> None:
    seen: dict[str, int] = {}
    for i, layer in enumerate(layers):
        seg = layer.name if layer.name is not None else str(i)
        if seg in seen and layers[seen[seg]] is not layer:
            raise SpecError(f"{owner}: two layers would both be named '{seg}' (positions {seen[seg]} and {i}); "
                            f"give them different name= values")
        seen[seg] = i


@dataclass(frozen=True, eq=False, repr=False)
class Sequential(Container):
    """Layers applied one after the other. Children are named by position, or by their ``name=``."""

    layers: Seq[Layer]

    def validate(self) -> None:
        object.__setattr__(self, "layers", _as_layers(type(self).__name__, "layers", self.layers))
        _check_unique_names(type(self).__name__, self.layers)
        object.__setattr__(self, "_children", tuple(zip(segments(self.layers), self.layers)))  # frozen: once

    @property
    def children(self) -> tuple[tuple[str, Layer], ...]:
        return self._children  # type: ignore[attr-defined,no-any-return]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]


@dataclass(frozen=True, eq=False, repr=False)
class LazyModel(Sequential):
    """A whole model: a :class:`Sequential` with a data format. Usable as a block inside another spec.

    ``data_format`` says how the data is laid out (``channels_first``: ``(N, C, *spatial)``, as in PyTorch
    and MXNet; ``channels_last``: ``(N, *spatial, C)``, as in Keras and Flax). Every backend accepts and
    returns data in this layout; parameters always use the canonical layouts.
    """

    _: KW_ONLY
    data_format: str = "channels_first"

    if TYPE_CHECKING:  # for type checkers only (the dataclass writes the real one): the graph form's keywords
        def __init__(self, layers: Seq[Layer] = (), *, name: str | None = None, data_format: str = "channels_first",
                     inputs: Any = None, outputs: Any = None) -> None: ...

    def __new__(cls, *args: Any, **kwargs: Any) -> "LazyModel":
        if cls is LazyModel and ("inputs" in kwargs or "outputs" in kwargs):  # the graph form
            from .graph import GraphModel

            return object.__new__(GraphModel)
        return object.__new__(cls)

    def validate(self) -> None:
        super().validate()
        if self.data_format not in DATA_FORMATS:
            raise _bad("LazyModel", "data_format", self.data_format, "'channels_first' or 'channels_last'")

    @classmethod
    def from_dict(cls, data: Any) -> "LazyModel":
        from .serialize import model_from_dict

        return model_from_dict(data)

    def summary(self, input_shape: Seq[int | None]) -> str:
        from .shapes import infer_shapes

        return str(infer_shapes(self, input_shape))


@dataclass(frozen=True, eq=False, repr=False)
class Residual(Container):
    """``activation(body(x) + shortcut(x))``; the shortcut is the identity when ``None``."""

    body: Layer
    _: KW_ONLY
    shortcut: Layer | None = None
    activation: str | None = None

    def validate(self) -> None:
        if not isinstance(self.body, Layer):
            raise _bad("Residual", "body", self.body, "a deferinit layer")
        if self.shortcut is not None and not isinstance(self.shortcut, Layer):
            raise _bad("Residual", "shortcut", self.shortcut, "a deferinit layer or None")
        check_activation("Residual", self.activation)

    @property
    def children(self) -> tuple[tuple[str, Layer], ...]:
        kids: tuple[tuple[str, Layer], ...] = (("body", self.body),)
        if self.shortcut is not None:
            kids += (("shortcut", self.shortcut),)
        return kids


@dataclass(frozen=True, eq=False, repr=False)
class Concat(Container):
    """Applies each branch to the same input and concatenates the results along the channel axis."""

    branches: Seq[Layer]

    def validate(self) -> None:
        object.__setattr__(self, "branches", _as_layers("Concat", "branches", self.branches))
        if not self.branches:
            raise _bad("Concat", "branches", [], "a non-empty list of layers")
        _check_unique_names("Concat", self.branches)

    @property
    def children(self) -> tuple[tuple[str, Layer], ...]:
        return tuple(zip(segments(self.branches), self.branches))
