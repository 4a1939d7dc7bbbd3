"""What apply_init asks NNX once per (spec, input, builders) in a process (``RulesCache._framework_once``, issue 17):
the per-layer output shapes, which take a trace of the forward, and the count of the variables NNX created. Truth:
the reference rules' shapes, and a builder registered by the test that changes what NNX builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

import deferinit as di
from deferinit import layers as L
from deferinit.adapters import rules_cache
from deferinit.adapters.nnx import NnxModel
from deferinit.errors import ShapeMismatchError
from deferinit.extend import register_builder
from deferinit.layers import ParamSpec


@pytest.fixture(autouse=True)
def _fresh_shared_cache() -> None:
    rules_cache._SHARED.clear()


def _spec() -> di.LazyModel:
    return di.LazyModel([L.Conv2D(3, 3, padding=1), L.ReLU(), L.Flatten(), L.Dense(4)])


def test_equal_specs_trace_the_forward_once_per_input(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = NnxModel._traced_shapes
    monkeypatch.setattr(NnxModel, "_traced_shapes", lambda self, *a: calls.append(1) or real(self, *a))
    for shape in ((2, 1, 5, 5), (2, 1, 5, 5), (3, 1, 5, 5), (2, 1, 5, 5)):
        model = di.compile(_spec(), "nnx")  # a new spec and model each time, as a script or a benchmark builds
        report = model.apply_init(np.zeros(shape, np.float32))
        ref = di.infer_shapes(_spec(), shape)
        assert {p: i.output_shape for p, i in report.layers.items()} == \
            {p: i.output_shape for p, i in ref.layers.items()}
        assert all(i.source == "native" for i in report.layers.values())
    assert len(calls) == 2  # one per input shape
    di.compile(_spec(), "nnx").apply_init(di.ShapeDtype((2, 1, 5, 5)), abstract=True)
    assert len(calls) == 3  # abstract builds are asked apart


@dataclasses.dataclass(frozen=True, eq=False)
class Scaled(L.Leaf):  # y = w * x with one weight per feature: its NNX builder is replaced below
    def infer(self, shape, ctx):  # type: ignore[no-untyped-def]
        return shape, {"weight": ParamSpec((shape[-1],), role="scale")}

    def forward(self, x, params, ctx):  # type: ignore[no-untyped-def]
        return x * params["weight"]


class _Mul(nnx.Module):
    def __init__(self, n: int, extra: bool) -> None:
        self.weight = nnx.Param(np.ones((n,), np.float32))
        if extra:  # a variable the spec does not hold
            self.stray = nnx.Param(np.zeros((1,), np.float32))

    def __call__(self, x, train=False):  # type: ignore[no-untyped-def]
        return x * self.weight[...]


def test_a_builder_registered_since_is_asked_again() -> None:
    from deferinit.adapters.jax import params as T

    def builder(extra: bool):  # type: ignore[no-untyped-def]
        def build(node, cf, rngs, in_shape):  # type: ignore[no-untyped-def]
            return _Mul(int(in_shape[-1]), extra), {"weight": T.One(T.Leaf("params", "weight"), "same")}
        return build

    spec = lambda: di.LazyModel([L.Dense(4), Scaled()])  # noqa: E731
    register_builder("nnx", Scaled)(builder(False))
    report = di.compile(spec(), "nnx").apply_init(np.zeros((1, 3), np.float32))
    assert report.params["1.weight"].shape == (4,)
    register_builder("nnx", Scaled)(builder(True))  # now NNX creates one variable more: the count is taken anew
    with pytest.raises(ShapeMismatchError, match="created 4 variables where the spec's layers hold 3"):
        di.compile(spec(), "nnx").apply_init(np.zeros((1, 3), np.float32))
