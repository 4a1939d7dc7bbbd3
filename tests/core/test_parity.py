"""Parity machinery on the framework-free backend: artifacts, comparison, and a broken conversion found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID
from deferinit.adapters.numpy import NumpyModel
from deferinit.parity import compare_artifacts, load_artifact, make_artifact, parity, save_artifact

ROOT = Path(__file__).resolve().parents[2]
# parity_fd.directions("0.weight", (2, 3))[0, 0, :2], computed once under numpy 2.x and numpy 1.23 (equal)
EXPECTED_DIRECTION = [0.015686500527537735, -0.65195090296157]


class TransposingNumpy(NumpyModel):
    """A deliberately broken conversion: one conv kernel's spatial axes swapped on load."""

    backend = "numpy"
    broken = "2.weight"

    def _set_weights(self, weights):  # type: ignore[no-untyped-def]
        weights = dict(weights)
        weights[self.broken] = np.swapaxes(weights[self.broken], -1, -2).copy()
        super()._set_weights(weights)


def test_broken_conversion_names_the_layer(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    case = BY_ID["lenet"]
    ref = make_artifact(case.make(), "numpy", case.data())
    from deferinit import registry

    monkeypatch.setitem(registry.BUILTINS, "numpy", ("test_parity:TransposingNumpy", ("numpy",), "", ()))
    broken = make_artifact(case.make(), "numpy", source=ref)
    broken.backend = "broken"
    result = compare_artifacts([ref, broken])
    r = result.results["broken"]
    assert not result.passed and not r.ok
    assert r.first_divergence == "2"  # the conv whose kernel was transposed, not a later layer
    assert any("first at layer '2'" in line for line in result.failures())


def test_artifacts_round_trip_and_compare(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = BY_ID["residual"]
    ref = make_artifact(case.make(), "numpy", case.data())
    path = save_artifact(ref, tmp_path / "ref.npz")
    again = load_artifact(path)
    assert again.report.diff(ref.report) == [] and list(again.intermediates) == list(ref.intermediates)
    np.testing.assert_array_equal(again.output, ref.output)
    assert set(again.train_state) == {n for n in ref.weights if "running" in n}
    # the training step moved the running statistics
    assert not np.array_equal(again.train_state["1.running_mean"], ref.weights["1.running_mean"])
    other = make_artifact(case.make(), "numpy", source=again)
    assert compare_artifacts([again, other]).passed


def test_mismatched_inputs_are_refused() -> None:
    case = BY_ID["mlp"]
    a = make_artifact(case.make(), "numpy", case.data(seed=1))
    b = make_artifact(case.make(), "numpy", case.data(seed=2))
    with pytest.raises(di.SpecError, match="another input"):
        compare_artifacts([a, b])
    with pytest.raises(di.SpecError, match="numpy reference"):
        compare_artifacts([])


def test_parity_rejects_non_finite_input() -> None:
    x = np.full((2, 20), np.nan, np.float32)
    with pytest.raises(di.ShapeMismatchError, match="finite"):
        parity(BY_ID["mlp"].make(), x, backends=[])


def test_cli_across_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = ROOT / "examples" / "lenet.toml"
    ref, other = tmp_path / "ref.npz", tmp_path / "other.npz"
    run = [sys.executable, "-m", "deferinit", "parity"]
    subprocess.run(run + ["run", str(spec), "--backend", "numpy", "--input", "2,1,28,28", "--out", str(ref)], check=True)
    subprocess.run(run + ["run", str(spec), "--backend", "numpy", "--from", str(ref), "--out", str(other)], check=True)
    proc = subprocess.run(run + ["compare", str(ref), str(other)], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout
    bad = subprocess.run(run + ["compare", str(tmp_path / "nope.npz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_finite_differences_match_hand_derived_dense_gradients() -> None:
    """For y = x W^T + b and L = sum(y): dL/dW[o, i] = sum_n x[n, i] and dL/db[o] = N (the batch size), so
    the directional derivative along d is <d_W, 1 x_sum> and <d_b, N>: the reference's float64 finite
    differences must give exactly these (to the step's rounding), independent of any framework."""
    from deferinit import parity_fd

    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    art = make_artifact(di.LazyModel([di.Dense(3)]), "numpy", x, training=False)
    grad_w = np.tile(x.astype(np.float64).sum(axis=0), (3, 1))
    grad_b = np.full(3, 5.0)
    for name, grad in (("0.weight", grad_w), ("0.bias", grad_b)):
        d = parity_fd.directions(name, grad.shape)
        assert np.allclose(np.linalg.norm(d.reshape(3, -1), axis=1), 1.0)
        want = d.reshape(3, -1) @ grad.reshape(-1)
        np.testing.assert_allclose(art.directional[name], want, rtol=1e-7, atol=1e-8)
    assert set(art.directional) == {"0.weight", "0.bias"} and art.gradients == {}


def test_directions_are_fixed_numbers() -> None:
    """The directions are an integer hash of the entry index, not a random stream: the same in every NumPy
    version and virtualenv (MXNet's has numpy 1.23), so artifacts made there project on the same ones."""
    from deferinit import parity_fd

    d = parity_fd.directions("0.weight", (2, 3))
    assert d.shape == (3, 2, 3) and d.dtype == np.float64
    np.testing.assert_array_equal(d, parity_fd.directions("0.weight", (2, 3)))
    assert not np.allclose(d[0], d[1]) and not np.allclose(d, parity_fd.directions("0.bias", (2, 3)))
    np.testing.assert_allclose(d[0, 0, :2], EXPECTED_DIRECTION, rtol=1e-12)


def test_directional_gradients_survive_the_artifact_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = BY_ID["mlp"]
    ref = make_artifact(case.make(), "numpy", case.data())
    again = load_artifact(save_artifact(ref, tmp_path / "ref.npz"))
    assert set(again.directional) == {n for n, p in ref.report.params.items() if p.trainable}
    for name, fd in ref.directional.items():
        np.testing.assert_array_equal(again.directional[name], fd)
        assert again.directional[name].dtype == np.float64 and fd.shape == (3,)


def test_artifacts_without_directional_gradients_still_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Artifacts written before the finite differences (no proj/ arrays) load and compare; gradients then
    show '-' (not compared), never ok. A damaged proj/ array is a WeightsError naming it."""
    from dataclasses import replace

    case = BY_ID["mlp"]
    ref = make_artifact(case.make(), "numpy", case.data())
    old = load_artifact(save_artifact(replace(ref, directional={}), tmp_path / "old.npz"))
    assert old.directional == {}
    other = replace(make_artifact(case.make(), "numpy", source=old), backend="other")
    result = compare_artifacts([old, other])
    assert result.passed and result.results["other"].grad_ok is None
    bad = replace(ref, directional={"0.weight": np.zeros((2, 2))})
    with pytest.raises(di.WeightsError, match="proj/0.weight"):
        load_artifact(save_artifact(bad, tmp_path / "bad.npz"))


def test_big_nets_use_directions_over_all_parameters(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Past the time budget the reference takes 3 directions over every parameter together (each parameter's
    own direction scaled by 1/sqrt(P)): on a Dense layer they equal the hand-derived gradients' projections,
    survive the artifact file, and a framework's per-parameter projections are compared through them."""
    from dataclasses import replace

    from deferinit import parity_fd

    monkeypatch.setattr(parity_fd, "BUDGET_S", 0.0)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    art = load_artifact(save_artifact(make_artifact(di.LazyModel([di.Dense(3)]), "numpy", x, training=False),
                                      tmp_path / "ref.npz"))
    assert list(art.directional) == [parity_fd.ALL]
    hand = {"0.weight": np.tile(x.astype(np.float64).sum(axis=0), (3, 1)), "0.bias": np.full(3, 5.0)}
    projections = parity_fd.project(hand)
    np.testing.assert_allclose(art.directional[parity_fd.ALL], parity_fd.combined(projections), rtol=1e-7, atol=1e-8)
    good = replace(art, backend="good", directional=projections)
    bad = replace(art, backend="bad", directional=dict(projections, **{"0.bias": projections["0.bias"] * 1.5}))
    result = compare_artifacts([art, good, bad])
    assert result.results["good"].grad_ok is True and result.results["bad"].grad_ok is False
    assert "all parameters together differs from numpy's finite differences" in result.results["bad"].grad_worst
