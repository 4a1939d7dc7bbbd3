"""deferinit: one model spec with no input dims, compiled by PyTorch, TensorFlow (Keras 3), JAX (Flax) and
MXNet (Gluon), every parameter shape inferred by each framework's own deferred initialization and reported
in one common format.

Importing deferinit imports no deep-learning framework: a backend's framework is imported only when that
backend is compiled for (``deferinit.compile(spec, "torch")``). NumPy is the only runtime dependency.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from .errors import (
    BackendError,
    BackendUnavailableError,
    DeferInitError,
    DTypeError,
    NotInitializedError,
    ResourceError,
    ShapeMismatchError,
    SpecError,
    UnknownBackendError,
    UnsupportedLayerError,
    UnsupportedShardingError,
    WeightsError,
)
from .extend import register_builder, register_layer
from .layers import (
    GELU,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .registry import available_backends, backends, compile
from .spec import Concat, Layer, LazyModel, Residual, Sequential

if TYPE_CHECKING:  # what type checkers see; at run time these load on first use (_LAZY below)
    from . import init
    from .adapters.compiled import CompiledModel, ShapeDtype
    from .distributed import shard_init
    from .graph import Input, add, concat, multiply
    from .layers_extra import (
        AdaptiveAvgPool2D,
        DropPath,
        GroupNorm,
        HardSigmoid,
        HardSwish,
        LayerScale,
        LeakyReLU,
        ReLU6,
        SiLU,
    )
    from .layers_graph import Attend
    from .layers_seq import (
        GRU,
        LSTM,
        RNN,
        ClassToken,
        MultiHeadAttention,
        OneHot,
        Permute,
        PositionalEncoding,
        PositionEmbedding,
        Reshape,
        Scale,
        Take,
    )
    from .layers_up import Conv1DTranspose, Conv2DTranspose, Upsample2D
    from .merges import Add, Multiply
    from .parity import parity
    from .report import LayerInfo, ParamInfo, ShapeReport
    from .serialize import load_spec, save_spec
    from .shapes import infer_shapes
    from .sharding import ShardedReport, ShardInfo, ShardingPlan, ShardRule
    from .weights import load_weights, save_weights

# Loaded on first use (``import deferinit`` stays a few tens of ms): NumPy (about 90 ms to import) is needed only
# once data or weights are involved, and the other layer families, graph specs, reports, the rules and spec
# files (json, difflib, pathlib) only when used. Every name is the same object as before, imported on first access.
_LAZY = {"init": ("deferinit.init", None), "CompiledModel": ("deferinit.adapters.compiled", "CompiledModel"),
         "ShapeDtype": ("deferinit.adapters.compiled", "ShapeDtype"),
         "save_weights": ("deferinit.weights", "save_weights"), "load_weights": ("deferinit.weights", "load_weights"),
         "parity": ("deferinit.parity", "parity"),
         **{name: ("deferinit.graph", name) for name in ("Input", "add", "concat", "multiply")},
         **{name: ("deferinit.layers_extra", name) for name in (
             "AdaptiveAvgPool2D", "DropPath", "GroupNorm", "HardSigmoid", "HardSwish", "LayerScale", "LeakyReLU",
             "ReLU6", "SiLU")},
         "Attend": ("deferinit.layers_graph", "Attend"),
         **{name: ("deferinit.layers_seq", name) for name in (
             "GRU", "LSTM", "RNN", "ClassToken", "MultiHeadAttention", "OneHot", "Permute", "PositionalEncoding",
             "PositionEmbedding", "Reshape", "Scale", "Take")},
         **{name: ("deferinit.layers_up", name) for name in ("Conv1DTranspose", "Conv2DTranspose", "Upsample2D")},
         "Add": ("deferinit.merges", "Add"), "Multiply": ("deferinit.merges", "Multiply"),
         **{name: ("deferinit.report", name) for name in ("LayerInfo", "ParamInfo", "ShapeReport")},
         "load_spec": ("deferinit.serialize", "load_spec"), "save_spec": ("deferinit.serialize", "save_spec"),
         "infer_shapes": ("deferinit.shapes", "infer_shapes"), "shard_init": ("deferinit.distributed", "shard_init"),
         **{name: ("deferinit.sharding", name) for name in ("ShardedReport", "ShardInfo", "ShardingPlan", "ShardRule")}}
#: submodules importing deferinit used to load as a side effect: still reachable as attributes of the package
_SUBMODULES = frozenset({"graph", "layers_extra", "layers_graph", "layers_seq", "layers_up", "merges", "report",
                         "serialize", "shapes", "spec_files"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"deferinit.{name}")
    raise AttributeError(f"module 'deferinit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the submodule ``deferinit.parity`` makes Python bind it over the function ``deferinit.parity``
    (the import system sets the attribute on the package after loading it): keep the function. The module's
    names stay importable as ``from deferinit.parity import make_artifact``."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "parity" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "LazyModel", "Layer", "Sequential", "Residual", "Concat", "Add", "Multiply",
    "Dense", "Conv1D", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm", "LayerNorm", "Dropout",
    "Flatten", "Identity", "Activation", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "Embedding",
    "RNN", "GRU", "LSTM", "MultiHeadAttention", "PositionalEncoding", "ClassToken", "PositionEmbedding", "Reshape",
    "Permute", "Scale", "Take", "OneHot",
    "ReLU6", "SiLU", "HardSwish", "HardSigmoid", "LeakyReLU", "AdaptiveAvgPool2D", "GroupNorm", "LayerScale", "DropPath",
    "Conv1DTranspose", "Conv2DTranspose", "Upsample2D",
    "Input", "add", "multiply", "concat", "Attend",
    "infer_shapes", "compile", "register_layer", "register_builder", "backends", "available_backends", "CompiledModel", "ShapeDtype",
    "ShapeReport", "ParamInfo", "LayerInfo", "load_spec", "save_spec", "save_weights", "load_weights", "init", "parity",
    "ShardingPlan", "ShardRule", "ShardedReport", "ShardInfo", "shard_init",
    "DeferInitError", "SpecError", "ShapeMismatchError", "DTypeError", "BackendUnavailableError",
    "UnknownBackendError", "NotInitializedError", "UnsupportedLayerError", "UnsupportedShardingError", "WeightsError",
    "BackendError",
    "ResourceError", "__version__",
]
