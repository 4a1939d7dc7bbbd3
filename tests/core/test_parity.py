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


def test_reference_file_holds_digests_not_a_portable_draw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = BY_ID["lenet"]
    ref = make_artifact(case.make(), "numpy", case.data())
    small, full = save_artifact(ref, tmp_path / "ref.npz"), save_artifact(ref, tmp_path / "full.npz", weights=True)
    assert not [k for k in np.load(small).files if k.startswith("weights/")]
    assert sorted(k for k in np.load(full).files if k.startswith("weights/")) == sorted(f"weights/{n}" for n in ref.weights)
    nbytes = sum(w.nbytes for w in ref.weights.values())
    assert full.stat().st_size - small.stat().st_size >= nbytes  # npz stores them uncompressed
    again = load_artifact(small)
    assert list(again.weights) == list(ref.weights)  # names and order from the digests
    for name, w in ref.weights.items():  # drawn again, bit for bit
        np.testing.assert_array_equal(again.weights[name], w)
    other = make_artifact(case.make(), "numpy", source=again)
    assert compare_artifacts([again, other]).passed


def test_a_redraw_that_differs_from_the_digest_names_the_parameter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    case = BY_ID["lenet"]
    ref = make_artifact(case.make(), "numpy", case.data())
    last = list(ref.init)[-1]
    again = load_artifact(save_artifact(replace(ref, init={**ref.init, last: "0" * 64}), tmp_path / "ref.npz"))
    with pytest.raises(di.WeightsError, match=f"'{last}'.*sha256"):
        again.weights[list(ref.init)[0]]
    # a backend run from it draws other bits than the header says, so it needs the weights: the same error
    with pytest.raises(di.WeightsError, match=f"'{last}'"):
        make_artifact(case.make(), "numpy", source=again)


def test_weights_no_portable_initializer_drew_are_stored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = BY_ID["mlp"]
    ref = make_artifact(case.make(), "numpy", case.data(), init=None)  # the backend's own initializer
    path = save_artifact(ref, tmp_path / "ref.npz")
    assert sorted(k for k in np.load(path).files if k.startswith("weights/")) == sorted(f"weights/{n}" for n in ref.weights)
    assert isinstance(load_artifact(path).weights, dict)
    with pytest.raises(di.WeightsError, match="portable initializer.*'None'"):
        save_artifact(ref, tmp_path / "no.npz", weights=False)


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

