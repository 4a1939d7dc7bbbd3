"""Which class compiles a graph spec on each backend (``deferinit.compile``): the backend's own module, imported
only when that backend is compiled for."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UnsupportedLayerError

__all__ = ["graph_model_class"]

#: backend name -> (module, class) of its graph model
GRAPH_MODELS = {"torch": ("deferinit.adapters.torch.graph_module", "TorchGraphModel"),
                "numpy": ("deferinit.adapters.numpy.graph_module", "NumpyGraphModel"),
                "tensorflow": ("deferinit.adapters.tensorflow.graph_module", "KerasGraphModel"),
                "mxnet": ("deferinit.adapters.mxnet.graph_module", "GluonGraphModel"),
                "jax": ("deferinit.adapters.jax.graph_module", "FlaxGraphModel"),
                "nnx": ("deferinit.adapters.nnx.graph_module", "NnxGraphModel")}


def graph_model_class(backend_class: Any, backend: str) -> Any:
    name = getattr(backend_class, "backend", backend)
    where = GRAPH_MODELS.get(name)
    if where is None:
        raise UnsupportedLayerError(f"graph specs (LazyModel(inputs=, outputs=)) are not supported on backend {name} "
                                    f"yet; supported: {', '.join(sorted(GRAPH_MODELS))}")
    return getattr(importlib.import_module(where[0]), where[1])
