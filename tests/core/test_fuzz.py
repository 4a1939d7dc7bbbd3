"""Fuzzing the entry points on the framework-free backend: any exception that is not a DeferInitError fails.

The same strategies drive the framework adapters in ``test_fuzz_frameworks.py`` (each backend's session).
"""

from __future__ import annotations

import copy
import json

import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

import deferinit as di
from strategies import replay, valid_specs

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=6),
                 st.lists(st.integers(-2, 5), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@given(valid_specs())
def test_valid_specs_infer_run_and_round_trip(spec_and_shape) -> None:  # type: ignore[no-untyped-def]
    spec, shape = spec_and_shape
    note(replay(spec))
    report = di.infer_shapes(spec, shape)
    assert di.LazyModel.from_dict(json.loads(replay(spec))) == spec
    model = di.compile(spec, "numpy")
    assert model.apply_init(np.zeros(shape, np.float32), init="xavier_uniform", key=0).diff(report) == []
    out = model(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    assert out.shape == report.output_shape and np.isfinite(out).all()
    assert report.total_params == sum(int(np.prod(p.shape)) for p in report.params.values())


def _mutate(data: dict, draw) -> dict:  # type: ignore[no-untyped-def]
    data = copy.deepcopy(data)
    layers = data["layers"]
    i = draw(st.integers(0, len(layers) - 1))
    target = layers[i]
    action = draw(st.sampled_from(["set", "delete", "unknown", "type", "replace"]))
    keys = [k for k in target if k != "type"] or ["type"]
    if action == "set":
        target[draw(st.sampled_from(keys))] = draw(JUNK)
    elif action == "delete":
        target.pop(draw(st.sampled_from(sorted(target))), None)
    elif action == "unknown":
        target[draw(st.text(min_size=1, max_size=5))] = draw(JUNK)
    elif action == "type":
        target["type"] = draw(st.sampled_from(["Dense", "Conv2D", "Concat", "Residual", "Nope", "LazyModel"]))
    else:
        layers[i] = draw(JUNK)
    return data


@given(valid_specs(), st.data())
def test_malformed_spec_dicts_raise_only_deferinit_errors(spec_and_shape, data) -> None:  # type: ignore[no-untyped-def]
    spec, shape = spec_and_shape
    bad = _mutate(spec.to_dict(), data.draw)
    note(json.dumps(bad, default=str))
    try:
        mutated = di.LazyModel.from_dict(bad)
        di.infer_shapes(mutated, shape)
    except di.DeferInitError:
        pass


@given(valid_specs(allow_conv=False), st.lists(st.one_of(st.none(), st.integers(-1, 12)), min_size=0, max_size=5),
       st.sampled_from(["float32", "float64", "float16", "int32", "int64", "bool", "complex64", "uint8"]))
def test_bad_inputs_raise_only_deferinit_errors(spec_and_shape, shape, dtype) -> None:  # type: ignore[no-untyped-def]
    spec, good = spec_and_shape
    model = di.compile(spec, "numpy")
    model.apply_init(np.zeros(good, np.float32))
    try:
        di.infer_shapes(spec, shape, dtype=dtype)
    except di.DeferInitError:
        pass
    concrete = [d if d is not None else 1 for d in shape]
    try:
        x = np.zeros(concrete, dtype=dtype) if all(d >= 0 for d in concrete) else None
    except ValueError:
        x = None
    if x is not None:
        try:
            model(x)
        except di.DeferInitError:
            pass


@settings(max_examples=30)
@given(st.binary(max_size=300), st.sampled_from([".npz", ".safetensors", ".json", ".toml", ".yaml"]))
def test_random_bytes_as_files_raise_only_deferinit_errors(tmp_path_factory, blob: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"file{suffix}"
    path.write_bytes(blob)
    try:
        (di.load_weights if suffix in (".npz", ".safetensors") else di.load_spec)(path)
    except di.DeferInitError:
        pass


@settings(max_examples=30)
@given(st.integers(0, 10_000), st.sampled_from([".npz", ".safetensors"]))
def test_truncated_weight_files(tmp_path_factory, cut: int, suffix: str) -> None:
    weights = {"0.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "0.bias": np.ones(3, np.float32)}
    path = tmp_path_factory.mktemp("w") / f"w{suffix}"
    di.save_weights(path, weights)
    raw = path.read_bytes()
    path.write_bytes(raw[: cut % max(len(raw), 1)])
    try:
        got = di.load_weights(path)
    except di.DeferInitError:
        return
    assert set(got) <= set(weights)  # whatever survives must be exact
    for k, v in got.items():
        np.testing.assert_array_equal(v, weights[k])


@settings(max_examples=40)
@given(valid_specs(), st.sampled_from([".json", ".yaml", ".toml"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_mutated_spec_files_load_exactly_or_raise_only_deferinit_errors(tmp_path_factory, spec_and_shape, suffix: str,
                                                                         at: int, junk: bytes) -> None:
    """A valid spec file with a few bytes overwritten: either it still reads as a spec (which then saves and loads
    back equal), or the error is a DeferInitError; never a parser's or Python's own exception."""
    spec, _ = spec_and_shape
    path = tmp_path_factory.mktemp("spec") / f"spec{suffix}"
    try:
        di.save_spec(spec, path)
    except di.DeferInitError:  # TOML cannot hold every spec (None values): that refusal is tested in test_spec
        return
    raw = bytearray(path.read_bytes())
    pos = at % len(raw)
    raw[pos:pos + len(junk)] = junk
    path.write_bytes(bytes(raw))
    try:
        got = di.load_spec(path)
    except di.DeferInitError:
        return
    again = path.with_name(f"again{suffix}")
    di.save_spec(got, again)
    assert di.load_spec(again) == got


@settings(max_examples=40)
@given(st.sampled_from([".npz", ".safetensors"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_mutated_weight_files_load_exactly_or_raise_only_deferinit_errors(tmp_path_factory, suffix: str, at: int,
                                                                          junk: bytes) -> None:
    """A valid weight file with a few bytes overwritten (headers included): a DeferInitError, or tensors of the
    declared names whose shapes match what was saved (a flipped data byte changes values, not shapes)."""
    weights = {"0.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "0.bias": np.ones(3, np.float32)}
    path = tmp_path_factory.mktemp("w") / f"w{suffix}"
    di.save_weights(path, weights)
    raw = bytearray(path.read_bytes())
    pos = at % len(raw)
    raw[pos:pos + len(junk)] = junk
    path.write_bytes(bytes(raw))
    try:
        got = di.load_weights(path, expected={n: v.shape for n, v in weights.items()})
    except di.DeferInitError:
        return
    assert set(got) == set(weights)
    for k, v in got.items():
        assert v.shape == weights[k].shape
