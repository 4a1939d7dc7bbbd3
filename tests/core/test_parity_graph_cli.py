"""``deferinit parity`` on graph specs: ``--input`` once per input, in the order of the spec's ``inputs=``; the
inputs drawn for each ``di.Input`` (its dtype; ids below the table they index, ``valid_lens`` within the steps),
artifacts written and compared across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deferinit as di
from deferinit.parity import load_artifact
from deferinit.parity_artifacts import graph_inputs_for
from graph_cases import graph_case

RUN = [sys.executable, "-m", "deferinit", "parity"]


def _spec_file(tmp_path: Path, case: str) -> Path:
    spec, _ = graph_case(case)
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(spec.to_dict()))
    return path


def test_inputs_drawn_per_input() -> None:
    spec, _ = graph_case("graph_bert")  # vocabulary 30, token types 2, valid_lens
    ids, types, lens = graph_inputs_for(spec, [(64, 6), (64, 6), (64,)], seed=1)
    assert ids.dtype == types.dtype == lens.dtype == np.int64
    assert ids.min() >= 0 and ids.max() == 29 and set(np.unique(types)) == {0, 1}
    assert lens.min() >= 1 and lens.max() == 6  # 1..T: every row keeps at least one key
    image, side = graph_inputs_for(graph_case("graph_batchnorm")[0], [(2, 2, 5, 5), (2, 6)])
    assert image.dtype == side.dtype == np.float32 and image.shape == (2, 2, 5, 5) and side.shape == (2, 6)
    with pytest.raises(di.SpecError, match=r"expected 3 input shapes \(input_ids, token_type_ids, valid_lens\)"):
        graph_inputs_for(spec, [(2, 6)])


def test_cli_graph_spec_across_processes(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "graph_bert")
    ref, other = tmp_path / "ref.npz", tmp_path / "other.npz"
    proc = subprocess.run(RUN + ["run", str(path), "--backend", "numpy", "--input", "2,6", "--input", "2,6",
                                 "--input", "2", "--out", str(ref)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "output (2, 6, 8), (2, 8)" in proc.stdout  # BERT's sequence output and pooler
    art = load_artifact(ref)
    assert [x.shape for x in art.input] == [(2, 6), (2, 6), (2,)]
    subprocess.run(RUN + ["run", str(path), "--backend", "numpy", "--from", str(ref), "--out", str(other)], check=True)
    proc = subprocess.run(RUN + ["compare", str(ref), str(other)], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_cli_wrong_number_of_inputs_names_them(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "graph_two_inputs")
    for command in (["run", str(path), "--backend", "numpy", "--out", str(tmp_path / "x.npz")],
                    ["check", str(path), "--backends", "numpy"]):
        proc = subprocess.run(RUN + command + ["--input", "2,5"], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "expected one --input SHAPE per input of the graph spec (2: tokens, valid_lens" in proc.stderr
    assert not (tmp_path / "x.npz").exists()
    proc = subprocess.run(RUN + ["check", str(path), "--input", "2,5", "--input", "2", "--backends", "numpy"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "nothing was compared" in proc.stderr  # the reference alone is no pass


def test_cli_list_spec_takes_one_input(tmp_path: Path) -> None:
    spec = tmp_path / "mlp.json"
    spec.write_text(json.dumps(di.LazyModel([di.Dense(3)]).to_dict()))
    proc = subprocess.run(RUN + ["run", str(spec), "--backend", "numpy", "--input", "2,4", "--input", "2,4",
                                 "--out", str(tmp_path / "y.npz")], capture_output=True, text=True)
    assert proc.returncode == 2 and "expected one --input SHAPE for a list spec, received 2" in proc.stderr
