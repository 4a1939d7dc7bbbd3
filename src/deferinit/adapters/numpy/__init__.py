"""The framework-free reference backend: the oracle every framework adapter is checked against.

Shapes come straight from the reference rules (``source="reference"``); the forward pass runs each layer
with the NumPy kernels of :mod:`deferinit.ops` in float32. It needs nothing but NumPy.

The ``native`` object is a :class:`NumpyNet` (``modules.py``): the plan plus a dict of canonical weights. Its
kernels, one per leaf type, are registered in ``leaves.py``; the container walk is ``adapters/tree.py``'s.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import SpecError
from ...init import Uniform
from ...init import get as get_init
from ...shapes import Inference
from ..compiled import CompiledModel, NativeParam
from . import leaves as _leaves  # noqa: F401  (registers the built-in kernels)
from .modules import NumpyNet

__all__ = ["NumpyModel", "NumpyNet"]


class NumpyModel(CompiledModel[NumpyNet]):
    """The reference backend. ``init=None`` draws weights uniformly in ``±1/sqrt(fan_in)`` (PyTorch's default
    bound) with biases at zero; a callable ``init(name, shape) -> array`` is its "own" initializer."""

    backend = "numpy"
    _swaps_weights = True  # _set_weights builds a new dict, then assigns it

    def _new_native(self) -> NumpyNet:
        return NumpyNet(self.root, self.spec.data_format)

    def _native_init(self, native: NumpyNet, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        found = {name: NativeParam(name, p.shape, p.shape, "reference") for name, p in inference.params.items()}
        if abstract:
            return found
        if init is None:
            from ... import init as init_mod

            seed = 0 if key is None else self._int_key(key)
            native.params = init_mod.generate(inference.params, _DefaultInit(), seed)
        elif callable(init) and get_init(init) is None:
            params = {}
            for name, p in inference.params.items():
                value = np.asarray(init(name, p.shape))
                error = self._init_value_error(name, p.shape, value.shape, value.dtype, value.dtype.kind in "fiu")
                if error is not None:
                    raise error
                params[name] = value.astype(np.float32)
            native.params = params
        else:
            raise SpecError(f"init: the numpy backend expected a portable initializer or a callable "
                            f"init(name, shape), received {init!r}")
        return found

    def _to_native(self, x: Any) -> np.ndarray:
        arr = np.asarray(x)
        return arr.astype(np.float32) if arr.dtype.kind == "f" and arr.dtype != np.float32 else arr

    def _is_native(self, x: Any) -> bool:
        return False

    def _forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.native(x, training)

    def _intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        record: dict[str, np.ndarray] = {}
        self.native(x, False, record)
        return record

    def _get_weights(self) -> dict[str, np.ndarray]:
        return dict(self.native.params)

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.native.params = {name: np.array(weights[name], dtype=np.float32) for name in self.report.params}


class _DefaultInit(Uniform):
    def sample(self, shape, fan_in, fan_out, rng):  # type: ignore[no-untyped-def]
        return (2.0 * rng.random(shape) - 1.0) / np.sqrt(fan_in)
