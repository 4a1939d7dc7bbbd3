"""Graph specs on the reference backend: canonical weights in a dict, the forward of
:func:`deferinit.graph_run.reference_forward` (NumPy, float32)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import SpecError
from ...extend import register_builder
from ...graph_run import reference_forward
from ...layers_graph import Attend, embedding_path
from ...shapes import Node
from ..graph_compiled import GraphCompiled

__all__ = ["NumpyGraphModel"]


@register_builder("numpy", Attend)
def _attend(net: Any, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    layer: Any = node.layer
    table = net.params[f"{embedding_path(net.root, layer)}.weight"]
    return np.matmul(x, table.T).astype(np.float32)  # type: ignore[no-any-return]


class NumpyGraphModel(GraphCompiled[dict]):
    """``native`` is the dict of canonical weights; ``init=None`` draws them as list specs do (±1/sqrt(fan_in))."""

    backend = "numpy"

    def _new_native(self) -> dict:
        return {}

    def _to_native(self, x: np.ndarray) -> np.ndarray:
        return x

    def _dry_run(self, native: dict, xs: list[Any], init: Any) -> None:
        if init is not None:
            raise SpecError(f"init: the numpy backend expected a portable initializer, received {init!r}")
        from ... import init as init_mod
        from ...graph_shapes import infer_graph
        from . import _DefaultInit

        params = infer_graph(self.spec, [np.asarray(x) for x in xs], root=self.root).params
        seed = 0 if self._key is None else int(self._key)
        native.update(init_mod.generate(params, _DefaultInit(), seed))

    _key: Any = None

    def apply_init(self, dummy_inputs: Any, init: Any = None, key: Any = None, *, abstract: bool = False) -> Any:
        self._key = key
        try:
            return super().apply_init(dummy_inputs, init=init, key=key, abstract=abstract)
        finally:
            self._key = None

    def _abstract_init(self, native: dict, specs: list[Any]) -> None:
        from ...graph_shapes import infer_graph

        params = infer_graph(self.spec, specs, root=self.root).params
        # zero-stride views of one float: every shape, no memory
        native.update({n: np.broadcast_to(np.float32(0), p.shape) for n, p in params.items()})

    def _native_param(self, native: dict, name: str) -> tuple[str, tuple[int, ...]]:
        return name, tuple(native[name].shape)

    _rng: np.random.Generator | None = None  # Dropout's draws in training, one stream per model

    def _run(self, native: dict, xs: list[Any], training: bool) -> list[Any]:
        if training and self._rng is None:
            self._rng = np.random.default_rng(0)
        out = reference_forward(self.spec, xs, native, training=training, rng=self._rng)
        return list(out) if self.spec.multi_output else [out]

    def _record(self, native: dict, xs: list[Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        reference_forward(self.spec, xs, native, record)
        return record

    def _get(self, native: dict) -> dict[str, np.ndarray]:
        return dict(native)

    def _set(self, native: dict, weights: Mapping[str, np.ndarray]) -> None:
        native.update({n: np.array(w, np.float32) for n, w in weights.items()})
