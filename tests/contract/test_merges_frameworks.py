"""Add and Multiply on every selected framework: the merge cases (tests/cases.py, block "merges") through the
parity check against the reference in one process (outputs, every layer's output, init, a training step,
gradients against the reference's finite differences), and the report's shapes as the framework observes them."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID
from deferinit.parity import parity

MERGES = ["merges", "merges_dense", "merges_channels_last"]


@pytest.mark.parametrize("case_id", MERGES)
def test_merge_cases_agree_with_reference(framework: str, case_id: str) -> None:
    case = BY_ID[case_id]
    result = parity(case.make(), case.data(), backends=[framework])
    r = result.results[framework]
    assert result.passed, "\n".join(result.failures())
    assert r.init_identical is True
    assert r.train_ok is True
    assert r.max_abs <= 1e-4


def test_squeeze_excitation_broadcast_is_the_framework_s(framework: str) -> None:
    """``x * mean(x)`` per channel: the merge broadcasts (N, C, H, W) by (N, C, 1, 1) in the framework itself,
    and the report's per-position shapes come from the framework's own outputs."""
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32)
    spec = di.LazyModel([di.Multiply([di.Identity(), di.AdaptiveAvgPool2D(1)], name="se"),
                         di.Add([di.Identity(), di.Scale(-3.0)], name="sum")])
    model = di.compile(spec, framework)
    model.apply_init(x, key=0)
    y = model(x)
    got = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
    np.testing.assert_allclose(got, -2.0 * x * x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    inter = model.intermediates(x)
    assert inter["se.1"].shape == (2, 3, 1, 1) and inter["se"].shape == (2, 3, 5, 4)
    assert model.report.layers["se.1"].output_shape == (2, 3, 1, 1)
    assert model.report.diff(di.infer_shapes(spec, x.shape)) == []


def test_a_wrong_branch_is_named_before_the_framework_runs(framework: str) -> None:
    spec = di.LazyModel([di.Dense(4), di.Multiply([di.Dense(4), di.Dense(3)], name="gate"), di.Dense(2)])
    model = di.compile(spec, framework)
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'gate' \(Multiply\).*branch 1 output \(2, 3\)"):
        model.apply_init(np.zeros((2, 5), np.float32))
    assert not model.initialized
