"""The command line: one report, one line of error, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deferinit.cli import main

pytestmark = pytest.mark.installed  # the CLI lists and uses the backends installed here

ROOT = Path(__file__).resolve().parents[2]


def test_shapes_table_and_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["shapes", str(ROOT / "examples" / "mlp.json"), "--input", "2,20"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 7,946" in out
    assert main(["shapes", str(ROOT / "examples" / "lenet.toml"), "--input", "1,1,28,28", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 61706 and data["output_shape"] == [1, 10]


def test_python_spec_forms(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mymodels.py").write_text(
        "import deferinit as di\nnet = di.LazyModel([di.Dense(3)])\ndef make():\n    return di.LazyModel([di.Dense(5)])\n")
    assert main(["shapes", "--python", f"{tmp_path / 'mymodels.py'}:net", "--input", "2,4"]) == 0
    assert "(2, 3)" in capsys.readouterr().out
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["shapes", "--python", "mymodels:make", "--input", "2,4", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["output_shape"] == [2, 5]
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("args,match", [
    (["shapes", "examples/nope.json", "--input", "2,20"], "expected a readable spec file"),
    (["shapes", "examples/mlp.json", "--input", "2,20", "--backend", "caffe"], "UnknownBackendError"),
    (["shapes", "examples/mlp.json", "--input", "2,20,7"], ""),  # Dense on rank 3 is fine
    (["shapes", "examples/lenet.toml", "--input", "1,3,4,4"], r"layer '2' \(Conv2D\) expected spatial size >= 5"),  # conv 0 pads by 2
    (["shapes", "--python", "os:path", "--input", "2"], "expected a deferinit.LazyModel"),
    (["shapes", "--python", "no_such_module_xyz:net", "--input", "2"], "importing it failed"),
])
def test_errors_are_one_line_exit_2(args: list, match: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "deferinit", *args], capture_output=True, text=True, cwd=ROOT)
    if not match:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    import re

    assert re.search(match, proc.stderr), proc.stderr


def test_backends_listing(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["numpy", "installed"]


def test_backend_option_on_every_backend(backend: str, capsys) -> None:  # type: ignore[no-untyped-def]
    import deferinit as di

    assert main(["shapes", str(ROOT / "examples" / "lenet.toml"), "--input", "1,1,28,28", "--backend", backend,
                 "--json"]) == 0
    report = di.ShapeReport.from_json(capsys.readouterr().out)
    assert report.backend == backend
    assert report.diff(di.infer_shapes(di.load_spec(ROOT / "examples" / "lenet.toml"), (1, 1, 28, 28))) == []
    assert main(["shapes", str(ROOT / "examples" / "zoo" / "gru_lm.json"), "--input", "2,7", "--dtype", "int64",
                 "--backend", backend]) == 0
    assert "(2, 7, 28)" in capsys.readouterr().out
