"""Spec construction, validation, immutability and serialization."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import deferinit as di
from cases import CASES

pytestmark = pytest.mark.installed  # available_backends() and the missing-framework errors see what is installed


@pytest.mark.parametrize("make,match", [
    (lambda: di.Dense(-3), r"Dense: units must be a positive integer. Received: units=-3"),
    (lambda: di.Dense(0), r"units=0"),
    (lambda: di.Dense(2.5), r"units=2.5"),
    (lambda: di.Dense(True), r"units=True"),
    (lambda: di.Dense(4, activation="swish"), r"activation must be one of .*Received: activation='swish'"),
    (lambda: di.Dense(4, use_bias="yes"), r"use_bias"),
    (lambda: di.Conv2D(6, 0), r"kernel_size"),
    (lambda: di.Conv2D(6, (3, 3, 3)), r"kernel_size"),
    (lambda: di.Conv2D(6, 3, stride=0), r"stride"),
    (lambda: di.Conv2D(6, 3, padding=-1), r"padding"),
    (lambda: di.Conv2D(6, 3, padding="full"), r"padding"),
    (lambda: di.Conv2D(6, 3, groups=4), r"groups must divide channels. Received: channels=6, groups=4"),
    (lambda: di.Conv2D(6, 3, groups=3, in_channels=4), r"groups must divide in_channels"),
    (lambda: di.MaxPool2D(2, padding=2), r"padding must be at most half of pool_size"),
    (lambda: di.Dropout(1.0), r"rate must be a number in \[0.0, 1.0\)"),
    (lambda: di.Dropout(-0.1), r"rate"),
    (lambda: di.BatchNorm(eps=0), r"eps"),
    (lambda: di.BatchNorm(momentum=1.5), r"momentum"),
    (lambda: di.Activation("nope"), r"activation"),
    (lambda: di.Embedding(0, 4), r"num_embeddings"),
    (lambda: di.LazyModel([di.Dense(2), "relu"]), r"layers\[1\] must be a deferinit layer"),
    (lambda: di.LazyModel(di.Dense(2)), r"layers must be a list of layers"),
    (lambda: di.LazyModel([di.Dense(2)], data_format="NCHW"), r"data_format"),
    (lambda: di.Concat([]), r"branches"),
    (lambda: di.Residual("x"), r"body"),
    (lambda: di.Dense(2, name="a.b"), r"name"),
    (lambda: di.LazyModel([di.Dense(2, name="x"), di.Dense(2, name="x")]), r"two layers would both be named 'x'"),
])
def test_invalid_specs_raise_spec_error(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(di.SpecError, match=match):
        make()


def test_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        di.Dense(-1)


def test_specs_are_immutable_and_keyword_only() -> None:
    layer = di.Dense(4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.units = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        di.Dense(4, "relu")  # type: ignore[misc]
    model = di.LazyModel([layer])
    assert isinstance(model.layers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.layers = ()  # type: ignore[misc]


def test_inference_does_not_touch_the_spec() -> None:
    spec = di.LazyModel([di.Dense(4), di.Dense(2)])
    before = spec.to_dict()
    di.infer_shapes(spec, (3, 7))
    m = di.compile(spec)
    m.apply_init(__import__("numpy").zeros((3, 7), "float32"))
    assert spec.to_dict() == before


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dict_round_trip(case) -> None:  # type: ignore[no-untyped-def]
    spec = case.make()
    data = spec.to_dict()
    json.dumps(data)  # plain data
    again = di.LazyModel.from_dict(json.loads(json.dumps(data)))
    assert again == spec and again.to_dict() == data
    assert di.infer_shapes(again, case.shape, dtype=case.dtype).diff(di.infer_shapes(spec, case.shape, dtype=case.dtype)) == []


def test_ties_survive_round_trip() -> None:
    shared = di.Dense(3)
    block = di.Sequential([di.Dense(3), di.ReLU()])
    spec = di.LazyModel([shared, block, shared, block])
    data = spec.to_dict()
    assert data["layers"][2] == {"ref": "0"} and data["layers"][3] == {"ref": "1"}
    again = di.LazyModel.from_dict(data)
    assert again.layers[0] is again.layers[2] and again.layers[1] is again.layers[3]
    untied = di.LazyModel([di.Dense(3), block, di.Dense(3), block])
    assert untied != spec  # equal layers are not tied layers


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_spec_files_round_trip(tmp_path, suffix: str, case) -> None:  # type: ignore[no-untyped-def]
    spec = case.make()
    path = di.save_spec(spec, tmp_path / f"model{suffix}")
    assert di.load_spec(path) == spec


@pytest.mark.parametrize("text,suffix,match", [
    ('{"layers": [{"type": "Dense", "units": 4, "colour": 1}]}', ".json", r"at '0': unknown key\(s\) 'colour'"),
    ('{"layers": [{"type": "Dense"}]}', ".json", r"at '0': Dense needs 'units'"),
    ('{"layers": [{"type": "Danse", "units": 4}]}', ".json", r"at '0': expected 'type' to be one of"),
    ('{"layers": [{"type": "Dense", "units": -4}]}', ".json", r"at '0': Dense: units must be a positive"),
    ('{"layers": [{"type": "Sequential", "layers": [{"type": "Conv2D", "channels": 4}]}]}', ".json",
     r"at '0.0': Conv2D needs 'kernel_size'"),
    ('{"layers": [{"type": "Dense", "units": 4}', ".json", r"spec.json:1:\d+: expected valid JSON"),
    ('{"format": "other", "layers": []}', ".json", r"expected format 'deferinit.spec'"),
    ('{"lay": []}', ".json", r"expected a 'layers' list"),
    ('[1, 2]', ".json", r"expected a mapping"),
    ('{"layers": [{"ref": "7"}]}', ".json", r"expected 'ref' to name an earlier layer path"),
    ('layers = [ { type = "Dense", units = 4 }', ".toml", r"expected valid TOML"),
    ('layers:\n  - type: Dense\n    units: [4\n', ".yaml", r"spec.yaml:\d+:\d+: expected valid YAML"),
    ('!!python/object/apply:os.system ["echo hacked"]\n', ".yaml", r"expected valid YAML"),
    ('{"layers": []}', ".txt", r"expected a .json, .toml or .yaml spec file"),
])
def test_malformed_spec_files(tmp_path, text: str, suffix: str, match: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    with pytest.raises(di.SpecError, match=match):
        di.load_spec(path)


def test_truncated_and_binary_spec_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = CASES[4].make()
    text = json.dumps(spec.to_dict())
    for cut in (1, len(text) // 3, len(text) - 1):
        path = tmp_path / "cut.json"
        path.write_text(text[:cut])
        with pytest.raises(di.SpecError, match="cut.json"):
            di.load_spec(path)
    bad = tmp_path / "bin.json"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(di.SpecError, match="UTF-8"):
        di.load_spec(bad)
    with pytest.raises(di.SpecError, match="readable"):
        di.load_spec(tmp_path / "missing.json")


def test_import_imports_no_framework_and_no_numpy() -> None:
    from deferinit.registry import framework_modules

    watched = (*framework_modules(), "numpy")
    assert {"torch", "tensorflow", "keras", "jax", "flax"} <= set(watched)  # the list is not empty by accident
    code = ("import sys, time; t = time.perf_counter(); import deferinit; dt = time.perf_counter() - t; "
            f"bad = [m for m in {watched!r} if m in sys.modules]; print(bad, dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]", out  # what an import costs is measured side by side in `nox -s bench`, not bounded here


def test_registry() -> None:
    from deferinit.registry import ALIASES, BUILTINS, framework_backends, resolve

    # the one list of backends and the requirements files CI installs from describe the same backends
    requirements = {p.stem for p in (Path(__file__).resolve().parents[2] / "backends").glob("*.txt")}
    assert set(framework_backends()) == requirements
    assert di.backends()[:len(BUILTINS)] == ["numpy", *framework_backends()]
    assert "numpy" in di.available_backends()
    assert [resolve(a) for a in ("pytorch", "tf", "keras", "flax", "TORCH")] == [
        "torch", "tensorflow", "tensorflow", "jax", "torch"]
    assert all(resolve(alias) == name for alias, name in ALIASES.items())
    assert all(resolve(name.upper()) == name for name in BUILTINS)
    with pytest.raises(di.UnknownBackendError, match=r"expected one of numpy, torch.*received 'caffe'"):
        di.compile(di.LazyModel([di.Dense(2)]), "caffe")
    with pytest.raises(di.SpecError, match="expected a deferinit.LazyModel"):
        di.compile([di.Dense(2)], "numpy")  # type: ignore[arg-type]


def test_missing_framework_says_how_to_install(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    from deferinit import registry

    backend = registry.framework_backends()[-1]  # any framework backend will do: the last one registered
    _, packages, extra, aliases = registry.BUILTINS[backend]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else real(name, *a))
    assert backend not in di.available_backends()
    with pytest.raises(di.BackendUnavailableError, match=rf"pip install 'deferinit\[{extra}\]'"):
        registry.load_backend(backend)
    with pytest.raises(ImportError):
        di.compile(di.LazyModel([di.Dense(2)]), aliases[0] if aliases else backend)
