"""Hostile specs: spec files that never end or expand without bound, ties by name, names that break one framework,
nesting that would exhaust Python's stack, absurd integers, and the round trips of every short form.

The truth is independent of the code under test: outputs are computed by hand from the exported weights, limits
are the documented constants, and anything that could hang or allocate without bound runs in a child process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deferinit as di
from isolated import run_isolated

X = np.random.default_rng(7).standard_normal((2, 4)).astype(np.float32)


def max_depth() -> int:
    from deferinit.spec import MAX_DEPTH

    return MAX_DEPTH


def to_numpy(model: di.CompiledModel, y: Any) -> np.ndarray:
    return model.to_numpy(y) if hasattr(model, "to_numpy") else np.asarray(y)


def dense(w: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def refused(code: str, *, timeout: float = 60, memory_mib: int = 1024) -> str:
    """Run ``code`` (which calls di.load_spec) in a child: it must end by itself with a SpecError, not hang,
    exhaust memory or raise anything else. Returns the error's text."""
    proc = run_isolated("import deferinit as di\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines())
                        + "except di.SpecError as exc:\n    print('SpecError:', exc)\n", timeout=timeout,
                        memory_mib=memory_mib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("SpecError:"), proc.stdout[-2000:]
    return proc.stdout


# ============================================================================ 16.3: bounded spec files
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    out = refused(f"di.load_spec({str(fifo)!r})", timeout=30)
    assert "FIFO" in out and str(fifo) in out


def test_a_link_to_dev_zero_is_refused_before_reading(tmp_path: Path) -> None:
    link = tmp_path / "spec.json"
    link.symlink_to("/dev/zero")
    out = refused(f"di.load_spec({str(link)!r})", memory_mib=512)
    assert "character device" in out and str(link) in out


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spec.json").mkdir()
    with pytest.raises(di.SpecError, match=r"spec\.json: expected a regular spec file, received a directory"):
        di.load_spec(tmp_path / "spec.json")


def test_spec_files_over_the_size_limit_are_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deferinit import spec_files

    limit = spec_files.MAX_SPEC_BYTES
    assert limit == 4 * 2**20  # the documented default
    text = json.dumps(di.LazyModel([di.Dense(3)]).to_dict())
    at = tmp_path / "at.json"
    at.write_text(text + " " * (limit - len(text)))  # exactly at the limit: read
    assert at.stat().st_size == limit and di.load_spec(at) == di.LazyModel([di.Dense(3)])
    over = tmp_path / "over.json"
    over.write_text(text + " " * (limit - len(text) + 1))
    with pytest.raises(di.SpecError, match=rf"over\.json: expected a spec file of at most {limit:,} bytes .*received "
                                           rf"{limit + 1:,} bytes"):
        di.load_spec(over)
    monkeypatch.setattr(spec_files, "MAX_SPEC_BYTES", 100)  # configurable: read at every call
    with pytest.raises(di.SpecError, match=r"at most 100 bytes"):
        di.load_spec(at)


def test_a_huge_sparse_spec_costs_nothing(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(2**30)  # 1 GiB of holes: reading it whole would take the child's 256 MiB and more
    out = refused(f"di.load_spec({str(big)!r})", timeout=30, memory_mib=256)
    assert "1,073,741,824 bytes" in out


LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\nlayers: [*i]\n"
# two aliases a level: 31 levels stand for 2**31 values with fewer aliases than the limit
DOUBLING = "\n".join(["l0: &l0 [{type: Dense, units: 1}]"] + [
    f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 31)]) + "\nlayers: *l30\n"


@pytest.mark.parametrize("text,match", [
    (LAUGHS, "at most 64 YAML aliases"),
    (DOUBLING, "at most 1,000,000 values"),
    ("layers: [&a {type: Sequential, layers: [*a]}]\n", "a collection that contains itself"),
], ids=["billion-laughs", "doubling", "self-reference"])
def test_yaml_aliases_are_bounded(tmp_path: Path, text: str, match: str) -> None:
    import yaml  # noqa: F401  (pyyaml is a test dependency of every session: missing is a failure)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert len(text.encode()) < 1200
    out = refused(f"di.load_spec({str(path)!r})", timeout=60, memory_mib=1024)
    assert match in out and "bomb.yaml" in out


def test_python_data_sharing_one_dict_is_bounded_too() -> None:
    code = """
layer = {"type": "Dense", "units": 1}
for _ in range(30):
    layer = {"type": "Sequential", "layers": [layer, layer]}  # 2**30 Dense layers once expanded
di.LazyModel.from_dict({"layers": [layer]})
"""
    assert "at most 1,000,000 values" in refused(code, timeout=60)


def test_yaml_anchors_for_repeated_settings_still_load(tmp_path: Path) -> None:
    import yaml  # noqa: F401  (pyyaml is a test dependency of every session: missing is a failure)
    path = tmp_path / "anchors.yaml"
    path.write_text("layers:\n  - &conv {type: Conv2D, channels: 4, kernel_size: 3, padding: 1}\n  - *conv\n"
                    "  - {<<: *conv, channels: 8}\n")
    spec = di.load_spec(path)
    conv = dict(kernel_size=3, padding=1)
    assert spec == di.LazyModel([di.Conv2D(4, **conv), di.Conv2D(4, **conv), di.Conv2D(8, **conv)])
    assert spec.layers[0] is not spec.layers[1]  # an alias repeats settings; only {ref: ...} ties


# ============================================================================ 16.7: a named layer used twice
def named_tie() -> tuple[di.LazyModel, di.Dense]:
    a = di.Dense(4, name="a")
    return di.LazyModel([a, di.Sequential([a]), a, di.Dense(3)]), a


def test_a_named_tie_round_trips_through_dicts_and_files(tmp_path: Path) -> None:
    spec, _ = named_tie()
    data = spec.to_dict()
    assert data["layers"][1:3] == [{"type": "Sequential", "layers": [{"ref": "a"}]}, {"ref": "a"}]
    again = di.LazyModel.from_dict(data)
    assert again == spec and hash(again) == hash(spec)
    assert again.layers[0] is again.layers[1].layers[0] is again.layers[2]
    for suffix in (".json", ".yaml", ".toml"):
        loaded = di.load_spec(di.save_spec(spec, tmp_path / f"tie{suffix}"))
        assert loaded == spec and loaded.layers[0] is loaded.layers[2], suffix


def test_a_ref_to_a_named_layer_loads_and_saves_again(tmp_path: Path) -> None:
    data = {"layers": [{"type": "Dense", "units": 4, "name": "a"}, {"ref": "a"}]}
    spec = di.LazyModel.from_dict(data)
    assert spec.layers[0] is spec.layers[1]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(di.LazyModel.from_dict(data).to_dict()))
    assert di.load_spec(path).to_dict()["layers"] == data["layers"]


def test_every_position_of_a_named_tie_is_in_the_report() -> None:
    spec, _ = named_tie()
    report = di.infer_shapes(spec, (2, 4))
    assert list(report.layers) == ["a", "1", "1.a", "2", "3"]
    assert [report.layers[p].tied_to for p in ("a", "1.a", "2")] == [None, "a", "a"]
    assert all(report.layers[p].output_shape == (2, 4) for p in ("a", "1", "1.a", "2"))
    assert sorted(report.params) == ["3.bias", "3.weight", "a.bias", "a.weight"]


def test_a_named_tie_initializes_and_runs_on_every_backend(backend: str) -> None:
    spec, _ = named_tie()
    model = di.compile(spec, backend)
    report = model.apply_init(X, key=0)
    assert list(report.layers) == ["a", "1", "1.a", "2", "3"]
    w = model.export_weights()
    assert sorted(w) == ["3.bias", "3.weight", "a.bias", "a.weight"]
    want = dense(w, "3", dense(w, "a", dense(w, "a", dense(w, "a", X))))  # a three times, then 3
    np.testing.assert_allclose(to_numpy(model, model(X)), want, rtol=1e-5, atol=1e-5)


# ============================================================================ 16.8: names that broke one backend
@pytest.mark.parametrize("make", [
    lambda: di.LazyModel([di.Dense(4, name="params"), di.Dense(3)]),             # Flax: {'params': {'params': ...}}
    lambda: di.LazyModel([di.Sequential([di.Dense(4)], name="params"), di.Dense(3, name="_")]),
    lambda: di.LazyModel([di.Dense(4), di.Dense(3)], name="_m"),                 # TensorFlow: a root scope '_m'
    lambda: di.LazyModel([di.Dense(4, name="_"), di.Dense(3)], name="_"),
], ids=["params-leaf", "params-block", "model-_m", "model-_"])
def test_valid_names_work_on_every_backend(backend: str, make: Any) -> None:
    spec = make()
    model = di.compile(spec, backend)
    report = model.apply_init(X, key=0)
    w = model.export_weights()
    paths = [n[:-len(".weight")] for n in report.params if n.endswith(".weight")]  # in layer order
    want = dense(w, paths[1], dense(w, paths[0], X))
    np.testing.assert_allclose(to_numpy(model, model(X)), want, rtol=1e-5, atol=1e-5)
    again = di.compile(spec, backend)
    again.load_weights(w, input_shape=X.shape)
    np.testing.assert_allclose(to_numpy(again, again(X)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["a\n", "a\nb", "1a", "a.b", "", "-a", "a b"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(di.SpecError, match=r"name must be None or a string of letters"):
        di.Dense(2, name=name)


# ============================================================================ 16.9: nesting depth
KINDS = (lambda x: di.Sequential([x]), lambda x: di.Residual(x), lambda x: di.Concat([x]))


def nested(levels: int) -> Any:
    """``levels`` containers (Sequential, Residual, Concat in turn) around one Dense(4)."""
    layer: Any = di.Dense(4)
    for i in range(levels):
        layer = KINDS[i % 3](layer)
    return layer


def nested_dict(levels: int) -> dict:
    layer: dict = {"type": "Dense", "units": 4}
    for _ in range(levels):
        layer = {"type": "Sequential", "layers": [layer]}
    return {"layers": [layer]}


def test_python_specs_nest_at_most_max_depth() -> None:
    limit = max_depth()
    assert limit == 64
    spec = di.LazyModel([nested(limit - 1)])  # the LazyModel is the 64th container
    with pytest.raises(di.SpecError, match=rf"nested at most {limit} deep .*Received: a LazyModel whose layers nest "
                                           rf"{limit + 1} containers deep"):
        di.LazyModel([nested(limit)])
    with pytest.raises(di.SpecError, match=r"nest 65 containers deep"):
        di.Sequential([spec])
    with pytest.raises(di.SpecError, match=r"nest 65 containers deep"):
        di.Residual(spec)


def test_every_walk_works_at_the_limit(tmp_path: Path) -> None:
    spec = di.LazyModel([nested(max_depth() - 1)])
    report = di.infer_shapes(spec, (2, 4))
    assert report.output_shape == (2, 4) and len(report.layers) == max_depth()
    data = spec.to_dict()
    assert di.LazyModel.from_dict(data) == spec and hash(di.LazyModel.from_dict(data)) == hash(spec)
    for suffix in (".json", ".yaml", ".toml"):
        assert di.load_spec(di.save_spec(spec, tmp_path / f"deep{suffix}")) == spec, suffix


@pytest.mark.parametrize("levels", [64, 500])
def test_spec_data_nested_too_deep_is_refused_at_its_position(levels: int) -> None:
    data = nested_dict(levels)  # a LazyModel around `levels` Sequentials
    with pytest.raises(di.SpecError, match=r"spec at '0(\.0){63}': expected containers nested at most 64 deep "
                                           r".*received a Sequential at depth 65"):
        di.LazyModel.from_dict(data)
    assert di.LazyModel.from_dict(nested_dict(63)).to_dict()["layers"] == nested_dict(63)["layers"]


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_spec_files_nested_deeper_than_any_parser_can_go_are_refused(tmp_path: Path, suffix: str) -> None:
    if suffix == ".yaml":
        import yaml  # noqa: F401  (pyyaml is a test dependency of every session: missing is a failure)
    n = 100_000
    body = "[" * n + "]" * n
    text = {".json": '{"layers": ' + body + "}", ".yaml": "layers: " + body + "\n", ".toml": "layers = " + body + "\n"}
    path = tmp_path / f"deep{suffix}"
    path.write_text(text[suffix])
    out = refused(f"di.load_spec({str(path)!r})", timeout=60)
    assert "nested" in out and str(path) in out


def test_a_500_level_spec_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    n = 500  # too deep for json.dumps to write: built as text
    path.write_text('{"layers": [' + '{"type": "Sequential", "layers": [' * n + '{"type": "Dense", "units": 4}'
                    + "]}" * n + "]}")
    with pytest.raises(di.SpecError, match=r"deep\.json: expected JSON nested at most a few hundred levels deep \(a "
                                           r"spec's containers nest at most 64 deep\)"):
        di.load_spec(path)
    path.write_text(json.dumps(nested_dict(200)))  # within what json reads: refused at the 65th container
    with pytest.raises(di.SpecError, match=r"deep\.json at '0(\.0){63}': expected containers nested at most 64"):
        di.load_spec(path)


def test_the_deepest_spec_initializes_and_runs_on_every_backend(backend: str) -> None:
    levels = max_depth() - 1
    model = di.compile(di.LazyModel([nested(levels)]), backend)
    model.apply_init(X, key=0)
    w = model.export_weights()
    (name,) = {n.rsplit(".", 1)[0] for n in w}
    residuals = sum(1 for i in range(levels) if i % 3 == 1)  # each adds its input, the same X at every level
    want = dense(w, name, X) + residuals * X
    np.testing.assert_allclose(to_numpy(model, model(X)), want, rtol=1e-4, atol=1e-4)
    if backend != "numpy":  # the reference backend has no gradients; the frameworks' backward passes recurse too
        model.gradients(X)


# ============================================================================ 16.11: integers no framework holds
HUGE = 10**5000


@pytest.mark.parametrize("make", [
    lambda: di.Dense(HUGE), lambda: di.Dense(2**63), lambda: di.Conv2D(4, HUGE), lambda: di.Conv2D(4, 3, padding=(1, HUGE)),
    lambda: di.MaxPool2D(2, stride=HUGE), lambda: di.Embedding(HUGE, 2), lambda: di.LSTM(4, num_layers=HUGE),
    lambda: di.Reshape((HUGE,)), lambda: di.Permute((HUGE,)), lambda: di.Take(HUGE),
    lambda: di.Dense(4, use_bias=HUGE), lambda: di.BatchNorm(eps=10**400), lambda: di.Scale(10**400),
    lambda: di.Dropout(-HUGE),
], ids=["dense", "dense-2**63", "conv-kernel", "conv-padding", "pool-stride", "embedding", "lstm-layers", "reshape",
        "permute", "take", "use-bias", "eps", "scale", "dropout"])
def test_absurd_integers_are_spec_errors(make: Any) -> None:
    with pytest.raises(di.SpecError) as info:
        make()
    text = str(info.value)
    assert "Received:" in text and len(text) < 400  # no 5,000 digits (nor Python's refusal to print them)


def test_the_largest_size_is_accepted() -> None:
    assert di.Dense(2**63 - 1).units == 2**63 - 1
    assert di.infer_shapes(di.LazyModel([di.Dense(2**62)]), (1, 2)).params["0.weight"].shape == (2**62, 2)


@pytest.mark.parametrize("suffix,text", [
    (".json", '{"layers": [{"type": "Dense", "units": 1' + "0" * 5000 + "}]}"),
    (".yaml", "layers: [{type: Dense, units: 1" + "0" * 5000 + "}]\n"),
    (".toml", '[[layers]]\ntype = "Dense"\nunits = 1' + "0" * 5000 + "\n"),
])
def test_spec_files_with_huge_integers_are_spec_errors(tmp_path: Path, suffix: str, text: str) -> None:
    if suffix == ".yaml":
        import yaml  # noqa: F401  (pyyaml is a test dependency of every session: missing is a failure)
    path = tmp_path / f"huge{suffix}"
    path.write_text(text)
    with pytest.raises(di.SpecError, match=r"huge\.(json|yaml|toml)"):
        di.load_spec(path)
    path.write_text(text.replace("1" + "0" * 5000, str(2**64)))  # readable, but no framework holds it
    with pytest.raises(di.SpecError, match=r"units must be at most 2\*\*63 - 1"):
        di.load_spec(path)


# ============================================================================ 15.4: did you mean
@pytest.mark.parametrize("kind,hint", [("Dens", "'Dense'"), ("conv2d", "'Conv2D'"), ("BatchNorm2d", "'BatchNorm'"),
                                       ("LTSM", "'LSTM'")])
def test_a_mistyped_layer_type_suggests_the_nearest(kind: str, hint: str) -> None:
    with pytest.raises(di.SpecError, match=rf"received '{kind}'; did you mean {hint}"):
        di.LazyModel.from_dict({"layers": [{"type": kind, "units": 4}]})


def test_no_suggestion_for_a_type_like_no_other() -> None:
    with pytest.raises(di.SpecError) as info:
        di.LazyModel.from_dict({"layers": [{"type": "Quux", "units": 4}]})
    assert "did you mean" not in str(info.value) and "received 'Quux'" in str(info.value)


# ============================================================================ 15.7 and the dtype default
def test_infer_shapes_takes_an_array_for_its_shape_and_dtype() -> None:
    spec = di.LazyModel([di.Dense(3)])
    report = di.infer_shapes(spec, np.zeros((2, 5), np.float64))
    assert report.input_shape == (2, 5) and report.input_dtype == "float64"
    assert report.params["0.weight"].shape == (3, 5)
    tokens = di.LazyModel([di.Embedding(10, 4)])
    assert di.infer_shapes(tokens, np.zeros((2, 7), np.int32)).output_shape == (2, 7, 4)
    assert di.infer_shapes(tokens, di.ShapeDtype((2, 7), "int32")).input_dtype == "int32"
    with pytest.raises(di.DTypeError, match=r"layer '0' \(Embedding\) expected integer indices, received float"):
        di.infer_shapes(tokens, np.zeros((2, 7), np.int32), dtype="float32")  # an explicit dtype wins


@pytest.mark.parametrize("layers,dtype", [
    ([di.Dense(3)], "float32"), ([di.Embedding(10, 4)], "int64"), ([di.Dropout(0.1), di.OneHot(5)], "int64"),
    ([di.Sequential([di.Identity(), di.Embedding(10, 4)]), di.Dense(2)], "int64"), ([di.Flatten(), di.Dense(2)], "float32"),
])
def test_the_default_dtype_is_the_specs_own(layers: list, dtype: str) -> None:
    spec = di.LazyModel(layers)
    assert di.infer_shapes(spec, (2, 3)).input_dtype == dtype
    assert di.infer_shapes(spec, (2, 3), dtype=dtype).input_dtype == dtype  # explicit dtypes still work
    spec.summary((2, 3))


# ============================================================================ 15.8: short forms round trip
@pytest.mark.parametrize("layer,short", [
    (di.Reshape((4, 4)), None), (di.Reshape((16,)), None), (di.Reshape((-1,)), None), (di.Reshape((2, -1)), None),
    (di.Permute((1,)), None), (di.Permute((2, 1)), None), (di.Permute((1, 2, 3)), None),
    (di.Reshape((2, 2, 4)), None), (di.Reshape((2, -1, 2)), None), (di.Reshape((1,)), None),
    (di.Reshape((3, 3)), None), (di.Permute((3, 1, 2)), None), (di.Permute((2, 3, 1, 4)), None),
    (di.Conv2D(4, (3, 3), stride=(2, 2)), {"kernel_size": 3, "stride": 2}), (di.Conv1D(4, (5,)), {"kernel_size": 5}),
    (di.Conv2D(4, (3, 5), padding=(1, 2)), {"kernel_size": [3, 5], "padding": [1, 2]}),
    (di.MaxPool2D((2, 2), stride=(1, 1)), {"pool_size": 2, "stride": 1}),
])
def test_every_tuple_field_round_trips(tmp_path: Path, layer: Any, short: dict | None) -> None:
    spec = di.LazyModel([layer])
    data = json.loads(json.dumps(spec.to_dict()))
    if short is not None:  # ints where the layer takes one, so files stay short
        assert {k: data["layers"][0][k] for k in short} == short
    assert di.LazyModel.from_dict(data) == spec
    for suffix in (".json", ".yaml", ".toml"):
        assert di.load_spec(di.save_spec(spec, tmp_path / f"s{suffix}")) == spec, suffix


# ============================================================================ 15.9: the failing position of a tie
def test_a_dtype_error_at_a_tied_layer_names_the_failing_position(backend: str) -> None:
    emb = di.Embedding(10, 4)
    spec = di.LazyModel([emb, di.Dense(4), emb])  # the second use receives the Dense's float output
    expected = r"^layer '2' \(Embedding\), the same layer object as '0' used again: .*expected integer indices"
    with pytest.raises(di.DTypeError, match=expected):
        di.infer_shapes(spec, (2, 3), dtype="int64")
    with pytest.raises(di.DTypeError, match=expected):
        di.compile(spec, backend).apply_init(np.zeros((2, 3), np.int64))
