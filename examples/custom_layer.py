"""A layer type that deferinit does not ship, defined outside the package and run on every installed backend.

    python examples/custom_layer.py

``GatedDense(units)`` is a gated linear unit (Dauphin et al., 2017): ``h = x @ W.T + b`` with ``W`` of shape
``(2 * units, in)``, then ``h[..., :units] * sigmoid(h[..., units:])``. A layer type is four things:

1. its fields and its shape rule: a frozen dataclass subclassing ``deferinit.layers.Leaf`` whose ``infer``
   returns the output shape and the parameters (canonical names and layouts), registered with
   ``@di.register_layer`` so spec files know its name;
2. its NumPy kernel, the reference forward every backend is compared with;
3. one builder per backend, registered with ``@di.register_builder(backend, GatedDense)``: what a builder takes
   and returns is each backend's own (see ``deferinit/adapters/<backend>/leaves.py``); the built-in layers are
   registered the same way;
4. nothing else: reports, weights, parity and the CLI work as for a built-in layer.

A package can ship layers for others through the ``deferinit.layers`` entry-point group (the value is a module
whose decorators register what it defines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import deferinit as di
from deferinit.layers import Leaf, ParamSpec, RuleContext
from deferinit.spec import check_int


@di.register_layer
@dataclass(frozen=True, eq=False, repr=False)
class GatedDense(Leaf):
    """``h = x @ W.T + b``; ``y = h[..., :units] * sigmoid(h[..., units:])``; ``W`` is ``(2 * units, in)``."""

    units: int

    def validate(self) -> None:
        check_int("GatedDense", "units", self.units)

    def infer(self, shape: tuple, ctx: RuleContext) -> tuple[tuple, dict[str, ParamSpec]]:
        if len(shape) < 2:
            raise ctx.mismatch("an input of rank >= 2 (batch, ..., features)", f"shape {shape}")
        fan_in = ctx.known(shape, -1, "the input features")
        params = {"weight": ParamSpec((2 * self.units, fan_in)), "bias": ParamSpec((2 * self.units,), role="bias")}
        return shape[:-1] + (self.units,), params


def gated_dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, units: int) -> np.ndarray:
    """The reference kernel, in float32 as every backend computes (float64 when given float64: parity's finite
    differences)."""
    h = x @ weight.T + bias
    return (h[..., :units] / (1 + np.exp(-h[..., units:]))).astype(np.result_type(h.dtype, np.float32))


# >>> numpy (the reference backend's builder)
from deferinit.adapters.numpy import NumpyNet  # noqa: E402
from deferinit.shapes import Node  # noqa: E402


@di.register_builder("numpy", GatedDense)
def gated_dense_numpy(net: NumpyNet, node: Node, x: np.ndarray, training: bool) -> np.ndarray:
    """The numpy backend's builder is the forward itself (see deferinit/adapters/numpy/leaves.py)."""
    weight, bias = net.params[node.param_name("weight")], net.params[node.param_name("bias")]
    return gated_dense(x, weight, bias, node.layer.units)  # type: ignore[attr-defined]
# <<< numpy


# >>> torch
try:
    from torch import nn as torch_nn  # one name per framework: each section runs in one module

    from deferinit.adapters.torch.modules import SPEC, Step
except ImportError:  # torch is not installed here: no torch builder
    pass
else:
    @di.register_builder("torch", GatedDense)
    def gated_dense_torch(layer: GatedDense, rank: int | None) -> list[Step]:
        """torch's own ``nn.LazyLinear`` finds ``in`` on the dry run and holds ``weight``/``bias`` under their
        canonical names and layout; ``torch_nn.GLU(dim=-1)`` is exactly ``h[..., :units] * sigmoid(h[..., units:])``."""
        return [Step("", torch_nn.LazyLinear(2 * layer.units), SPEC), Step("glu", torch_nn.GLU(dim=-1), SPEC)]
# <<< torch


# >>> tensorflow
import functools  # noqa: E402
from typing import Any  # noqa: E402


@functools.cache
def keras_gated_dense() -> type:
    """The Keras layer, defined on first use: keras is imported only once a spec is compiled for tensorflow
    (deferinit has then set Keras's backend)."""
    import keras

    class KerasGatedDense(keras.layers.Layer):
        # where deferinit finds each canonical parameter: (attribute holding the variable, layout kind of
        # deferinit.layouts): Keras keeps the kernel as (in, 2 * units), the canonical weight is (2 * units, in)
        deferinit_params = {"weight": ("kernel", "dense"), "bias": ("bias", "same")}

        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units
            self.kernel_initializer = keras.initializers.GlorotUniform()  # init= and key= replace it

        def build(self, input_shape: Any) -> None:  # Keras's deferred initialization: the input dim arrives here
            self.kernel = self.add_weight(shape=(input_shape[-1], 2 * self.units), name="kernel",
                                          initializer=self.kernel_initializer)
            self.bias = self.add_weight(shape=(2 * self.units,), name="bias", initializer="zeros")

        def call(self, x: Any) -> Any:
            h = keras.ops.matmul(x, self.kernel) + self.bias
            return h[..., : self.units] * keras.ops.sigmoid(h[..., self.units:])

        def compute_output_shape(self, input_shape: Any) -> tuple:
            return tuple(input_shape[:-1]) + (self.units,)

    return KerasGatedDense


@di.register_builder("tensorflow", GatedDense)
def build_gated_dense_keras(node: Any, data_format: str) -> Any:
    """``(plan node, data format) -> Keras layer`` (deferinit/adapters/tensorflow/leaves.py): named by its path."""
    return keras_gated_dense()(node.layer.units, name=node.path)
# <<< tensorflow


# >>> jax
try:  # the jax builder, as a user writes one (the signature is documented in deferinit/adapters/jax/leaves.py)
    import flax.linen as linen

    from deferinit.adapters.jax import params as jax_params
except ImportError:  # jax/flax not installed: no jax builder
    pass
else:
    class FlaxGatedDense(linen.Module):
        """The Flax module: a kernel ``(in, 2 * units)`` (Flax's layout) and a bias, then the gate."""

        units: int

        @linen.compact
        def __call__(self, x, train=False):
            kernel = self.param("kernel", linen.initializers.lecun_normal(), (x.shape[-1], 2 * self.units))
            bias = self.param("bias", linen.initializers.zeros, (2 * self.units,))
            h = x @ kernel + bias
            return h[..., :self.units] * linen.sigmoid(h[..., self.units:])

    @di.register_builder("jax", GatedDense)
    def _gated_dense_jax(node, channels_first, name):
        module = FlaxGatedDense(node.layer.units, name=name)
        # canonical weight (2 * units, in) is Flax's kernel transposed: the "dense" layout
        return module, {
            "weight": jax_params.One(jax_params.Leaf("params", "kernel", linen.initializers.lecun_normal(), kernel=True),
                                     "dense"),
            "bias": jax_params.One(jax_params.Leaf("params", "bias", linen.initializers.zeros)),
        }

# <<< jax


# >>> nnx
try:  # the nnx builder (signature in deferinit/adapters/nnx/leaves.py): NNX modules are eager, so the builder is
    # given the layer's input shape by the reference rules and passes its fan-in to NNX
    from flax import nnx

    from deferinit.adapters.jax import params as nnx_params
except ImportError:  # flax not installed: no nnx builder
    pass
else:
    class NnxGatedDense(nnx.Module):
        """An ``nnx.Linear(in, 2 * units)`` (kernel ``(in, 2 * units)``), then the gate."""

        def __init__(self, in_features: int, units: int, rngs: nnx.Rngs) -> None:
            self.dense, self.units = nnx.Linear(in_features, 2 * units, rngs=rngs), units

        def __call__(self, x, train=False):  # type: ignore[no-untyped-def]
            h = self.dense(x)
            return h[..., :self.units] * nnx.sigmoid(h[..., self.units:])

    @di.register_builder("nnx", GatedDense)
    def _gated_dense_nnx(node, channels_first, rngs, in_shape):  # type: ignore[no-untyped-def]
        module = NnxGatedDense(in_shape[-1], node.layer.units, rngs)
        # the leaf names are the NNX attribute paths below the module; the kernel is Flax's (in, out): "dense"
        return module, {"weight": nnx_params.One(nnx_params.Leaf("params", "dense/kernel"), "dense"),
                        "bias": nnx_params.One(nnx_params.Leaf("params", "dense/bias"), "same")}
# <<< nnx


# >>> mxnet
if "mxnet" in di.available_backends():
    import warnings

    with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from mxnet import gluon
        from mxnet.gluon import nn as gluon_nn

    class MxGatedDense(gluon.HybridBlock):
        """One Dense of ``2 * units`` (its input size left at 0 for Gluon to infer), then the gate."""

        def __init__(self, units: int) -> None:
            super().__init__()
            self.units = units
            with self.name_scope():
                self.dense = gluon_nn.Dense(2 * units, flatten=False, in_units=0)

        def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
            h = self.dense(x)
            value = F.slice_axis(h, axis=-1, begin=0, end=self.units)
            gate = F.slice_axis(h, axis=-1, begin=self.units, end=2 * self.units)
            return value * F.sigmoid(gate)

    @di.register_builder("mxnet", GatedDense)
    def _gated_dense_mxnet(layer: GatedDense, data_format: str) -> tuple:
        block = MxGatedDense(layer.units)
        return block, {"weight": block.dense.weight, "bias": block.dense.bias}  # Gluon's (out, in): canonical
# <<< mxnet


SPEC = di.LazyModel([di.Dense(16, activation="relu"), GatedDense(8), di.Dense(3)])


def main() -> int:
    """The report on every installed backend (identical, or exit 1), then parity with every installed framework
    (gradients against the numpy reference's own finite differences). With no framework installed, parity
    compares nothing and so fails: exit 1, saying why."""
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    installed = di.available_backends()
    print(f"installed: {', '.join(installed)}")
    reports = {}
    for backend in installed:
        model = di.compile(SPEC, backend)
        reports[backend] = model.apply_init(x, init="xavier_uniform", key=0)
        print(f"--- {backend}\n{reports[backend]}")
    differ = [b for b, r in reports.items() if r.diff(reports["numpy"])]
    if differ:
        print(f"reports differ from numpy's on: {', '.join(differ)}")
        return 1
    print(f"identical reports on {len(reports)} backends")
    result = di.parity(SPEC, x, backends=[b for b in installed if b != "numpy"])
    print(result)
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
