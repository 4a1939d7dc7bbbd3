"""ShapeReport: JSON round trip, diff, counts and the table."""

from __future__ import annotations

import json

import pytest

import deferinit as di


@pytest.fixture
def report() -> di.ShapeReport:
    spec = di.LazyModel([di.Conv2D(4, 3), di.BatchNorm(), di.Flatten(), di.Dense(2)])
    return di.infer_shapes(spec, (1, 3, 5, 5))


def test_counts_follow_keras(report: di.ShapeReport) -> None:
    # conv 4*3*3*3 + 4 = 112; BN 4 * 4 = 16 (8 trainable); dense 2 * (4*3*3) + 2 = 74
    assert report.total_params == 112 + 16 + 74
    assert report.trainable_params == 112 + 8 + 74
    assert report.non_trainable_params == 8


def test_json_round_trip(report: di.ShapeReport) -> None:
    text = report.to_json()
    data = json.loads(text)
    assert data["params"]["0.weight"]["shape"] == [4, 3, 3, 3]
    assert data["layers"]["2"]["output_shape"] == [1, 36]
    again = di.ShapeReport.from_json(text)
    assert again == report and again.diff(report) == []
    assert again.params["1.running_var"].trainable is False


def test_diff_ignores_backend_and_native_names(report: di.ShapeReport) -> None:
    params = dict(report.params)
    params["0.weight"] = di.ParamInfo((4, 3, 3, 3), native_name="conv2d_7/kernel", native_shape=(3, 3, 3, 4))
    other = di.ShapeReport("tensorflow", report.input_shape, report.output_shape, params, report.layers,
                           data_format=report.data_format)
    assert other.diff(report) == []


def test_diff_names_what_differs(report: di.ShapeReport) -> None:
    other = di.infer_shapes(di.LazyModel([di.Conv2D(4, 3), di.BatchNorm(), di.Flatten(), di.Dense(3)]), (1, 3, 5, 5))
    lines = report.diff(other)
    assert "output_shape: (1, 2) != (1, 3)" in lines
    assert "param '3.weight': shape (2, 36) float32 != shape (3, 36) float32" in lines
    smaller = di.infer_shapes(di.LazyModel([di.Conv2D(4, 3)]), (1, 3, 5, 5))
    assert any("'1.running_mean'" in line and "only in the first" in line for line in report.diff(smaller))


def test_table(report: di.ShapeReport) -> None:
    text = str(report)
    assert text.splitlines()[0].startswith("ShapeReport(backend=numpy, input=(1, 3, 5, 5)")
    assert "Total params: 202 (trainable 194, non-trainable 8)" in text
    row = next(line for line in text.splitlines() if line.startswith("3 "))
    assert "Dense" in row and "(2, 36)" in row and "72" in row


@pytest.mark.parametrize("text,match", [
    ("not json", r"expected JSON"), ('{"format": "x"}', r"not a deferinit shape report"),
    ('{"format": "deferinit.report", "version": 9}', r"version"),
    ('{"format": "deferinit.report", "version": 1, "backend": "x"}', r"malformed content"),
])
def test_bad_report_json(text: str, match: str) -> None:
    with pytest.raises(di.SpecError, match=match):
        di.ShapeReport.from_json(text)
