"""Add and Multiply (deferinit.merges): their shape rule, errors, serialization and the NumPy reference's
numbers, against NumPy arithmetic written out here."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deferinit as di
from deferinit.resources import footprint
from deferinit.shapes import infer


def _se(channels: int) -> di.Multiply:
    return di.Multiply([di.Identity(), di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(channels, 1),
                                                      di.Sigmoid()])], name="se")


def test_shapes_broadcast_size_one_axes_and_name_params_under_the_merge() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3), _se(4), di.Add([di.Conv2D(4, 1), di.Identity()])])
    r = di.infer_shapes(spec, (2, 3, 9, 8))
    assert r.output_shape == (2, 4, 7, 6)
    assert r.layers["se"].output_shape == (2, 4, 7, 6)  # (2, 4, 7, 6) * (2, 4, 1, 1)
    assert r.layers["se.1"].output_shape == (2, 4, 1, 1)
    assert r.params["se.1.1.weight"].shape == (4, 4, 1, 1)
    assert r.params["2.0.weight"].shape == (4, 4, 1, 1)
    assert [p for p in r.params if p.startswith("2.")] == ["2.0.weight", "2.0.bias"]
    # the size-1 operand may come first, and several branches broadcast to the largest size on each axis
    spec = di.LazyModel([di.Multiply([di.Dense(1), di.Identity(), di.Dense(1)])])
    assert di.infer_shapes(spec, (3, 5)).output_shape == (3, 5)
    spec = di.LazyModel([di.Add([di.Conv2D(2, 1), di.Identity()])], data_format="channels_last")
    assert di.infer_shapes(spec, (1, 4, 4, 2)).output_shape == (1, 4, 4, 2)


@pytest.mark.parametrize("spec,shape,match", [
    (di.LazyModel([di.Add([di.Dense(3), di.Dense(4)])]), (2, 5),
     r"layer '0' \(Add\) expected branch outputs of one rank whose sizes are equal or 1.*branch 0 gives \(2, 3\).*"
     r"branch 1 output \(2, 4\)"),
    (di.LazyModel([di.Multiply([di.Identity(), di.Flatten()], name="gate")]), (2, 3, 4),
     r"layer 'gate' \(Multiply\) expected branch outputs of one rank.*branch 1 output \(2, 12\)"),
    (di.LazyModel([di.Sequential([di.Dense(2), di.Multiply([di.Dense(3), di.Identity()])])]), (1, 4),
     r"layer '0\.1' \(Multiply\)"),
])
def test_mismatched_branches_name_the_merge(spec: di.LazyModel, shape: tuple, match: str) -> None:
    with pytest.raises(di.ShapeMismatchError, match=match):
        di.infer_shapes(spec, shape)


@pytest.mark.parametrize("cls", [di.Add, di.Multiply])
def test_bad_fields_are_spec_errors(cls: type) -> None:
    with pytest.raises(di.SpecError, match=rf"{cls.__name__}: branches must be a non-empty list of layers. Received: branches=\[\]"):
        cls([])
    with pytest.raises(di.SpecError, match=r"branches\[1\] must be a deferinit layer"):
        cls([di.Dense(2), "dense"])
    with pytest.raises(di.SpecError, match="a list of layers"):
        cls(di.Dense(2))
    with pytest.raises(di.SpecError, match="two layers would both be named 'a'"):
        cls([di.Dense(2, name="a"), di.Dense(2, name="a")])


def test_round_trip_through_a_spec_file(tmp_path) -> None:
    shared = di.Dense(4)
    spec = di.LazyModel([di.Dense(4), di.Add([shared, di.Multiply([shared, di.Identity()], name="m")])])
    path = tmp_path / "m.json"
    di.save_spec(spec, path)
    data = json.loads(path.read_text())
    assert data["layers"][1]["type"] == "Add" and data["layers"][1]["branches"][1]["type"] == "Multiply"
    back = di.load_spec(path)
    assert back == spec and type(back.layers[1]) is di.Add
    # the tie survives: one object at both positions
    assert back.layers[1].branches[0] is back.layers[1].branches[1].branches[0]
    assert list(di.infer_shapes(back, (2, 3)).params) == list(di.infer_shapes(spec, (2, 3)).params)


def test_reference_numbers_equal_numpy_arithmetic() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    spec = di.LazyModel([di.Multiply([di.Identity(), di.AdaptiveAvgPool2D(1)]),
                         di.Add([di.Identity(), di.Scale(2.0), di.AdaptiveAvgPool2D(1)])])
    model = di.compile(spec, "numpy")
    model.apply_init(x, key=0)
    se = x * x.mean(axis=(2, 3), keepdims=True)  # (N, C, H, W) * (N, C, 1, 1)
    want = se + 2.0 * se + se.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-6)
    got = model.intermediates(x)
    np.testing.assert_allclose(got["0"], se, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["0.1"], x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


def test_memory_estimate_holds_every_branch_output() -> None:
    # each branch's (64, 1000) float32 output (256,000 bytes) is held until the merge: one more branch, one more
    def peak(branches: int) -> int:
        spec = di.LazyModel([di.Multiply([di.Dense(1000) for _ in range(branches)])])
        return footprint(infer(spec, (64, 8))).peak

    assert peak(3) - peak(2) == 64 * 1000 * 4
    assert peak(2) >= 8 * 64 * 4 + 3 * 64 * 1000 * 4  # the input, two branch outputs and the product
