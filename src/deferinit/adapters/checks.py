"""What every backend checks the same way, before any framework code runs: inputs, call signatures, memory,
weights, and the report assembled from what the framework found (compared with the reference rules).

Framework-free: this module imports no framework.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

import numpy as np

from ..errors import (
    BackendError,
    DeferInitError,
    DTypeError,
    NotInitializedError,
    ResourceError,
    ShapeMismatchError,
    WeightsError,
    fmt_shape,
)
from ..report import LayerInfo, ParamInfo, ShapeReport
from ..resources import SMALL, Footprint, available_memory, check_fits, check_sizes, fmt_bytes, footprint, small
from ..shapes import Inference, infer, input_kind, normalize_shape, spec_dtype
from ._inputs import abstract_input, as_array
from ._semantics import IdCheck, batch_norm_rank_error, check_ids, id_checks
from ._values import weight_array
from .contract import Contract, NativeParam, ShapeDtype

__all__ = ["Checks"]

N = TypeVar("N")


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


class Checks(Contract[N]):
    """The checks and the report assembly shared by every backend (a base of ``CompiledModel``)."""

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

    def _footprint(self, inference: Inference) -> Footprint:
        """What the shapes need (``resources.footprint``); ``CompiledModel`` keeps it beside its cached inference."""
        return footprint(inference)

    def _small(self, inference: Inference) -> bool:
        """``resources.small(inference)``; ``CompiledModel`` keeps it beside its cached inference."""
        return small(inference, SMALL)

    def _check_memory(self, inference: Inference, doing: str = "apply_init") -> None:
        """Refuse, before the framework sees anything, tensors it cannot index and allocations that would not fit:
        frameworks crash rather than fail cleanly when memory runs out (see resources.py)."""
        if self._small(inference) and all(limit is None or limit >= SMALL for limit in (self.max_elements, self.max_dim)):
            return  # everything together is under SMALL bytes: no check below could refuse (resources.small)
        fp, who, abstract = self._footprint(inference), self._who(), doing.startswith("abstract")
        check_sizes(who, fp)  # 2**63 bytes first, then what fits here, then the backend's own narrower limits
        need = (2 * fp.tables if self.abstract_tables else 0) if abstract else \
            fp.params + 2 * fp.tables if doing == "materialize" else fp.init

        def parts() -> str:  # the message's words, built only when it is raised
            tables = f"tables {fmt_bytes(fp.tables)}, counted twice while they are built" if fp.tables else "no tables"
            if abstract:
                return tables
            if doing == "materialize":
                return f"parameters {fmt_bytes(fp.params)}, {tables}"
            return f"parameters {fmt_bytes(fp.params)}, {tables}, a dry-run forward {fmt_bytes(fp.peak)}"

        def advice() -> str:
            if fp.largest.what.startswith("parameter"):
                return "Use apply_init(..., abstract=True) or deferinit.infer_shapes for shapes alone"
            if fp.largest.what == "output" or not fp.tables:
                return "Use a smaller dummy input (batch 1: the batch does not change the parameters)"
            return "Make the table smaller (max_len: it covers every position up to it)"

        check_fits(who, need, lambda: f"{doing} on input {fmt_shape(inference.report.input_shape)}", fp, parts,
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
        # the ParamInfo of an earlier report on this (cached, shared) inference, reused where the framework gave the
        # same facts again: frozen, so sharing one is safe, and building each anew was most of a small model's report
        made: dict[str, ParamInfo] = inference.kept("_param_infos", dict)
        for name, info in ref.params.items():
            got = found[name]
            shape = tuple(got.shape)
            if shape != info.shape:
                raise BackendError(f"{self._who()}: the framework inferred {fmt_shape(got.shape)} for parameter "
                                   f"'{name}' (native '{got.native_name}' {fmt_shape(got.native_shape)}) where the "
                                   f"reference rules give {fmt_shape(info.shape)}")
            native_shape = tuple(got.native_shape)
            last = made.get(name)
            if last is None or last.native_name != got.native_name or last.native_shape != native_shape or \
                    last.source != got.source:
                last = made[name] = ParamInfo(shape=shape, dtype=info.dtype, trainable=info.trainable,
                                              native_name=got.native_name, native_shape=native_shape,
                                              source=got.source)
            params[name] = last
        layers, output = dict(ref.layers), ref.output_shape  # a copy: the inference may be cached (_infer_once)
        if layer_shapes is not None:
            # where the framework's shape is the reference's (always, but for dims the input leaves None), the
            # report holds the same frozen LayerInfo each time: made once per cached inference, not per apply_init
            same = inference.kept("_native_layers", lambda: {
                path: LayerInfo(path=info.path, type=info.type, params=info.params, tied_to=info.tied_to,
                                output_shape=info.output_shape, source="native")
                for path, info in ref.layers.items()})
            layers = {}
            for path, layer in ref.layers.items():
                seen = layer_shapes.get(path)
                layers[path] = same[path] if seen is not None and tuple(seen) == layer.output_shape else LayerInfo(
                    path=layer.path, type=layer.type, params=layer.params, tied_to=layer.tied_to,
                    output_shape=self._native_shape(layer_shapes, path, layer), source="native")
            output = self._native_shape(layer_shapes, "", None, ref.output_shape)
        return ShapeReport(backend=self.backend, input_shape=ref.input_shape, output_shape=output,
                           params=params, layers=layers, input_dtype=ref.input_dtype, data_format=ref.data_format,
                           roles=ref.roles)

    def _native_shape(self, shapes: Mapping[str, tuple], path: str, info: LayerInfo | None,
                      want: tuple | None = None) -> tuple:
        """The framework's shape at ``path``, checked against the reference's: a dim the reference leaves None
        (it varies with the input) is None in the report too; every other dim must agree exactly."""
        want = info.output_shape if info is not None else want
        assert want is not None  # the model's output is always passed its reference shape
        what = f"layer '{path}' ({info.type})" if info is not None else "the model's output"
        got = shapes.get(path)
        if got is None:
            raise BackendError(f"{self._who()}: the framework's dry run gave no output shape for {what}; the "
                               f"adapter must observe every layer position (the reference gives {fmt_shape(want)})")
        got = tuple(got)
        if got == want:  # the usual case: every dim known and equal
            return want
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
