"""Graph specs compiled for a backend: ``apply_init((a, b), init=..., key=...)`` with a tuple of inputs, as the
book's ``apply_init`` takes them, and ``model((a, b))``.

Written once for every backend, as :class:`~deferinit.adapters.compiled.CompiledModel` is for list specs:
the inputs are checked against the reference rules first (their number, each one's dtype against its
``di.Input``, every shape), so a mistake raises the same error, naming the input or the layer, on every
backend and before any framework code runs; a backend supplies the native module, its dry run (where the
framework's own deferred initialization finds the shapes), the forward pass and its parameters by canonical
name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Mapping, TypeVar

import numpy as np

from .. import init as init_mod
from ..errors import (
    BackendError,
    DeferInitError,
    DTypeError,
    NotInitializedError,
    ShapeMismatchError,
    UnsupportedLayerError,
    WeightsError,
    fmt_shape,
)
from ..graph import GraphModel
from ..graph_resources import graph_footprint
from ..graph_shapes import infer_graph
from ..layouts import contiguous
from ..report import ParamInfo, ShapeReport
from ..resources import check_fits, check_sizes, fmt_bytes
from ..shapes import Inference, input_kind, plan
from ._inputs import as_array
from .contract import ShapeDtype

__all__ = ["GraphCompiled"]

N = TypeVar("N")


class GraphCompiled(Generic[N]):
    """A graph spec compiled for one backend. Create with :func:`deferinit.compile`."""

    backend = "?"

    def __init__(self, spec: GraphModel) -> None:
        self.spec, self.root = spec, plan(spec)
        self._native: N | None = None
        self._report: ShapeReport | None = None
        self._inference: Inference | None = None
        self._checked: set[tuple[Any, ...]] = set()
        self._abstract: list[Any] | None = None  # the inputs' shapes and dtypes while abstract

    memory_fraction = 0.8  # of the memory available now, as list specs
    # ------------------------------------------------------------------ hooks
    def _new_native(self) -> N:
        raise NotImplementedError

    def _native_for(self, arrays: list[Any], abstract: bool) -> N:
        """The native model ``apply_init`` on ``arrays`` (arrays, or ``ShapeDtype`` when abstract) fills: a fresh one;
        a backend may start from what an earlier init of an equal spec on equal inputs kept (torch: ``template``)."""
        return self._new_native()

    def _dry_run(self, native: N, xs: list[Any], init: Any) -> None:
        """Run the framework's deferred initialization on ``xs`` (native tensors), then ``init`` if it is the
        framework's own initializer."""
        raise NotImplementedError

    def _to_native(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def _run(self, native: N, xs: list[Any], training: bool) -> list[Any]:
        raise NotImplementedError

    def _native_param(self, native: N, name: str) -> tuple[str, tuple[int, ...]]:
        """The framework's own name and shape of canonical parameter ``name``."""
        raise NotImplementedError

    def _get(self, native: N) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set(self, native: N, weights: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y)

    def _record(self, native: N, xs: list[Any]) -> dict[str, Any]:
        """Every layer position's output (inference mode) on the first call of each layer, keyed by path."""
        raise UnsupportedLayerError(f"{self._who()}: intermediate outputs are not available on this backend")

    def _grads(self, native: N, xs: list[Any]) -> dict[str, np.ndarray]:
        """The gradient of the summed outputs for every trainable canonical parameter (canonical layout)."""
        raise UnsupportedLayerError(f"{self._who()}: gradients are not available on this backend")

    # ------------------------------------------------------------------ public API
    @property
    def native(self) -> N:
        if self._native is None:
            self._native = self._new_native()
        return self._native

    @property
    def initialized(self) -> bool:
        return self._report is not None

    @property
    def report(self) -> ShapeReport:
        if self._report is None:
            raise NotInitializedError(f"graph model on backend {self.backend}: no shapes yet; call "
                                      f"apply_init((input, ...)) first")
        return self._report

    def _who(self) -> str:
        return f"graph model on backend {self.backend}"

    def _arrays(self, inputs: Any) -> list[Any]:
        names = self.spec.input_names()
        items = list(inputs) if isinstance(inputs, (tuple, list)) and len(names) > 1 else [inputs]
        if isinstance(inputs, tuple) and len(names) == 1 and len(inputs) == 1:
            items = [inputs[0]]
        if len(items) != len(names):
            raise ShapeMismatchError(f"{self._who()}: expected {len(names)} inputs ({', '.join(names)}) as a tuple, "
                                     f"received {len(items) if isinstance(inputs, (tuple, list)) else 1}")
        arrays: list[Any] = []
        for name, declared, x in zip(names, self.spec.input_dtypes(), items):
            if isinstance(x, ShapeDtype):  # shapes only (abstract apply_init): checked as data would be
                kind = input_kind(x.dtype)
                if kind != input_kind(declared):
                    raise DTypeError(f"{self._who()}: input '{name}' expected {declared} data (as its di.Input "
                                     f"declares), received dtype {np.dtype(x.dtype).name}")
                arrays.append(ShapeDtype(tuple(x.shape), "float32" if kind == "float" else "int64"))
                continue
            x = self.to_numpy(x) if not isinstance(x, (np.ndarray, list, tuple, int, float)) else x
            try:
                arr = as_array(x, self.backend)
                kind = input_kind(arr.dtype)
            except DeferInitError as exc:
                raise type(exc)(f"{self._who()}: input '{name}': {exc}") from None
            if kind != input_kind(declared):
                raise DTypeError(f"{self._who()}: input '{name}' expected {declared} data (as its di.Input declares), "
                                 f"received dtype {arr.dtype.name}")
            arrays.append(arr.astype(np.float32) if kind == "float" else arr.astype(np.int64))
        return arrays

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *,
                   abstract: bool = False) -> ShapeReport:
        """Let the framework infer every parameter shape from the inputs (a tuple, one per ``di.Input``, each an
        array or a ``di.ShapeDtype``) and initialize the parameters: ``init`` as for list specs (a portable name or
        object, the framework's own). ``abstract=True`` finds the shapes without allocating any parameter memory
        (``materialize()`` allocates them later). The memory the call needs is checked first, as for list specs."""
        arrays = self._arrays(dummy_inputs)
        inference = infer_graph(self.spec, arrays, backend=self.backend, root=self.root)
        portable = init_mod.get(init)
        seed = _int_key(key) if portable is not None else key
        self._check_memory(inference, arrays, "abstract apply_init" if abstract else "apply_init")
        native = self._native_for(arrays, abstract)
        if abstract:
            self._guard("apply_init", lambda: self._abstract_init(native, arrays))
        else:
            arrays = [np.zeros(tuple(1 if d is None else d for d in a.shape), a.dtype) if isinstance(a, ShapeDtype)
                      else a for a in arrays]
            self._guard("apply_init", lambda: self._dry_run(native, [self._to_native(a) for a in arrays],
                                                            None if portable is not None else init))
        params = {}
        for name, p in inference.report.params.items():
            native_name, native_shape = self._native_param(native, name)
            if tuple(native_shape) != tuple(p.shape):
                raise ShapeMismatchError(f"{self._who()}: the framework found {native_shape} for '{name}', the rules "
                                         f"{p.shape}")
            params[name] = ParamInfo(shape=p.shape, trainable=p.trainable, native_name=native_name,
                                     native_shape=tuple(native_shape), source="native")
        if portable is not None and not abstract:
            self._set(native, init_mod.generate(inference.params, portable, seed))
        report = dataclasses.replace(inference.report, params=params)
        self._native, self._report, self._inference, self._checked = native, report, inference, set()
        self._abstract = [ShapeDtype(tuple(a.shape), np.dtype(a.dtype).name) for a in arrays] if abstract else None
        return report

    def materialize(self, init: Any = None, key: Any = None) -> ShapeReport:
        """Allocate and initialize the parameters of an abstractly initialized graph model (a dry run on inputs
        of the shapes it was given, then ``init``); on any error the model stays abstract, as it was."""
        report = self.report
        if self._abstract is None:
            return report
        return self.apply_init(tuple(self._abstract), init=init, key=key)

    def _check_memory(self, inference: Inference, arrays: list[Any], doing: str) -> None:
        """Refuse tensors no framework can index and allocations that would not fit, before anything is allocated
        (the list specs' check, ``resources.check_sizes`` / ``check_fits``, on the graph's estimate)."""
        fp = graph_footprint(inference, [tuple(a.shape) for a in arrays],
                             [8 if np.dtype(a.dtype).kind in "iu" else 4 for a in arrays])
        check_sizes(self._who(), fp)
        need = 0 if doing.startswith("abstract") else fp.init

        def parts() -> str:
            return f"parameters {fmt_bytes(fp.params)}, tables {fmt_bytes(fp.tables)}, a dry-run forward {fmt_bytes(fp.peak)}"
        check_fits(self._who(), need, lambda: f"{doing} on inputs {', '.join(fmt_shape(a.shape) for a in arrays)}",
                   fp, parts, self.memory_fraction, "nothing was allocated",
                   "Use apply_init(..., abstract=True) or deferinit.infer_shapes for shapes alone"
                   if fp.largest.what.startswith("parameter") else "Use smaller dummy inputs")

    def _abstract_init(self, native: N, specs: list[Any]) -> None:
        """Give ``native`` its parameter shapes from ``specs`` (shapes and dtypes) without allocating them."""
        raise UnsupportedLayerError(f"{self._who()}: abstract apply_init of graph specs is not available on this "
                                    f"backend yet (numpy, torch, tensorflow, jax and mxnet have it)")

    def _concrete(self) -> ShapeReport:
        if self._abstract is not None:
            raise NotInitializedError(f"{self._who()}: the model was initialized abstractly (shapes only); call "
                                      f"materialize() or apply_init without abstract=True first")
        return self.report

    def __call__(self, inputs: Any, training: bool = False) -> Any:
        report = self._concrete()
        arrays = self._arrays(inputs)
        sig = tuple((a.shape, a.dtype.str) for a in arrays)
        if sig not in self._checked:
            infer_graph(self.spec, arrays, backend=self.backend, root=self.root,
                        fixed={n: p.shape for n, p in report.params.items()})
            self._checked.add(sig)
        outs = self._guard("forward", lambda: self._run(self.native, [self._to_native(a) for a in arrays], training))
        return tuple(outs) if self.spec.multi_output else outs[0]

    def intermediates(self, inputs: Any) -> dict[str, np.ndarray]:
        """Output of every layer position (inference mode), keyed by its canonical path, as numpy arrays in the
        spec's data format; a layer called twice is recorded at its first call, as the report lists it."""
        self(inputs)  # validates the inputs with the same errors as a call
        xs = [self._to_native(a) for a in self._arrays(inputs)]
        record = self._guard("intermediates", lambda: self._record(self.native, xs))
        return {path: np.asarray(self.to_numpy(record[path])) for path in self.report.layers if path in record}

    def gradients(self, inputs: Any) -> dict[str, np.ndarray]:
        """The gradient of the sum of every output's sum (inference mode) with respect to every trainable
        canonical parameter, in canonical layout (float32 numpy arrays), as list specs' ``gradients`` of
        ``sum(output)``. A tied parameter (a layer called twice, an ``Attend`` head) gets the sum over its uses."""
        self(inputs)  # validates the inputs with the same errors as a call
        xs = [self._to_native(a) for a in self._arrays(inputs)]
        grads = self._guard("gradients", lambda: self._grads(self.native, xs))
        return {n: contiguous(grads[n])
                for n, p in self.report.params.items() if p.trainable}

    def _guard(self, doing: str, fn: Any) -> Any:
        """The framework's own failure (an index past an Embedding's table...) as a BackendError naming the backend."""
        try:
            return fn()
        except (DeferInitError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise BackendError(f"{self._who()}: {doing} failed in the framework: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc

    def export_weights(self) -> dict[str, np.ndarray]:
        _ = self._concrete()
        return {n: np.array(a, np.float32) for n, a in self._get(self.native).items()}

    def load_weights(self, weights: Mapping[str, Any]) -> ShapeReport:
        report = self.report
        missing = sorted(set(report.params) - set(weights))
        extra = sorted(set(weights) - set(report.params))
        if missing or extra:
            raise WeightsError(f"{self._who()}: load_weights expected exactly the parameters "
                               f"{sorted(report.params)}; missing {missing}, unexpected {extra}")
        clean = {}
        for name, info in report.params.items():
            arr = np.asarray(weights[name])
            if tuple(arr.shape) != tuple(info.shape):
                raise WeightsError(f"{self._who()}: parameter '{name}' expected shape {info.shape}, received "
                                   f"{tuple(arr.shape)}; nothing was changed")
            clean[name] = arr.astype(np.float32)
        if self._abstract is not None:  # the shapes found abstractly are the ones to fill: allocate, then load
            self.materialize(init="zeros", key=0)
        self._set(self.native, clean)
        return report


def _int_key(key: Any) -> int:
    from .compiled import CompiledModel

    return CompiledModel._int_key(key)
