"""examples/custom_layer.py: a layer type from outside the package, on the numpy backend by its registered
builder, checked against hand-derived shapes and the reference's own finite-difference gradients."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

import deferinit as di

pytestmark = pytest.mark.installed  # the example runs on every installed backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example() -> dict:
    return runpy.run_path(str(ROOT / "examples" / "custom_layer.py"), run_name="example")


def test_report_has_hand_derived_shapes(example: dict) -> None:
    """Dense(16) on 12 features: W (16, 12); GatedDense(8) doubles its units for the gate: W (16, 16), output
    8 features; Dense(3): W (3, 8). Batch 4 throughout."""
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    report = di.compile(example["SPEC"], "numpy").apply_init(x, init="xavier_uniform", key=0)
    assert {n: p.shape for n, p in report.params.items()} == {
        "0.weight": (16, 12), "0.bias": (16,), "1.weight": (16, 16), "1.bias": (16,), "2.weight": (3, 8),
        "2.bias": (3,)}
    assert [(layer.path, layer.output_shape) for layer in report.layers.values()] == [("0", (4, 16)), ("1", (4, 8)),
                                                                                      ("2", (4, 3))]
    assert report.output_shape == (4, 3) and report.total_params == 16 * 12 + 16 + 16 * 16 + 16 + 3 * 8 + 3


def test_numpy_builder_is_the_forward(example: dict) -> None:
    """The registered numpy builder computes h[:, :8] * sigmoid(h[:, 8:]) of h = x W^T + b."""
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    model = di.compile(example["SPEC"], "numpy")
    model.apply_init(x, init="xavier_uniform", key=0)
    w = model.export_weights()
    h0 = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    h1 = h0 @ w["1.weight"].T + w["1.bias"]
    want = (h1[:, :8] / (1 + np.exp(-h1[:, 8:]))) @ w["2.weight"].T + w["2.bias"]
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


def test_main_with_only_numpy_prints_the_report_and_fails_parity(example: dict, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """main() on a machine with only numpy: the report is printed, and parity, having nothing to compare,
    fails (exit 1) rather than passing."""
    monkeypatch.setattr(di, "available_backends", lambda: ["numpy"])
    assert example["main"]() == 1
    out = capsys.readouterr().out
    assert "1      GatedDense  (4, 8)        weight  (16, 16)" in out and "identical reports on 1 backends" in out
    assert "nothing compared" in out
