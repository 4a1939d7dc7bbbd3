"""Gradient parity across non-smooth ops: two frameworks whose float32 forwards took different branches (a ReLU input
on either side of 0, another entry of a max-pool window) are reported and not compared pairwise; any other gap is a
failure that names the entry furthest out of tolerance. The framework artifacts here are the reference's own,
edited by hand: what each edit does to the comparison is worked out in the test."""

from __future__ import annotations

import copy

import numpy as np

import deferinit as di
from deferinit.parity import compare_artifacts, make_artifact


def _framework_copies(ref, grads):  # type: ignore[no-untyped-def]
    """Two "framework" artifacts: the reference's forward and the same gradients."""
    out = []
    for name in ("fw_a", "fw_b"):
        art = copy.deepcopy(ref)
        art.backend = name
        art.gradients = {k: v.copy() for k, v in grads.items()}
        out.append(art)
    return out


def _dense_relu():  # type: ignore[no-untyped-def]
    spec = di.LazyModel([di.Dense(6), di.Activation("relu"), di.Dense(2)])
    ref = make_artifact(spec, "numpy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    grads = {k: np.ones_like(v) for k, v in ref.weights.items()}
    return ref, grads


def test_relu_input_across_its_kink_is_reported_not_compared() -> None:
    ref, grads = _dense_relu()
    pre = ref.intermediates["0"]
    assert list(ref.intermediates)[:2] == ["0", "1"] and np.array_equal(ref.intermediates["1"], np.maximum(pre, 0))
    a, b = _framework_copies(ref, grads)
    i = np.unravel_index(np.argmin(np.abs(pre)), pre.shape)
    b.intermediates["0"] = pre.copy()
    b.intermediates["0"][i] = -pre[i]  # fw_b's float32 sum landed on the other side of 0 (within the output's atol)
    b.gradients["0.bias"][i[1]] += 0.5  # ...so its gradient through that unit differs
    result = compare_artifacts([ref, a, b])
    assert result.results["fw_a"].grad_ok is None and result.results["fw_b"].grad_ok is None  # nothing compared
    assert result.results["fw_b"].grad_kink_crossings == ["fw_a (1 value, first at '0')"]
    assert not any("gradient of" in line and "differs from fw_" in line for line in result.failures())
    assert "not compared with fw_a" in str(result)
    # the same gradient gap without the crossing is a failure
    b.intermediates["0"] = pre.copy()
    result = compare_artifacts([ref, a, b])
    assert result.results["fw_b"].grad_ok is False and result.results["fw_b"].grad_kink_crossings == []
    assert any(line.startswith("fw_b: gradient of '0.bias' differs from fw_a's by 0.5") for line in result.failures())


def test_failure_names_the_entry_out_of_tolerance_not_the_largest_gap() -> None:
    ref, grads = _dense_relu()
    grads["2.weight"] = np.full_like(grads["2.weight"], 900.0)
    a, b = _framework_copies(ref, grads)
    b.gradients["2.weight"][0, 0] += 0.02      # 2e-5 relative: inside rtol 1e-3 (10 x the default)
    b.gradients["0.bias"][1] += 0.005          # 0.5% of 1: outside
    r = compare_artifacts([ref, a, b]).results["fw_b"]
    assert r.grad_ok is False and r.grad_worst == "0.bias" and np.isclose(r.grad_worst_error, 0.005, rtol=1e-3)
    assert np.isclose(r.grad_max_abs, 0.02, rtol=1e-3)  # the table's column still shows the largest gap


def test_max_pool_window_taking_another_entry_is_reported() -> None:
    spec = di.LazyModel([di.Conv2D(2, 1), di.MaxPool2D(2), di.Flatten(), di.Dense(1)])
    ref = make_artifact(spec, "numpy", np.random.default_rng(1).standard_normal((1, 1, 4, 4)).astype(np.float32))
    grads = {k: np.ones_like(v) for k, v in ref.weights.items()}
    a, b = _framework_copies(ref, grads)
    conv = ref.intermediates["0"].copy()
    window = conv[0, 0, :2, :2]
    hi = np.unravel_index(np.argmax(window), window.shape)
    lo = np.unravel_index(np.argmin(window), window.shape)
    conv[0, 0, lo[0], lo[1]] = window[hi] + 1e-7  # fw_b's window's max is now another entry (its output moves 1e-7)
    b.intermediates["0"] = conv
    b.gradients["0.weight"] += 0.5
    result = compare_artifacts([ref, a, b])
    assert result.results["fw_b"].grad_kink_crossings == ["fw_a (1 value, first at '1 (max-pool windows)')"]
    assert result.results["fw_b"].grad_ok is None
    # a change inside a window that leaves its max where it was is no crossing
    b.intermediates["0"] = ref.intermediates["0"].copy()
    b.intermediates["0"][0, 0, lo[0], lo[1]] -= 1.0
    assert compare_artifacts([ref, a, b]).results["fw_b"].grad_ok is False


def test_relu_right_after_a_max_pool_keeps_both_branch_records() -> None:
    # the pool's output feeds a ReLU: the pool's windows and the ReLU's sides are two records, and a crossing of either
    # is found (one record per path let the windows overwrite the sides, and a ReLU crossing passed as a failure)
    from deferinit.parity_branches import branches_of, kink_inputs

    spec = di.LazyModel([di.Conv2D(2, 1), di.MaxPool2D(2), di.Activation("relu"), di.Flatten(), di.Dense(1)])
    ref = make_artifact(spec, "numpy", np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32))
    pooled = ref.intermediates["1"]
    assert np.array_equal(ref.intermediates["2"], np.maximum(pooled, 0)) and (pooled < 0).any() and (pooled > 0).any()
    branches = branches_of(ref, kink_inputs(ref.intermediates), False)
    assert set(branches) == {"1", "1 (max-pool windows)"}
    np.testing.assert_array_equal(branches["1"][0], pooled > 0)  # the ReLU's sides, from the pool's own output
    assert branches["1 (max-pool windows)"].shape == (1, 2, 4, 4)  # the entry each window took
    grads = {k: np.ones_like(v) for k, v in ref.weights.items()}
    a, b = _framework_copies(ref, grads)
    i = np.unravel_index(np.argmin(np.abs(pooled)), pooled.shape)
    b.intermediates["1"] = pooled.copy()
    b.intermediates["1"][i] = -pooled[i]  # fw_b's pooled value on the other side of the ReLU's kink
    b.gradients["0.bias"][i[1]] += 0.5
    result = compare_artifacts([ref, a, b])
    assert result.results["fw_b"].grad_kink_crossings == ["fw_a (1 value, first at '1')"]
    assert result.results["fw_b"].grad_ok is None


def test_max_pool_windows_follow_padding_and_ceil_mode() -> None:
    # 5 x 5 input, window 3, stride 2, padding 1, ceil mode: PyTorch gives 3 x 3 windows; the look at the windows
    # must count the same, or it leaves the pool out
    from deferinit.parity_branches import _argmax_windows

    pool = di.MaxPool2D(3, stride=2, padding=1, ceil_mode=True)
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    taken = _argmax_windows(pool, x, channels_last=False)
    assert taken.shape == (1, 1, 3, 3)
    # ascending values: each window takes its bottom-right entry that lies inside the input (flattened 3 x 3 index)
    assert taken[0, 0, 0, 0] == 8 and taken[0, 0, 2, 2] == 4  # the last window: rows 3-5, cols 3-5 padded at 5


def test_branches_survive_a_file_that_samples_the_intermediates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the pool case above, as artifacts written to disk: fw_b's branches recorded from its full intermediates, the
    # file keeping only a sample of a 70,000-entry intermediate, and the comparison still finds the crossing
    from deferinit.parity import load_artifact, save_artifact
    from deferinit.parity_artifacts import INTER_SAMPLE
    from deferinit.parity_branches import branches_of, kink_inputs

    spec = di.LazyModel([di.Conv2D(70, 1), di.Activation("relu"), di.MaxPool2D(2), di.Flatten(), di.Dense(1)])
    ref = make_artifact(spec, "numpy", np.random.default_rng(1).standard_normal((1, 1, 32, 32)).astype(np.float32))
    assert ref.intermediates["0"].size == 70 * 32 * 32 > INTER_SAMPLE
    grads = {k: np.ones_like(v) for k, v in ref.weights.items()}
    a, b = _framework_copies(ref, grads)
    act = ref.intermediates["1"].copy()  # the pool's input
    c, i, j = next((c, i, j) for c in range(70) for i in range(0, 32, 2) for j in range(0, 32, 2)
                   if np.count_nonzero(act[0, c, i:i + 2, j:j + 2]) == 4)  # a window of four distinct positives
    window = act[0, c, i:i + 2, j:j + 2]
    hi = np.unravel_index(np.argmax(window), window.shape)
    lo = np.unravel_index(np.argmin(window), window.shape)
    act[0, c, i + lo[0], j + lo[1]] = window[hi] + 1e-7  # fw_b's window takes another entry
    b.intermediates["1"] = act
    b.gradients["0.weight"] += 0.5
    for art in (a, b):  # what make_artifact records for a framework's artifact
        art.branches, art.meta["branches"] = branches_of(art, kink_inputs(ref.intermediates), False), True
    assert b.branches["2 (max-pool windows)"].dtype.kind == "i" and b.branches["0"].dtype == bool  # pool entries; the ReLU's sides
    paths = [save_artifact(x, tmp_path / f"{x.backend}.npz") for x in (ref, a, b)]
    loaded = [load_artifact(p) for p in paths]
    assert loaded[0].intermediates["0"].shape == (1, 70, 32, 32)  # the reference keeps every value
    assert loaded[2].intermediates["0"].shape == (INTER_SAMPLE,)  # a framework's file a sample
    for name, arr in b.branches.items():
        np.testing.assert_array_equal(loaded[2].branches[name], arr)
    result = compare_artifacts(loaded)
    assert result.results["fw_b"].grad_kink_crossings == ["fw_a (1 value, first at '2 (max-pool windows)')"]
    # sampled intermediates are compared on the reference's same entries: a layer off everywhere is still named
    loaded[2].intermediates["0"] = loaded[2].intermediates["0"] + 1.0
    assert compare_artifacts(loaded).results["fw_b"].first_divergence == "0"
