"""The adapter contract: the hooks a backend implements and the capabilities it declares.

A backend is a subclass of :class:`~deferinit.adapters.compiled.CompiledModel` (which derives from
:class:`Contract`) that fills in the hooks below. The compiled model calls them, and only them, after its own
checks passed (``checks.py``) and before it swaps a new native model in (``compiled.py``); a hook never
validates user input and never sees a partly initialized model of its own.

Required hooks: ``_new_native``, ``_native_init``, ``_to_native``, ``_forward``, ``_get_weights``,
``_set_weights``. Optional hooks with a default here: ``_native_layer_shapes`` (None: no framework to ask),
``_native_for``, ``_init_value_error``, ``_shape_dtype``, ``_is_native``, ``_signature``, ``to_numpy``, ``_inference_mode``,
``_gradients`` (refused). Optional hooks found by ``getattr`` (absent means "not available"), so they are only
described here:

* ``_materialize(self, init, key) -> None``: allocate the parameters of the abstract model in place (then
  ``_abstract_snapshot`` must be implemented too); without it ``materialize`` re-runs ``apply_init`` concretely.
* ``_intermediates(self, x) -> dict[str, np.ndarray]``: every layer position's output (inference mode), keyed
  by path, in the spec's data format.

Framework-free: this module imports no framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Mapping, TypeVar

import numpy as np

from ..errors import DeferInitError, DTypeError, ShapeMismatchError, UnsupportedLayerError, fmt_shape

if TYPE_CHECKING:
    from ..report import ShapeReport
    from ..shapes import Inference, Node
    from ..spec import LazyModel
    from ._gate import Gate
    from ._semantics import IdCheck

__all__ = ["Contract", "NativeParam", "ShapeDtype", "REQUIRED_HOOKS"]

N = TypeVar("N")

#: the hooks every backend must implement (the others have a default, or are optional: see above)
REQUIRED_HOOKS = ("_new_native", "_native_init", "_to_native", "_forward", "_get_weights", "_set_weights")


@dataclass(frozen=True)
class ShapeDtype:
    """An input described by shape and dtype only (like ``jax.ShapeDtypeStruct``): ``apply_init`` accepts it in
    place of data, so no input needs to be allocated for abstract initialization."""

    shape: tuple
    dtype: str = "float32"


@dataclass(frozen=True)
class NativeParam:
    """What a backend's own deferred initialization found for one canonical parameter."""

    native_name: str
    native_shape: tuple[int, ...]
    shape: tuple[int, ...]  # the native shape translated to the canonical layout
    source: str = "native"  # "reference" where the framework has no deferred form and the rules gave the dim


class Contract(Generic[N]):
    """The hooks a backend implements and the capabilities it declares (see the module docstring)."""

    # ================================================================== capabilities a backend declares
    #: the backend's one name (``ShapeReport.backend``, the registry's key)
    backend: str = "?"
    #: how big a framework tensor may be before the memory check refuses it (fraction of available memory)
    memory_fraction: float = 0.8
    #: the most elements one tensor may hold and the largest single axis on this backend, and why (resources.py;
    #: beyond 2**63 bytes every backend refuses)
    max_elements: int | None = None
    max_dim: int | None = None
    size_note: str = ""
    #: abstract apply_init still builds the layers' constant tables (PositionalEncoding's max_len x dim)
    abstract_tables: bool = False
    #: ``_set_weights`` builds every new value before one assignment (so it cannot fail part-way)
    _swaps_weights: bool = False

    # ================================================================== state the compiled model keeps
    spec: LazyModel
    root: Node
    _native: N | None
    _report: ShapeReport | None
    _inference: Inference | None
    _fixed: dict[str, tuple]  # canonical parameter shapes once initialized
    _checked: dict[tuple, tuple | None]  # call signature -> what a training call must refuse (None: nothing)
    _abstract: bool
    _index_limit: tuple[IdCheck, ...] | None
    _batch_norms: Any
    _gate: Gate

    def _who(self) -> str:
        """How errors name this model: the backend and the spec's name."""
        return f"{self.backend} model{' ' + repr(self.spec.name) if self.spec.name else ''}"

    # ================================================================== hooks a backend implements
    def _new_native(self) -> N:
        """Build a fresh native model (its parameters still deferred) from ``self.root``."""
        raise NotImplementedError

    def _native_for(self, inference: Inference, abstract: bool, values_follow: bool) -> N:
        """The native model ``apply_init`` hands to ``_native_init`` for ``inference``'s input (``values_follow`` as
        there): by default a fresh one (``_new_native``); a backend may start it from what an earlier init on an
        equal input kept (torch, NNX: ``template.py``)."""
        return self._new_native()

    def _native_init(self, native: N, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        """Run the framework's own deferred initialization on ``native`` with input ``x`` (a native tensor, or
        a :class:`ShapeDtype` when abstract), applying the framework's own ``init`` if one is given (else its
        default), and return what it found per canonical name. When ``abstract``, allocate no parameters.
        ``values_follow`` is True when a portable initializer's values will overwrite every parameter right
        after (``init`` is then None): a backend whose modules draw their values as they are constructed (NNX)
        may construct them abstractly and draw none."""
        raise NotImplementedError

    def _native_layer_shapes(self, native: N, x: Any, inference: Inference, abstract: bool) -> Mapping[str, tuple] | None:
        """The framework's own answer to "what shape comes out where", for the report: ``{layer path: output
        shape}`` for every layer position of ``inference.report.layers`` (tied positions included) and ``""`` for
        the model's output, observed in the framework's own dry run or trace of ``native`` (just initialized by
        ``_native_init`` on ``x``; when ``abstract``, nothing may be allocated). Called once per ``apply_init``.
        None means the backend has no framework to ask: the numpy backend, whose shapes are the reference's.
        The compiled model compares each shape with the reference rules (a disagreement is a BackendError naming
        the layer) and reports it with ``source="native"``."""
        return None

    def _to_native(self, x: Any) -> Any:
        """An input (numpy array or the framework's tensor) as the framework's tensor."""
        raise NotImplementedError

    def _forward(self, x: Any, training: bool) -> Any:
        """The native forward on a checked native input ``x``; returns the framework's tensor. On the path of
        every call: no per-call work that ``_check_call`` (cached per signature) could do once."""
        raise NotImplementedError

    def _get_weights(self) -> dict[str, np.ndarray]:
        """Every canonical parameter as a float32 numpy array in canonical layout."""
        raise NotImplementedError

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Write checked canonical float32 weights (every name present) into the native model."""
        raise NotImplementedError

    def _abstract_snapshot(self) -> Any:
        """For backends with an in-place ``_materialize``: a function that puts the abstract model back as it is
        now (called when materialize fails part-way)."""
        raise NotImplementedError

    def _init_value_error(self, name: str, want: tuple, shape: tuple, dtype: Any, real: bool) -> DeferInitError | None:
        """What is wrong with the values a framework's own initializer gave parameter ``name`` (native shape
        ``want``), if anything: another shape, or no real numbers."""
        if tuple(shape) != tuple(want):
            return ShapeMismatchError(f"{self._who()}: the initializer gave parameter '{name}' values of shape "
                                      f"{fmt_shape(tuple(shape))}, expected {fmt_shape(tuple(want))} (the shape the "
                                      f"framework found); nothing was changed")
        if not real:
            return DTypeError(f"{self._who()}: the initializer gave parameter '{name}' values of dtype {dtype}, "
                              f"expected real numbers (stored as float32); nothing was changed")
        return None

    def _shape_dtype(self, x: Any) -> tuple[tuple, Any]:
        """Shape and dtype of an input without copying it (framework tensors override as needed)."""
        return tuple(x.shape), np.dtype(getattr(x.dtype, "as_numpy_dtype", x.dtype))

    def _inference_mode(self) -> None:
        """Put the native model back in inference mode after a training call (only PyTorch keeps a mode)."""

    def to_numpy(self, y: Any) -> np.ndarray:
        """A backend tensor (as ``__call__`` returns) as a numpy array."""
        return np.asarray(y)

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        """The gradient of ``sum(output)`` for every trainable canonical parameter, canonical layout, float32."""
        raise UnsupportedLayerError(f"{self._who()}: gradients are not available on this backend")

    def _is_native(self, x: Any) -> bool:
        """``x`` is already the framework's tensor (then it is used as it is, without a copy)."""
        return False

    def _signature(self, x: Any) -> tuple:
        """The key under which a native input's checks are cached: cheap, since every call computes it."""
        return (tuple(x.shape), x.dtype)  # str(dtype) costs ~5 us a call; dtypes hash as they are
