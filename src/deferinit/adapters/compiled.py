"""The compiled model: the public API every backend shares, written once (validate -> build -> swap).

A backend subclasses :class:`CompiledModel` and fills in a handful of hooks (build the native lazy model,
run its deferred initialization, forward, read and write weights in canonical layout), listed with the
capabilities it declares in ``contract.py``. Everything a user can get wrong is checked once, with the
reference rules (``checks.py``), *before* any framework code runs, so every backend raises the same
:class:`~deferinit.errors.DeferInitError` for the same mistake:

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
from typing import Any, Mapping, TypeVar

import numpy as np

from .. import init as init_mod
from ..errors import DeferInitError, NotInitializedError, ShapeMismatchError, UnsupportedLayerError, fmt_shape
from ..report import ShapeReport
from ..resources import available_memory
from ..shapes import normalize_shape, plan
from ..spec import LazyModel
from ._gate import Gate
from ._semantics import batch_norms, check_finite_batch
from ._standin import stand_in
from .contract import NativeParam, ShapeDtype
from .rules_cache import RulesCache

__all__ = ["CompiledModel", "NativeParam", "ShapeDtype", "available_memory"]

N = TypeVar("N")

class CompiledModel(RulesCache[N]):
    """A spec compiled for one backend. Create with :func:`deferinit.compile`.

    The hooks a backend fills in and the capabilities it declares are in ``contract.py``; the checks every
    backend shares, and the report assembly, in ``checks.py``; the reference rules' results kept per model and
    shared between equal specs, in ``rules_cache.py``; here, the public API: validate -> build -> swap."""

    def __init__(self, spec: LazyModel) -> None:
        if not isinstance(spec, LazyModel):
            from ..errors import SpecError

            raise SpecError(f"compile: expected a deferinit.LazyModel, received {type(spec).__name__}")
        self.spec = spec
        self.root = plan(spec)
        self._batch_norms = batch_norms(self.root, self.backend)
        self._native = None
        self._report = None
        self._inference = None
        self._fixed = {}
        self._checked = {}
        self._abstract = False
        self._index_limit = self._find_index_limit()
        self._gate = Gate()
        # (input shape, dtype) -> [Inference, framework facts]: _infer_once
        self._inferred: dict[tuple, Any] = {}

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
                inference = self._infer_once(shape, dtype)
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
            follow = portable is not None and not abstract  # portable values overwrite every parameter right after
            native = self._native_for(inference, abstract, follow)
            found = self._guard("apply_init", lambda: self._native_init(
                native, x, inference, None if portable is not None else init, key, abstract, values_follow=follow))
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

    def export_weights(self) -> dict[str, np.ndarray]:
        """Every parameter in canonical names and layouts, as float32 numpy arrays (copies)."""
        with self._gate.writing():
            _ = self.report  # raises NotInitializedError
            if self._abstract:
                raise NotInitializedError(f"{self._who()}: abstractly initialized models hold no values; materialize first")
            return {name: np.array(arr, dtype=np.float32, copy=True) for name, arr in self._get_weights().items()}

    def load_weights(self, weights: Mapping[str, Any] | str | os.PathLike[str], *, input_shape: Any = None) -> ShapeReport:
        """Load canonical weights. All names, shapes, dtypes and values are checked first; on any error
        nothing changes. An uninitialized model is initialized from ``input_shape`` (or, for models whose
        input dims the first layer fixes, from the weights themselves) first."""
        with self._gate.writing():
            if isinstance(weights, (str, os.PathLike)):
                from ..weights import load_weights as read

                # known shapes let the reader refuse a wrong or oversized tensor from its header, before reading it
                known = self._report is not None and not self._abstract
                weights = read(os.fspath(weights), expected=self._fixed if known else None)
            if self._report is None or self._abstract:
                if self._abstract and input_shape is None:  # the shapes found abstractly are the ones to fill
                    input_shape = ShapeDtype(self._report.input_shape, self._report.input_dtype)  # type: ignore[union-attr]
                shape: Any = input_shape if input_shape is not None else self._input_shape_from(weights)
                dtype = self._default_dtype()
                if isinstance(shape, ShapeDtype):
                    shape, dtype = shape.shape, shape.dtype
                expected = self._infer_once(normalize_shape(shape), dtype).params
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
            previous = None if self._swaps_weights else {n: np.array(a, dtype=np.float32, copy=True)
                                                         for n, a in self._get_weights().items()}
            try:
                self._guard("load_weights", lambda: self._set_weights(clean))
            except BaseException:
                if previous is not None:
                    self._set_weights(previous)
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
