"""The one contract every backend implements, and the glue they share.

A backend subclasses :class:`CompiledModel` and fills in a handful of hooks (build the native lazy model,
run its deferred initialization, forward, read and write weights in canonical layout). Everything a user
can get wrong is checked here, once, with the reference rules, *before* any framework code runs, so every
backend raises the same :class:`~deferinit.errors.DeferInitError` for the same mistake:

* ``apply_init`` validates the dummy input with :func:`~deferinit.shapes.infer`, builds a NEW native model,
  lets the framework infer its shapes, checks them against the rules and only then swaps the new model in.
  A failure therefore leaves the compiled model exactly as it was.
* ``__call__`` checks each new (shape, dtype) once against the initialized parameter shapes, then caches
  the answer: steady-state calls cost a dict lookup on top of the native forward.
* ``load_weights`` checks every name, shape, dtype and value before touching the native model, and puts the
  previous values back if the framework fails part-way through writing them.

Threads: one compiled model may be shared by threads. Inference calls run side by side (no lock on their
path: see ``_gate.py``). Everything else runs alone, after the calls in flight finish and before the next
ones start: training-mode calls (they update BatchNorm statistics and the dropout key, and PyTorch's mode is
the module's own flag), ``apply_init``, ``materialize``, ``load_weights``, ``export_weights``, ``gradients``
and ``intermediates``. So a call sees entirely the weights before a ``load_weights`` or entirely those after
it, and an inference call never runs in training mode. Do not call these methods from inside a forward (a
hook on the native model): the call would wait for itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Generic, Mapping, TypeVar

import numpy as np

from .. import init as init_mod
from ..errors import (
    BackendError,
    DeferInitError,
    DTypeError,
    NotInitializedError,
    ResourceError,
    ShapeMismatchError,
    UnsupportedLayerError,
    WeightsError,
    fmt_shape,
)
from ..report import LayerInfo, ParamInfo, ShapeReport
from ..resources import available_memory, check_fits, check_sizes, fmt_bytes, footprint
from ..shapes import Inference, Node, infer, normalize_shape, plan, spec_dtype
from ..spec import LazyModel
from ._gate import Gate
from ._inputs import abstract_input, as_array
from ._semantics import IdCheck, batch_norm_rank_error, batch_norms, check_finite_batch, check_ids, id_checks
from ._standin import stand_in
from ._values import weight_array

__all__ = ["CompiledModel", "NativeParam", "ShapeDtype", "available_memory"]

N = TypeVar("N")


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


def _single_value_batch_norm(inference: Inference, data_format: str) -> tuple[str, int] | None:
    """The first BatchNorm whose batch statistics would come from a single value per channel, if any: every
    framework refuses (or divides by zero in) training mode there, so the call is refused up front."""
    from ..layers import BatchNorm

    for node in inference.root.walk():
        if node.tied_to is None and isinstance(node.layer, BatchNorm) and node.path in inference.inputs:
            shape = inference.inputs[node.path]
            axis = 1 if data_format == "channels_first" or len(shape) == 2 else len(shape) - 1
            count = 1
            for i, d in enumerate(shape):
                if i != axis:
                    count *= d if d is not None else 2
            if count <= 1:
                return node.path, count
    return None


#: how frameworks say they ran out of memory (torch's allocator, TensorFlow's ResourceExhaustedError, XLA's
#: RESOURCE_EXHAUSTED, MXNet's storage manager, C++'s bad_alloc)
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "resourceexhausted",
                  "resource_exhausted", "failed to allocate", "bad_alloc", "unable to allocate")


class CompiledModel(Generic[N]):
    """A spec compiled for one backend. Create with :func:`deferinit.compile`."""

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

    def __init__(self, spec: LazyModel) -> None:
        if not isinstance(spec, LazyModel):
            from ..errors import SpecError

            raise SpecError(f"compile: expected a deferinit.LazyModel, received {type(spec).__name__}")
        self.spec = spec
        self.root: Node = plan(spec)
        self._native: N | None = None
        self._report: ShapeReport | None = None
        self._inference: Inference | None = None
        self._fixed: dict[str, tuple] = {}
        self._checked: dict[tuple, tuple] = {}
        self._abstract = False
        self._index_limit = self._find_index_limit()
        self._batch_norms = batch_norms(self.root)  # their input rank is fixed at init (_semantics.py)
        self._gate = Gate()

    # ================================================================== hooks a backend implements
    def _new_native(self) -> N:
        """Build a fresh native model (its parameters still deferred) from ``self.root``."""
        raise NotImplementedError

    def _native_init(self, native: N, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool) -> dict[str, NativeParam]:
        """Run the framework's own deferred initialization on ``native`` with input ``x`` (a native tensor, or
        a :class:`ShapeDtype` when abstract), applying the framework's own ``init`` if one is given (else its
        default), and return what it found per canonical name. When ``abstract``, allocate no parameters."""
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

    # ================================================================== public API
    @property
    def native(self) -> N:
        """The framework's own model object."""
        if self._native is None:
            self._native = self._new_native()
        return self._native

    @property
    def initialized(self) -> bool:
        return self._report is not None

    @property
    def report(self) -> ShapeReport:
        if self._report is None:
            raise NotInitializedError(f"{self._who()}: no shapes yet; call apply_init(dummy_input) first "
                                      f"(or load_weights(weights, input_shape=...))")
        return self._report

    def apply_init(self, dummy_input: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> ShapeReport:
        """Let the framework infer every parameter shape from ``dummy_input`` and initialize the parameters.

        ``init``: None (the framework's default), a portable name (``"xavier_uniform"``...) or a
        :mod:`deferinit.init` object (bit-identical on every backend for the same ``key``), or the framework's
        own initializer. ``key``: an int seed, or the framework's native key. ``abstract=True`` infers the
        shapes without allocating any parameter memory.
        """
        with self._gate.writing():
            x, shape, dtype = self._input(dummy_input, allow_abstract=True)
            try:
                inference = infer(self.spec, shape, dtype=dtype, backend=self.backend, root=self.root)
            except DeferInitError as exc:
                if isinstance(dummy_input, tuple) and dummy_input and all(type(d) is int for d in dummy_input):
                    # a tuple of ints is data to numpy; the user most likely meant it as the input's shape
                    raise type(exc)(f"{exc}; apply_init took the tuple {dummy_input} as data (an array of shape "
                                    f"({len(dummy_input)},)): for an input of that shape pass "
                                    f"di.ShapeDtype({dummy_input}, 'float32') or np.zeros({dummy_input}, "
                                    f"np.float32)") from None
                raise
            if self._index_limit is not None and not isinstance(x, ShapeDtype):  # torch and Keras dry-run the data
                self._check_indices(x)
            portable = init_mod.get(init)
            seed = self._int_key(key) if portable is not None else key
            self._check_memory(inference, "abstract apply_init" if abstract else "apply_init")
            if not abstract:
                if isinstance(x, ShapeDtype):
                    x = self._to_native(np.zeros(stand_in(self.spec, inference, self.root), dtype=np.dtype(dtype)))
            native = self._new_native()
            found = self._guard("apply_init", lambda: self._native_init(
                native, x, inference, None if portable is not None else init, key, abstract))
            layer_shapes = self._guard("apply_init", lambda: self._native_layer_shapes(native, x, inference, abstract))
            report = self._make_report(inference, found, layer_shapes)
            old = self._state()
            self._restore((native, report, inference, {n: p.shape for n, p in report.params.items()}, {}, abstract))
            if portable is not None and not abstract:
                try:
                    self._guard("apply_init", lambda: self._set_weights(
                        init_mod.generate(inference.params, portable, seed)))
                except BaseException:
                    self._restore(old)
                    raise
            return report

    def materialize(self, init: Any = None, key: Any = None) -> ShapeReport:
        """Allocate and initialize the parameters of an abstractly initialized model (shapes stay those found).
        On any error the model stays abstract, as it was, and can be materialized again."""
        with self._gate.writing():
            report = self.report
            if not self._abstract:
                return report
            hook = getattr(self, "_materialize", None)
            if hook is None:  # the backend has no in-place path: a new model, swapped in by apply_init
                dummy = ShapeDtype(tuple(1 if d is None else d for d in report.input_shape), report.input_dtype)
                return self.apply_init(dummy, init=init, key=key)
            portable = init_mod.get(init)
            seed = self._int_key(key) if portable is not None else key  # a bad key fails before anything is allocated
            self._check_memory(self._inference, "materialize")  # type: ignore[arg-type]
            undo = self._abstract_snapshot()
            try:  # the backend allocates the abstract model's own parameters in place
                self._guard("materialize", lambda: hook(None if portable is not None else init, key))
                if portable is not None:
                    self._guard("materialize", lambda: self._set_weights(
                        init_mod.generate(self._inference.params, portable, seed)))  # type: ignore[union-attr]
            except BaseException:
                undo()
                raise
            self._abstract = False
            return report

    def __call__(self, x: Any, training: bool = False) -> Any:
        """The forward pass (inference mode unless ``training=True``); returns the framework's tensor type.
        Inference calls from several threads run side by side; a training call runs alone (see ``_gate.py``)."""
        gate = self._gate
        if not training and gate.open:  # the fast path: no lock, about 0.1 us
            readers = gate.readers
            readers.append(None)
            try:
                if gate.open:  # re-read once counted: a writer closing the gate now waits for this call
                    return self._call(x, False)
            finally:
                readers.pop()
                if not gate.open:
                    gate.wake()
        if training:
            with gate.writing(training=True):
                return self._call(x, True)
        return gate.shared(self._call, x, False, to_inference=self._inference_mode)

    def _inference_mode(self) -> None:
        """Put the native model back in inference mode after a training call (only PyTorch keeps a mode)."""

    def _call(self, x: Any, training: bool) -> Any:
        if self._report is None:
            raise NotInitializedError(f"{self._who()}: the model has no parameters yet; call apply_init first")
        if self._abstract:
            raise NotInitializedError(f"{self._who()}: the model was initialized abstractly (shapes only); "
                                      f"call materialize() or apply_init without abstract=True first")
        xn = x if self._is_native(x) else self._input(x, allow_abstract=False)[0]
        sig = self._signature(xn)
        if sig not in self._checked:
            self._check_call(xn)
        if self._index_limit is not None:
            self._check_indices(xn)
        if training and self._checked[sig] is not None:
            self._refuse_training(self._checked[sig], batch_stats=True)
        if training and self._batch_norms:
            check_finite_batch(self._batch_norms, self.to_numpy(xn))
        try:  # inline rather than _guard(lambda): the closure and two calls cost ~0.4 us of a 20 us forward
            return self._forward(xn, training)
        except (DeferInitError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._backend_error("forward", exc) from exc

    def to_numpy(self, y: Any) -> np.ndarray:
        """A backend tensor (as ``__call__`` returns) as a numpy array."""
        return np.asarray(y)

    def export_weights(self) -> dict[str, np.ndarray]:
        """Every parameter in canonical names and layouts, as float32 numpy arrays (copies)."""
        with self._gate.writing():
            _ = self.report  # raises NotInitializedError
            if self._abstract:
                raise NotInitializedError(f"{self._who()}: abstractly initialized models hold no values; materialize first")
            return {name: np.array(arr, dtype=np.float32, copy=True) for name, arr in self._get_weights().items()}

    def load_weights(self, weights: Mapping[str, Any], *, input_shape: Any = None) -> ShapeReport:
        """Load canonical weights. All names, shapes, dtypes and values are checked first; on any error
        nothing changes. An uninitialized model is initialized from ``input_shape`` (or, for models whose
        input dims the first layer fixes, from the weights themselves) first."""
        with self._gate.writing():
            if isinstance(weights, (str, os.PathLike)):
                from ..weights import load_weights as read

                # known shapes let the reader refuse a wrong or oversized tensor from its header, before reading it
                known = self._report is not None and not self._abstract
                weights = read(weights, expected=self._fixed if known else None)
            if self._report is None or self._abstract:
                if self._abstract and input_shape is None:  # the shapes found abstractly are the ones to fill
                    input_shape = ShapeDtype(self._report.input_shape, self._report.input_dtype)  # type: ignore[union-attr]
                shape = input_shape if input_shape is not None else self._input_shape_from(weights)
                dtype = self._default_dtype()
                if isinstance(shape, ShapeDtype):
                    shape, dtype = shape.shape, shape.dtype
                expected = infer(self.spec, shape, dtype=dtype, backend=self.backend, root=self.root).params
                if self._abstract:
                    self._check_same_params(shape, {n: p.shape for n, p in expected.items()})
                clean = self._check_weights(weights, {n: p.shape for n, p in expected.items()})
                before = self._state()
                self.apply_init(ShapeDtype(tuple(1 if d is None else d for d in normalize_shape(shape)), dtype),
                                init="zeros", key=0)
                try:
                    self._guard("load_weights", lambda: self._set_weights(clean))
                except BaseException:
                    self._restore(before)
                    raise
                return self.report
            clean = self._check_weights(weights, self._fixed)
            # all or nothing: torch, Keras and Gluon write tensor by tensor, so a failure part-way is undone
            before = None if self._swaps_weights else {n: np.array(a, dtype=np.float32, copy=True)
                                                       for n, a in self._get_weights().items()}
            try:
                self._guard("load_weights", lambda: self._set_weights(clean))
            except BaseException:
                if before is not None:
                    self._set_weights(before)
                raise
            return self.report

    def _check_same_params(self, shape: Any, want: Mapping[str, tuple]) -> None:
        """An abstractly initialized model takes weights of the shapes it found, not those of another input."""
        for name, found in self._fixed.items():
            if tuple(want.get(name, ())) != tuple(found):
                raise ShapeMismatchError(
                    f"{self._who()}: load_weights with input shape {fmt_shape(normalize_shape(shape))} expected "
                    f"parameter '{name}' to be {fmt_shape(want.get(name, ()))}, but the model was initialized "
                    f"abstractly with input shape {fmt_shape(self.report.input_shape)}, which gave "
                    f"{fmt_shape(found)}; nothing was changed. Pass weights for that input, or call apply_init again")

    def gradients(self, x: Any, training: bool = False) -> dict[str, np.ndarray]:
        """The gradient of ``sum(output)`` with respect to every trainable canonical parameter, in canonical
        layout (float32 numpy arrays). In training mode BatchNorm uses (and updates) batch statistics."""
        with self._gate.writing(training=training):
            self(x)  # validates the input with the same errors as a call
            xn = x if self._is_native(x) else self._input(x, allow_abstract=False)[0]
            self._refuse_training(self._checked.get(self._signature(xn)), batch_stats=training)
            if training and self._batch_norms:
                check_finite_batch(self._batch_norms, self.to_numpy(xn))
            return self._guard("gradients", lambda: self._gradients(xn, training))

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        raise UnsupportedLayerError(f"{self._who()}: gradients are not available on this backend")

    def intermediates(self, x: Any) -> dict[str, np.ndarray]:
        """Output of every layer position (inference mode), keyed by path, as numpy arrays in the spec's
        data format. Backends that can observe their layers implement ``_intermediates``."""
        with self._gate.writing():
            self(x)  # validates the input with the same errors as a call
            hook = getattr(self, "_intermediates", None)
            if hook is None:
                raise UnsupportedLayerError(f"{self._who()}: intermediate outputs are not available on this backend")
            xn = x if self._is_native(x) else self._input(x, allow_abstract=False)[0]
            self._refuse_training(self._checked.get(self._signature(xn)), batch_stats=False)  # every output kept
            return self._guard("intermediates", lambda: hook(xn))

    # ================================================================== shared glue
    def _state(self) -> tuple:
        return (self._native, self._report, self._inference, self._fixed, self._checked, self._abstract)

    def _restore(self, state: tuple) -> None:
        (self._native, self._report, self._inference, self._fixed, self._checked, self._abstract) = state

    def _who(self) -> str:
        return f"{self.backend} model{' ' + repr(self.spec.name) if self.spec.name else ''}"

    def _is_native(self, x: Any) -> bool:
        return False

    def _signature(self, x: Any) -> tuple:
        return (tuple(x.shape), x.dtype)  # str(dtype) costs ~5 us a call; dtypes hash as they are

    def _input(self, x: Any, allow_abstract: bool) -> tuple[Any, tuple, Any]:
        if isinstance(x, tuple) and x and all(hasattr(e, "shape") for e in x):
            if len(x) != 1:
                raise ShapeMismatchError(f"the model input expected one array (this spec has one input), "
                                         f"received a tuple of {len(x)}")
            x = x[0]
        if isinstance(x, ShapeDtype):
            if not allow_abstract:
                raise ShapeMismatchError("the model input expected data, received a ShapeDtype")
            return (x, *abstract_input(x.shape, x.dtype))
        if not self._is_native(x):
            arr = as_array(x, self.backend)
            shape, dtype = arr.shape, arr.dtype
            return self._to_native_checked(arr), normalize_shape(shape), dtype
        shape, dtype = self._shape_dtype(x)
        return x, normalize_shape(shape), dtype

    def _to_native_checked(self, arr: np.ndarray) -> Any:
        from ..shapes import input_kind

        input_kind(arr.dtype)
        if arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return self._to_native(arr)

    def _find_index_limit(self) -> tuple[IdCheck, ...] | None:
        """Every Embedding/OneHot position the model's integer input reaches (None: no check, no cost)."""
        return id_checks(self.root) or None

    def _check_indices(self, x: Any) -> None:
        """Token ids out of range, at the layer they reach: frameworks raise, wrap, clamp or read NaN (_semantics.py)."""
        check_ids(self._index_limit, self.to_numpy(x))  # type: ignore[arg-type]

    def _check_call(self, x: Any) -> None:
        shape, dtype = self._shape_dtype(x)
        shape = normalize_shape(shape)
        try:
            inference = infer(self.spec, shape, dtype=dtype, backend=self.backend, root=self.root, fixed=self._fixed)
        except ShapeMismatchError:  # a BatchNorm's changed rank (behind a Dense: other channels) is the better error
            self._refuse_rank(lambda: infer(self.spec, shape, dtype=dtype, backend=self.backend, root=self.root))
            raise
        self._refuse_rank(lambda: inference)
        fp, who, doing = footprint(inference), self._who(), f"a forward on input {fmt_shape(shape)}"
        check_sizes(who, fp, after="nothing was run")
        # params and tables are already allocated (and so outside the memory available now): activations only
        check_fits(who, fp.peak, doing, fp, "activations and workspace", self.memory_fraction, "nothing was run",
                   lambda: self._split_advice(shape[0], fp.peak))
        check_sizes(who, fp, max_elements=self.max_elements, max_dim=self.max_dim, note=self.size_note,
                    after="nothing was run")
        try:  # what a training call (and gradients, intermediates) would keep, refused only when one is made
            check_fits(who, fp.training, f"a training forward and backward on input {fmt_shape(shape)}", fp,
                       "every activation kept for the backward pass, and the gradients", self.memory_fraction,
                       "nothing was run", lambda: self._split_advice(shape[0], fp.training, fp.grads))
            memory = None
        except ResourceError as exc:
            memory = str(exc)
        bn = _single_value_batch_norm(inference, self.spec.data_format)
        if len(self._checked) > 256:  # many distinct shapes (e.g. sequence lengths): keep the cache bounded
            self._checked.clear()
        self._checked[self._signature(x)] = None if bn is None and memory is None else (bn, memory)

    def _refuse_rank(self, now: Any) -> None:
        """A BatchNorm's input rank is fixed when the model is initialized, on every backend (_semantics.py)."""
        if self._batch_norms:
            try:
                error = batch_norm_rank_error(self._batch_norms, self._inference, now())  # type: ignore[arg-type]
            except DeferInitError:
                return
            if error is not None:
                raise error from None

    @staticmethod
    def _refuse_training(entry: tuple | None, batch_stats: bool) -> None:
        """Raise what ``_check_call`` found against a training call of this signature (None: nothing)."""
        if entry is None:
            return
        bn, memory = entry
        if bn is not None and batch_stats:
            path, count = bn
            raise ShapeMismatchError(f"layer '{path}' (BatchNorm) expected more than 1 value per channel in training "
                                     f"mode (batch statistics), received {count}; use a larger batch or training=False")
        if memory is not None:
            raise ResourceError(memory)

    def _split_advice(self, batch: int | None, need: int, fixed: int = 0) -> str:
        """Activations grow with the batch, ``fixed`` bytes (gradients) do not."""
        room = int(self.memory_fraction * (available_memory() or 0)) - fixed
        fits = room * (batch or 1) // max(need - fixed, 1)
        if fits >= 1:
            return f"Split the input into batches of at most {fits}"
        return "Not even one example fits: make the largest tensor smaller (fewer units, classes or steps)"

    @staticmethod
    def _int_key(key: Any) -> int:
        if key is None:
            return 0
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return int(key)
        raise DTypeError(f"key: a portable initializer needs an int seed, received {type(key).__name__}")

    def _check_memory(self, inference: Inference, doing: str = "apply_init") -> None:
        """Refuse, before the framework sees anything, tensors it cannot index and allocations that would not fit:
        frameworks crash rather than fail cleanly when memory runs out (see resources.py)."""
        fp, who, abstract = footprint(inference), self._who(), doing.startswith("abstract")
        check_sizes(who, fp)  # 2**63 bytes first, then what fits here, then the backend's own narrower limits
        tables = f"tables {fmt_bytes(fp.tables)}, counted twice while they are built" if fp.tables else "no tables"
        if abstract:
            need, parts = (2 * fp.tables if self.abstract_tables else 0), tables
        elif doing == "materialize":
            need, parts = fp.params + 2 * fp.tables, f"parameters {fmt_bytes(fp.params)}, {tables}"
        else:
            need, parts = fp.init, f"parameters {fmt_bytes(fp.params)}, {tables}, a dry-run forward {fmt_bytes(fp.peak)}"
        if fp.largest.what.startswith("parameter"):
            advice = "Use apply_init(..., abstract=True) or deferinit.infer_shapes for shapes alone"
        elif fp.largest.what == "output" or not fp.tables:
            advice = "Use a smaller dummy input (batch 1: the batch does not change the parameters)"
        else:
            advice = "Make the table smaller (max_len: it covers every position up to it)"
        check_fits(who, need, f"{doing} on input {fmt_shape(inference.report.input_shape)}", fp, parts,
                   self.memory_fraction, "nothing was allocated", advice)
        check_sizes(who, fp, max_elements=None if abstract else self.max_elements, max_dim=self.max_dim,
                    note=self.size_note)

    def _guard(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except (DeferInitError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a framework error that the rules did not foresee: say where, keep the cause
            raise self._backend_error(what, exc) from exc

    def _backend_error(self, what: str, exc: Exception) -> DeferInitError:
        text = f"{type(exc).__name__} {exc}".lower()
        if isinstance(exc, MemoryError) or any(s in text for s in _OUT_OF_MEMORY):
            return ResourceError(f"{self._who()}: {what} ran out of memory in the framework ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}), though deferinit's estimate "
                                 f"fitted the memory available when checked; other allocations took the rest. Free "
                                 f"memory, or use a smaller batch")
        return BackendError(f"{self._who()}: {what} failed in the framework after deferinit's checks passed "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"please report this with the spec")

    def _make_report(self, inference: Inference, found: Mapping[str, NativeParam],
                     layer_shapes: Mapping[str, tuple] | None = None) -> ShapeReport:
        ref = inference.report
        missing = [n for n in ref.params if n not in found]
        extra = [n for n in found if n not in ref.params]
        if missing or extra:
            raise BackendError(f"{self._who()}: the framework's parameters do not match the spec's: missing "
                               f"{missing or 'none'}, unexpected {extra or 'none'}")
        params = {}
        for name, info in ref.params.items():
            got = found[name]
            if tuple(got.shape) != info.shape:
                raise BackendError(f"{self._who()}: the framework inferred {fmt_shape(got.shape)} for parameter "
                                   f"'{name}' (native '{got.native_name}' {fmt_shape(got.native_shape)}) where the "
                                   f"reference rules give {fmt_shape(info.shape)}")
            params[name] = ParamInfo(shape=tuple(got.shape), dtype=info.dtype, trainable=info.trainable,
                                     native_name=got.native_name, native_shape=tuple(got.native_shape),
                                     source=got.source)
        layers, output = ref.layers, ref.output_shape
        if layer_shapes is not None:
            layers = {path: replace(info, output_shape=self._native_shape(layer_shapes, path, info), source="native")
                      for path, info in ref.layers.items()}
            output = self._native_shape(layer_shapes, "", None, ref.output_shape)
        return ShapeReport(backend=self.backend, input_shape=ref.input_shape, output_shape=output,
                           params=params, layers=layers, input_dtype=ref.input_dtype, data_format=ref.data_format)

    def _native_shape(self, shapes: Mapping[str, tuple], path: str, info: LayerInfo | None,
                      want: tuple | None = None) -> tuple:
        """The framework's shape at ``path``, checked against the reference's: a dim the reference leaves None
        (it varies with the input) is None in the report too; every other dim must agree exactly."""
        want = info.output_shape if info is not None else want
        what = f"layer '{path}' ({info.type})" if info is not None else "the model's output"
        got = shapes.get(path)
        if got is None:
            raise BackendError(f"{self._who()}: the framework's dry run gave no output shape for {what}; the "
                               f"adapter must observe every layer position (the reference gives {fmt_shape(want)})")
        got = tuple(got)
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            raise BackendError(f"{self._who()}: the framework computed {fmt_shape(got)} at {what} where the "
                               f"reference rules give {fmt_shape(want)}")
        return tuple(None if w is None else int(g) for g, w in zip(got, want))

    def _check_weights(self, weights: Any, expected: Mapping[str, tuple]) -> dict[str, np.ndarray]:
        if not isinstance(weights, Mapping):
            raise WeightsError(f"{self._who()}: load_weights expected a mapping of canonical names to arrays, "
                               f"received {type(weights).__name__}")
        missing = [n for n in expected if n not in weights]
        extra = [n for n in weights if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(f"'{n}' {fmt_shape(expected[n])}" for n in missing))
            if extra:
                parts.append("unexpected " + ", ".join(f"'{n}'" for n in extra))
            raise WeightsError(f"{self._who()}: load_weights expected exactly the spec's parameters, received "
                               f"{'; '.join(parts)}; nothing was changed")
        clean = {}
        for name, want in expected.items():
            value = weights[name]
            arr = weight_array(value, name, self._who())  # any framework's tensor; meta tensors refused
            if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
                raise DTypeError(f"{self._who()}: parameter '{name}' expected real numbers, received dtype "
                                 f"{arr.dtype.name}; nothing was changed")
            if tuple(arr.shape) != tuple(want):
                raise ShapeMismatchError(f"{self._who()}: parameter '{name}' expected shape {fmt_shape(want)}, "
                                         f"received {fmt_shape(arr.shape)}; nothing was changed")
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise WeightsError(f"{self._who()}: parameter '{name}' expected finite values, received "
                                   f"{int((~np.isfinite(arr)).sum())} NaN/inf value(s); nothing was changed")
            clean[name] = arr
        return clean

    def _default_dtype(self) -> str:
        """int64 when the first layer that cares takes indices (an Embedding after an Identity too), else float32."""
        return spec_dtype(self.spec)

    def _input_shape_from(self, weights: Any) -> tuple:
        """Input shape of an uninitialized model from the first parameterized layer's weight, when that alone
        fixes every parameter (a stack of Dense layers, say)."""
        from ..layers import BatchNorm, Conv1D, Conv2D, Dense, LayerNorm

        first = next((n for n in self.root.leaves() if isinstance(n.layer, (Dense, Conv1D, Conv2D, BatchNorm,
                                                                            LayerNorm))), None)
        w = weights.get(first.param_name("weight")) if first is not None and isinstance(weights, Mapping) else None
        if first is None or w is None or len(np.shape(w)) < 1 or not self.root.children or \
                first is not next(self.root.leaves()):
            raise NotInitializedError(f"{self._who()}: cannot tell the input shape from the weights alone; "
                                      f"pass load_weights(weights, input_shape=...)")
        layer, shape = first.layer, np.shape(w)
        if isinstance(layer, Dense):
            guess: tuple = (1, shape[1])
        elif isinstance(layer, (BatchNorm, LayerNorm)):
            guess = (1, shape[0])
        else:
            raise NotInitializedError(f"{self._who()}: a convolutional model's spatial input size is not in its "
                                      f"weights; pass load_weights(weights, input_shape=(N, C, H, W))")
        return guess
