"""The jax backend's report shapes are Flax's own: every layer position's output and the model's output come
from the trace ``jax.eval_shape(module.init_with_output)`` that apply_init already runs, and the compiled model
checks them against the reference rules (a wrong one is a BackendError naming the layer)."""

from __future__ import annotations

import pytest

import deferinit as di
from cases import CASES, Case
from deferinit import zoo
from deferinit.adapters.jax import FlaxModel
from deferinit.errors import BackendError


def _native_and_equal(spec: di.LazyModel, shape: tuple, dtype: str, abstract: bool) -> None:
    model = di.compile(spec, "jax")
    report = model.apply_init(di.ShapeDtype(shape, dtype), abstract=abstract)
    assert report.layers and all(info.source == "native" for info in report.layers.values())
    assert report.diff(di.infer_shapes(spec, shape, dtype=dtype)) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contract_cases_report_flax_shapes(case: Case) -> None:
    _native_and_equal(case.make(), case.shape, case.dtype, abstract=True)


def test_concrete_init_and_a_none_dim_report_flax_shapes() -> None:
    case = next(c for c in CASES if c.id == "residual")
    _native_and_equal(case.make(), case.shape, case.dtype, abstract=False)
    spec = di.LazyModel([di.Dense(6, activation="relu"), di.LayerNorm(), di.Dense(2)])
    model = di.compile(spec, "jax")
    report = model.apply_init(di.ShapeDtype((None, 5, 4), "float32"), abstract=True)
    assert report.output_shape == (None, 5, 2) and report.layers["1"].output_shape == (None, 5, 6)
    assert all(info.source == "native" for info in report.layers.values())


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_reports_flax_shapes(name: str) -> None:
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    _native_and_equal(zoo.MODELS[name](), zoo.BOOK_INPUTS[name], dtype, abstract=True)


def test_a_wrong_observed_shape_is_a_backend_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = FlaxModel._native_layer_shapes

    def wrong(self: FlaxModel, *args: object) -> dict:  # Flax's trace said layer '1' has 5 features, not 6
        return {**real(self, *args), "1": (2, 5)}  # type: ignore[arg-type]

    monkeypatch.setattr(FlaxModel, "_native_layer_shapes", wrong)
    spec = di.LazyModel([di.Dense(8, activation="relu"), di.Dense(6), di.Dense(3)])
    for abstract in (True, False):
        with pytest.raises(BackendError, match=r"computed \(2, 5\) at layer '1' \(Dense\) where the reference rules give \(2, 6\)"):
            di.compile(spec, "jax").apply_init(di.ShapeDtype((2, 4), "float32"), abstract=abstract)
