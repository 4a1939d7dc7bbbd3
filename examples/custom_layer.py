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
    """The reference kernel, in float32 as every backend computes."""
    h = x @ weight.T + bias
    return (h[..., :units] / (1 + np.exp(-h[..., units:]))).astype(np.float32)


# >>> numpy (the reference backend's builder)
# <<< numpy


# >>> torch
try:
    from torch import nn

    from deferinit.adapters.torch.modules import SPEC, Step
except ImportError:  # torch is not installed here: no torch builder
    pass
else:
    @di.register_builder("torch", GatedDense)
    def gated_dense_torch(layer: GatedDense, rank: int | None) -> list[Step]:
        """torch's own ``nn.LazyLinear`` finds ``in`` on the dry run and holds ``weight``/``bias`` under their
        canonical names and layout; ``nn.GLU(dim=-1)`` is exactly ``h[..., :units] * sigmoid(h[..., units:])``."""
        return [Step("", nn.LazyLinear(2 * layer.units), SPEC), Step("glu", nn.GLU(dim=-1), SPEC)]
# <<< torch


# >>> tensorflow
# <<< tensorflow


# >>> jax
# <<< jax


# >>> mxnet
if "mxnet" in di.available_backends():
    import warnings

    with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from mxnet import gluon
        from mxnet.gluon import nn

    class MxGatedDense(gluon.HybridBlock):
        """One Dense of ``2 * units`` (its input size left at 0 for Gluon to infer), then the gate."""

        def __init__(self, units: int) -> None:
            super().__init__()
            self.units = units
            with self.name_scope():
                self.dense = nn.Dense(2 * units, flatten=False, in_units=0)

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


def main() -> int:
    spec = di.LazyModel([di.Dense(16, activation="relu"), GatedDense(8), di.Dense(3)])
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    print(f"installed: {', '.join(di.available_backends())}")
    result = di.parity(spec, x, backends=[b for b in di.available_backends() if b != "numpy"])
    print(result)
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
