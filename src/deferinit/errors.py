"""Every user-facing error of deferinit derives from :class:`DeferInitError`.

Each message names where the problem is (a layer path, a parameter, a file and position), what was
expected, what was received and, where there is one, what to do. The helpers below build messages in that
one shape so that every backend words the same mistake the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DeferInitError",
    "SpecError",
    "ShapeMismatchError",
    "DTypeError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "NotInitializedError",
    "UnsupportedLayerError",
    "UnsupportedShardingError",
    "WeightsError",
    "BackendError",
    "ResourceError",
]


class DeferInitError(Exception):
    """Base class of every error deferinit raises on purpose."""


class SpecError(DeferInitError, ValueError):
    """The spec itself is invalid (raised at construction or when a spec file is read)."""


class ShapeMismatchError(DeferInitError, ValueError):
    """Data (or weights) do not fit the shapes a layer expects."""


class DTypeError(DeferInitError, TypeError):
    """Data of a dtype a layer cannot take (integers where floats are needed, complex, bool)."""


class BackendUnavailableError(DeferInitError, ImportError):
    """A backend's framework is not installed or cannot be imported here."""


class UnknownBackendError(DeferInitError, ValueError):
    """A backend name that is neither built in nor registered through an entry point."""


class NotInitializedError(DeferInitError, RuntimeError):
    """Something that needs parameter shapes was asked before ``apply_init`` (or ``load_weights``)."""


class UnsupportedLayerError(DeferInitError, NotImplementedError):
    """A layer (or an option of one) that a backend cannot express faithfully."""


class UnsupportedShardingError(UnsupportedLayerError):
    """Sharded initialization asked of a backend (or of a parameter layout) that cannot do it faithfully."""


class WeightsError(SpecError):
    """Weights that do not belong to the spec (missing or unexpected names, non-finite values) or a weight file
    that is not what it claims to be (truncated, wrong format)."""


class BackendError(DeferInitError, RuntimeError):
    """A framework failed where deferinit expected it to succeed; the framework's own error is chained."""


class ResourceError(DeferInitError, MemoryError):
    """A request refused before allocation because it would not fit in memory."""


def fmt_shape(shape: Any) -> str:
    """``(2, 20)`` with ``None`` shown as ``None``; a 1-tuple keeps its comma."""
    if shape is None:
        return "None"
    try:
        items = tuple(shape)
    except TypeError:
        return repr(shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in items) + ("," if len(items) == 1 else "") + ")"


def where(path: str, layer: Any = None, backend: str | None = None) -> str:
    """The 'where' part of a message: ``layer '3.body.0' (Conv2D) on backend torch``."""
    text = f"layer '{path}'" if path else "the model input"
    if layer is not None:
        text += f" ({type(layer).__name__})"
    if backend:
        text += f" on backend {backend}"
    return text
