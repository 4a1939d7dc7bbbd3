"""Layer types from outside the package, by the same mechanism as the built-in ones.

A layer type is four things: its fields and shape rule (a frozen dataclass subclassing :class:`~deferinit.
layers.Leaf` with an ``infer(shape, ctx)`` method, known to spec files by :func:`register_layer`), its NumPy
kernel (the reference forward) and one builder per backend (registered by :func:`register_builder`). The
built-in layers register their builders with the same decorator, in each backend's ``leaves.py``; a
package can ship layers for others through the ``deferinit.layers`` entry-point group (the value is a module
to import, whose decorators register what it defines). See ``examples/custom_layer.py``.

What a builder takes and returns is the backend's own (documented in ``deferinit/adapters/<backend>/leaves.py``
and the README); what every backend shares is that a builder is looked up by backend name and layer type here.
Nothing here imports a framework or NumPy.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from .errors import SpecError

__all__ = ["register_layer", "register_builder", "builders", "builder_for", "load_plugins", "generation", "GROUP"]

GROUP = "deferinit.layers"
F = TypeVar("F", bound=Callable[..., Any])
L = TypeVar("L", bound=type)

_BUILDERS: dict[str, dict[type, Callable[..., Any]]] = {}
_plugins_loaded = False
_generation = 0  # how many builders have been registered: a result that depends on them is keyed with it


def register_layer(cls: L) -> L:
    """Make a layer type known to spec files (``{"type": "<ClassName>", ...}``), as the built-in ones are."""
    from .layers import Leaf
    from .serialize import LAYER_TYPES
    from .spec import Layer

    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise SpecError(f"register_layer: expected a subclass of deferinit.layers.Leaf, received {cls!r}")
    if issubclass(cls, Leaf) and cls.infer is Leaf.infer:
        raise SpecError(f"register_layer: {cls.__name__} must define infer(shape, ctx) -> (output shape, "
                        f"{{name: ParamSpec}}), its shape rule")
    known = LAYER_TYPES.get(cls.__name__)
    if known is not None and known is not cls and known.__module__.startswith("deferinit."):
        raise SpecError(f"register_layer: the name {cls.__name__!r} is a built-in layer type; choose another name")
    LAYER_TYPES[cls.__name__] = cls
    return cls


def register_builder(backend: str, *layer_types: type) -> Callable[[F], F]:
    """Decorator: ``fn`` builds ``layer_types`` on ``backend`` (a registered backend name or alias)."""
    from .registry import resolve

    name = resolve(backend)
    if not layer_types or not all(isinstance(t, type) for t in layer_types):
        raise SpecError(f"register_builder: expected one or more layer classes after the backend name, "
                        f"received {layer_types!r}")

    def decorate(fn: F) -> F:
        global _generation
        table = _BUILDERS.setdefault(name, {})
        for t in layer_types:
            table[t] = fn
        _generation += 1
        return fn

    return decorate


def builders(backend: str) -> Mapping[type, Callable[..., Any]]:
    """Every builder registered for ``backend`` (built-ins once its ``leaves`` module is imported)."""
    load_plugins()
    return _BUILDERS.get(backend, {})


def builder_for(backend: str, layer_type: type) -> Callable[..., Any] | None:
    """The builder of ``layer_type`` on ``backend``, or None (the caller raises UnsupportedLayerError)."""
    fn = _BUILDERS.get(backend, {}).get(layer_type)
    if fn is None and not _plugins_loaded:
        load_plugins()
        fn = _BUILDERS.get(backend, {}).get(layer_type)
    return fn


def generation() -> int:
    """A number that changes whenever a builder is registered (a cache of what builders made checks it)."""
    return _generation


def load_plugins() -> None:
    """Import every module named in the ``deferinit.layers`` entry-point group, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib import metadata

    try:
        eps = list(metadata.entry_points(group=GROUP))
    except Exception:  # a broken distribution's metadata must not break the built-in layers
        return
    for ep in eps:
        try:
            ep.load()
        except Exception as exc:
            raise SpecError(f"entry point {ep.name!r} of group {GROUP} ({ep.value}) failed to import: "
                            f"{type(exc).__name__}: {exc}") from exc
