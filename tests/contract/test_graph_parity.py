"""parity() and the parity artifacts on graph specs: several inputs (a tuple) and several outputs (a tuple), in one
process and across processes (artifacts saved, read back and compared from their files). The reference's truth
for gradients is its own finite differences (parity_fd), which parity() runs on every framework's gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deferinit.parity import compare_artifacts, load_artifact, make_artifact, parity, save_artifact
from graph_cases import GRAPH_CASES, graph_case


@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_parity_on_graph_specs(backend: str, case: str) -> None:
    spec, xs = graph_case(case)
    if backend == "numpy":  # the reference alone compares nothing: that is no pass
        result = parity(spec, xs, backends=["numpy"])
        assert not result.passed and "nothing was compared" in result.failures()[0]
        return
    result = parity(spec, xs, backends=[backend])
    assert result.passed, "\n".join(result.failures())
    r = result.results[backend]
    assert r.init_identical is True and r.grad_fd_ok is True and r.grad_fd_error is not None
    if case == "graph_batchnorm":  # no dropout: the training-mode step (outputs and running statistics) compared
        assert r.train_ok is True and r.train_max_abs is not None


def test_training_step_artifacts_across_processes(backend: str, tmp_path: Path) -> None:
    spec, xs = graph_case("graph_batchnorm")
    ref = make_artifact(spec, "numpy", xs)
    assert isinstance(ref.train_output, tuple) and len(ref.train_output) == 2
    assert sorted(ref.train_state) == ["block.body.1.running_mean", "block.body.1.running_var", "bn.running_mean",
                                       "bn.running_var"]
    save_artifact(ref, tmp_path / "numpy.npz")
    back = load_artifact(tmp_path / "numpy.npz")
    for a, b in zip(back.train_output, ref.train_output):
        np.testing.assert_array_equal(a, b)
    if backend == "numpy":
        return
    art = make_artifact(spec, backend, source=back)
    save_artifact(art, tmp_path / f"{backend}.npz")
    result = compare_artifacts([tmp_path / "numpy.npz", tmp_path / f"{backend}.npz"])
    assert result.passed and result.results[backend].train_ok is True, "\n".join(result.failures())
    bad = load_artifact(tmp_path / f"{backend}.npz")
    bad.train_state = {**bad.train_state, "bn.running_var": bad.train_state["bn.running_var"] * 1.01}
    assert compare_artifacts([back, bad]).results[backend].train_ok is False  # a 1% error in one statistic: found


def test_multi_input_multi_output_artifacts_across_processes(backend: str, tmp_path: Path) -> None:
    spec, xs = graph_case("graph_two_inputs")
    ref = make_artifact(spec, "numpy", xs)
    assert isinstance(ref.input, tuple) and len(ref.input) == 2 and isinstance(ref.output, tuple)
    save_artifact(ref, tmp_path / "numpy.npz")
    back = load_artifact(tmp_path / "numpy.npz")
    assert back.report.input_shape == ((2, 5), (2,)) and back.report.output_shape == ((2, 5, 8), (2, 5, 8))
    for a, b in zip(back.input + back.output, ref.input + ref.output):
        np.testing.assert_array_equal(a, b)
    assert list(back.intermediates) == list(ref.intermediates)
    if backend == "numpy":
        return
    art = make_artifact(spec, backend, source=back)  # as another process would, from the file
    save_artifact(art, tmp_path / f"{backend}.npz")
    result = compare_artifacts([tmp_path / "numpy.npz", tmp_path / f"{backend}.npz"])
    assert result.passed, "\n".join(result.failures())
    bad = load_artifact(tmp_path / f"{backend}.npz")
    bad.output = (bad.output[0], bad.output[1] * 1.01)  # the second output off by 1%: found
    assert not compare_artifacts([back, bad]).results[backend].ok
