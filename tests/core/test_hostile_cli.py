"""The command line against hostile and careless use: file names that look like code, usage mistakes, closed
pipes, user-side failures, varying dims, big models; and the report table's depth, memory and footnote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import deferinit as di
from deferinit.cli import main
from isolated import ROOT, run_isolated

MLP = ROOT / "examples" / "mlp.json"  # Dense(256), Dense(10) on 20 features
MLP_PARAMS = 20 * 256 + 256 + 256 * 10 + 10  # 7,946
MARKER_CODE = "import pathlib\npathlib.Path(__file__).with_name('MARKER').write_text('ran')\n"


def cli(*args: str, cwd: Path | None = None, timeout: float = 120, memory_mib: int | None = 4096):  # type: ignore[no-untyped-def]
    return run_isolated("", args=["-m", "deferinit", *args], cwd=cwd, timeout=timeout, memory_mib=memory_mib)


def one_error_line(proc, pattern: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert "please report" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------- 16.1 code from a name
@pytest.fixture
def evil_dir(tmp_path: Path) -> Path:
    """A spec file whose name reads as module:attr, beside the module it names, which would leave a marker."""
    (tmp_path / "evil.py").write_text(MARKER_CODE + "spec = None\n")
    (tmp_path / "evil:spec.json").write_text(MLP.read_text())
    return tmp_path


def test_existing_file_with_a_colon_is_read_as_data(evil_dir: Path) -> None:
    proc = cli("shapes", "evil:spec.json", "--input", "2,20", cwd=evil_dir)
    assert proc.returncode == 0, proc.stderr
    assert f"Total params: {MLP_PARAMS:,}" in proc.stdout
    out = evil_dir / "art.npz"
    proc = cli("parity", "run", "evil:spec.json", "--backend", "numpy", "--input", "2,20", "--out", str(out), cwd=evil_dir)
    assert proc.returncode == 0 and out.is_file(), proc.stderr
    proc = cli("parity", "check", "evil:spec.json", "--input", "2,20", "--backends", "numpy", cwd=evil_dir)
    assert "nothing was compared" in proc.stderr, proc.stderr  # the spec loaded; numpy alone compares nothing
    assert not (evil_dir / "MARKER").exists()


@pytest.mark.parametrize("command", [["shapes"], ["parity", "check"], ["parity", "run"]])
def test_module_attr_is_imported_only_when_asked(evil_dir: Path, command: list) -> None:
    extra = ["--backend", "numpy", "--out", "x.npz"] if command[-1] == "run" else []
    proc = cli(*command, "evil:spec", "--input", "2,20", *extra, cwd=evil_dir)
    one_error_line(proc, r"SpecError: evil:spec: .*does not exist.*--python evil:spec")
    assert not (evil_dir / "MARKER").exists()
    proc = cli(*command, "--python", "evil:spec", "--input", "2,20", *extra, cwd=evil_dir)
    one_error_line(proc, r"evil:spec: expected a deferinit.LazyModel, received NoneType")
    assert (evil_dir / "MARKER").read_text() == "ran"  # asked for explicitly: the code ran


def test_spec_and_python_together_or_neither_is_a_usage_error() -> None:
    for args in (["shapes", str(MLP), "--python", "m:net", "--input", "2,20"], ["shapes", "--input", "2,20"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "usage: deferinit shapes" in proc.stderr, proc.stderr
        assert "deferinit shapes: error: expected a SPEC file" in proc.stderr


# ---------------------------------------------------------------------------------------- 15.4 the CLI's manners
def test_version() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"deferinit {version}", proc.stdout + proc.stderr


@pytest.mark.parametrize("args,message", [
    (["frobnicate"], r"deferinit: error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["shapes", str(MLP)], r"deferinit shapes: error: the following arguments are required: --input"),
    (["shapes", str(MLP), "--input", "2,30x"], r"deferinit shapes: error: argument --input: expected comma-separated"),
    (["shapes", str(MLP), "--input", "2,20", "--depth", "0"], r"argument --depth: expected a positive integer"),
    (["shapes", str(MLP), "--input", "2,20", "--depth", "1", "--json"], r"--depth applies to the table"),
    (["parity", "run", str(MLP), "--backend", "numpy", "--out", "x.npz"], r"expected --input SHAPE or --from"),
])
def test_usage_errors_speak_argparse(args: list, message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: deferinit"), proc.stderr
    assert re.search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr
    assert "SpecError" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("form", [["--input", "-1,20"], ["--input=-1,20"]])
def test_negative_dim_reaches_the_shape_check(form: list) -> None:
    proc = cli("shapes", str(MLP), *form)
    one_error_line(proc, r"ShapeMismatchError: the model input expected every dim to be a positive integer or None, "
                         r"received shape \(-1, 20\)")


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # 800 Dense layers: a table of ~160 kB, more than a pipe holds (64 kB) plus stdout's buffer (8 kB)
    di.save_spec(di.LazyModel([di.Dense(8) for _ in range(800)]), tmp_path / "deep.json")
    reader = f"""
import subprocess, sys
p = subprocess.Popen([sys.executable, "-m", "deferinit", "shapes", {str(tmp_path / 'deep.json')!r}, "--input", "2,8"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
p.stdout.read(10)
p.stdout.close()  # what `| head -c 10` does
err = p.stderr.read().decode()
print(p.wait()); print(repr(err))
"""
    proc = run_isolated(reader, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, err = proc.stdout.splitlines()
    assert (int(rc), err) == (141, "''")  # 128 + SIGPIPE, as a shell shows a reader that went away; nothing said


def test_token_model_gets_int64_or_a_hint() -> None:
    spec_file = ROOT / "examples" / "zoo" / "gru_lm.json"
    first = json.loads(spec_file.read_text())["layers"][0]
    assert first["type"] in ("Embedding", "OneHot")  # takes token ids
    proc = cli("shapes", str(spec_file), "--input", "2,7")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("ShapeReport(backend=numpy, input=(2, 7) int64")
    proc = cli("shapes", str(spec_file), "--input", "2,7", "--dtype", "float32")
    one_error_line(proc, r"DTypeError: layer '0' \(\w+\) expected integer .*received float.*pass --dtype int64")
    proc = cli("shapes", str(MLP), "--input", "2,20", "--dtype", "int64")
    one_error_line(proc, r"DTypeError: .*expected floating-point.*pass --dtype float32")


# ---------------------------------------------------------------------------------------- 16.11 user-side failures
def test_user_side_failures_are_one_plain_line(tmp_path: Path) -> None:
    one_error_line(cli("shapes", str(tmp_path / "nope.json"), "--input", "2,20"), r"nope.json: .*(No such file|does not exist)")
    one_error_line(cli("shapes", str(tmp_path), "--input", "2,20"), rf"{re.escape(str(tmp_path))}: .*(?i:directory)")
    (tmp_path / "bad.json").write_bytes(b'{"layers": ["\xff\xfe"]}')
    one_error_line(cli("shapes", str(tmp_path / "bad.json"), "--input", "2,20"), r"bad.json: expected UTF-8")
    (tmp_path / "afile").write_text("")
    proc = cli("parity", "run", str(MLP), "--backend", "numpy", "--input", "2,20", "--out",
               str(tmp_path / "afile" / "x.npz"))
    one_error_line(proc, r"afile")  # a directory that is a file: the OS's reason, one line


@pytest.mark.parametrize("exc,pattern,status", [
    (PermissionError(13, "Permission denied", "spec.json"), r"^deferinit: error: .*spec.json.*Permission denied$", 2),
    (MemoryError(), r"^deferinit: error: out of memory \(MemoryError\)", 2),
    (TypeError("boom"), r"^deferinit: internal error: TypeError: boom \(a bug in deferinit: please report it", 70),
])
def test_failure_kinds_are_told_apart(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                      exc: BaseException, pattern: str, status: int) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    import deferinit.serialize

    monkeypatch.setattr(deferinit.serialize, "load_spec", fail)  # what the CLI calls to read a SPEC file
    assert main(["shapes", str(MLP), "--input", "2,20"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(pattern, err.strip()), err
    assert ("unexpected" not in err) and (("please report" in err) == (status == 70))


# ---------------------------------------------------------------------------------------- 15.3 None and abstract
def _json_report(proc) -> di.ShapeReport:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    return di.ShapeReport.from_json(proc.stdout)


@pytest.mark.parametrize("spec_name,shape,dtype,concrete", [
    ("gru_lm", (2, None), "int64", False),
    ("vit", (None, 3, 96, 96), "float32", False),
    ("transformer_encoder", (None, None), "int64", False),
    ("nin", (None, 1, None, None), "float32", True),  # a dry run on data: 1x1 would not fit an 11x11 kernel
])
def test_none_dims_stay_none(backend: str, spec_name: str, shape: tuple, dtype: str, concrete: bool,
                             capsys: pytest.CaptureFixture) -> None:
    spec_file = ROOT / "examples" / "zoo" / f"{spec_name}.json"
    text = ",".join("None" if d is None else str(d) for d in shape)
    code = main(["shapes", str(spec_file), "--input", text, "--dtype", dtype, "--backend", backend, "--json",
                 *(["--concrete"] if concrete else [])])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = di.ShapeReport.from_json(out)
    assert report.backend == backend and report.input_shape == shape
    assert report.diff(di.infer_shapes(di.load_spec(spec_file), shape, dtype=dtype)) == []


def test_none_dims_in_apply_init(backend: str) -> None:
    # what the CLI relies on: a ShapeDtype with varying dims, abstract or concrete, keeps them varying
    spec = di.load_spec(ROOT / "examples" / "zoo" / "lstm_lm.json")
    for abstract in (True, False):
        report = di.compile(spec, backend).apply_init(di.ShapeDtype((None, None), "int64"), abstract=abstract)
        assert report.input_shape == (None, None) and report.output_shape == (None, None, 28)


def test_shapes_of_a_big_model_allocate_nothing(backend: str, tmp_path: Path) -> None:
    # 2 x (32768 x 32768) weights: 8 GiB of float32, under a 4 GiB heap cap
    di.save_spec(di.LazyModel([di.Dense(32768), di.Dense(32768)]), tmp_path / "big.json")
    proc = cli("shapes", str(tmp_path / "big.json"), "--input", "None,32768", "--backend", backend, "--json",
               memory_mib=4096, timeout=240)
    report = _json_report(proc)
    assert report.total_params == 2 * (32768 * 32768 + 32768) and report.input_shape == (None, 32768)


# ---------------------------------------------------------------------------------------- 15.13 the table
@pytest.fixture
def nested() -> di.ShapeReport:
    spec = di.LazyModel([di.Sequential([di.Dense(3), di.Sequential([di.Dense(4), di.BatchNorm()])]), di.Dense(2)])
    return di.infer_shapes(spec, (2, 5))


def _row(text: str, start: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith(start + " ")).split()


def test_table_memory_column_and_total(nested: di.ShapeReport) -> None:
    text = nested.table()
    assert text == str(nested)
    assert text.splitlines()[1].split() == ["layer", "type", "output", "shape", "param", "shape", "count", "memory",
                                            "native"]
    # Dense(3) on 5 features: weight (3, 5), 15 float32 = 60 bytes
    assert _row(text, "0.0")[:9] == ["0.0", "Dense", "(2,", "3)", "weight", "(3,", "5)", "15", "60"]
    # 5*3+3 + 3*4+4 + 4*4 (BN: 2 trainable, 2 running) + 4*2+2 = 18 + 16 + 16 + 10 = 60 params, 240 bytes
    assert "Total params: 60 (trainable 52, non-trainable 8)" in text
    assert "Params memory: 240 B (trainable 208 B, non-trainable 32 B)" in text
    half = di.ShapeReport.from_dict({**nested.to_dict(), "params": {
        n: {**p, "dtype": "float16"} for n, p in nested.to_dict()["params"].items()}})
    assert "Params memory: 120 B" in half.table()


def test_table_depth(nested: di.ShapeReport) -> None:
    one = nested.table(depth=1)
    assert [line.split()[0] for line in one.splitlines()[3:5]] == ["0", "1"]
    assert _row(one, "0")[:6] == ["0", "Sequential", "(2,", "4)", "(8", "nested)"]
    assert _row(one, "0")[6:8] == ["50", "200"]  # 18 + 16 + 16 params below, 4 bytes each
    two = nested.table(depth=2)
    assert _row(two, "0.1")[4:8] == ["(6", "nested)", "32", "128"]  # Dense(4) 16 + BatchNorm 16
    assert "0.1.0" not in two and "0.1.0" in nested.table(depth=3)
    assert one.splitlines()[-3:] == nested.table().splitlines()[-3:]  # the totals never depend on depth
    for bad in (0, -1, 1.5, True):
        with pytest.raises(di.SpecError, match="depth"):
            nested.table(depth=bad)  # type: ignore[arg-type]


def test_cli_depth(capsys: pytest.CaptureFixture) -> None:
    assert main(["shapes", str(ROOT / "examples" / "zoo" / "resnet18.json"), "--input", "1,1,96,96", "--depth", "1"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:] if line and not line[0].isspace()]
    assert rows[:7] == ["0", "1", "2", "3", "4", "5", "6"] and not any("." in r for r in rows[:7])


def test_reference_marker_is_explained(nested: di.ShapeReport) -> None:
    assert nested.table().splitlines()[-1].startswith("[reference]: the numpy backend is the reference itself")
    native = {n: {**p, "source": "native"} for n, p in nested.to_dict()["params"].items()}
    plain = di.ShapeReport.from_dict({**nested.to_dict(), "backend": "tensorflow", "params": native})
    assert "[reference]" not in plain.table()
    native["0.0.weight"]["source"] = "reference"
    one = di.ShapeReport.from_dict({**nested.to_dict(), "backend": "torch", "params": native})
    assert one.table().count("[reference]") == 2 and "torch has no deferred (lazy) form" in one.table()


def test_json_contract_is_unchanged(nested: di.ShapeReport) -> None:
    data = nested.to_dict()
    assert set(data) == {"format", "version", "backend", "input_shape", "input_dtype", "data_format", "output_shape",
                         "total_params", "trainable_params", "params", "layers"}
    assert set(data["params"]["0.0.weight"]) == {"shape", "dtype", "trainable", "native_name", "native_shape", "source"}
    assert di.ShapeReport.from_json(nested.to_json()) == nested

