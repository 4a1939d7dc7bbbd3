"""The per-model cache of the reference rules' results (``rules_cache.RulesCache._infer_once``, issue 17): apply_init runs
the rules once per (input shape, dtype) and keeps the memory estimate beside them, without changing any answer.

Truth: :func:`deferinit.infer_shapes` on the same spec and input (the rules run afresh), and the errors the
contract promises (a DeferInitError naming the layer, nothing changed)."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from deferinit.adapters import checks as checks_mod
from deferinit.adapters import rules_cache as cache_mod
from deferinit.adapters.contract import NativeParam
from deferinit.errors import DTypeError, ShapeMismatchError


@pytest.fixture(autouse=True)
def _fresh_shared_cache() -> None:
    """The counts below start from no cached result, also of equal specs that other tests built."""
    cache_mod._SHARED.clear()


def _spec() -> di.LazyModel:
    return di.LazyModel([di.Dense(6, activation="relu"), di.Dense(3)])


def _count(monkeypatch: pytest.MonkeyPatch, name: str, module: object = cache_mod) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_shape_and_dtype_gets_its_own_report(backend: str) -> None:
    spec = _spec()
    model = di.compile(spec, backend)
    for shape, dtype in (((2, 5), np.float32), ((3, 7), np.float32), ((2, 5), np.float32), ((2, 5), np.float64),
                         ((3, 7), np.float32)):
        report = model.apply_init(np.ones(shape, dtype))
        ref = di.infer_shapes(spec, shape, dtype=dtype)
        assert report.input_shape == shape and report.output_shape == ref.output_shape == (shape[0], 3)
        assert {n: p.shape for n, p in report.params.items()} == {n: p.shape for n, p in ref.params.items()}
        assert report.params["0.weight"].shape == (6, shape[1])  # in features from this input, not a cached one
        assert report.input_dtype == ref.input_dtype
        y = model.to_numpy(model(np.ones(shape, np.float32)))
        assert y.shape == (shape[0], 3)


def test_the_rules_and_the_estimate_run_once_per_shape(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    infers, footprints = _count(monkeypatch, "infer"), _count(monkeypatch, "footprint")
    bounds = _count(monkeypatch, "small", checks_mod)  # a small model's estimate: the cheap bound alone
    model = di.compile(_spec(), backend)
    for _ in range(3):
        model.apply_init(np.ones((2, 5), np.float32))
    assert infers[0] == 1 and bounds[0] == 1 and footprints[0] == 0
    model.apply_init(np.ones((2, 4), np.float32))
    assert infers[0] == 2 and bounds[0] == 2 and footprints[0] == 0
    big = di.compile(di.LazyModel([di.Dense(4096), di.Dense(4096)]), backend)  # 134 MB of parameters: over SMALL
    for _ in range(2):
        big.apply_init(di.ShapeDtype((1, 4096), "float32"), abstract=True)
    assert infers[0] == 3 and bounds[0] == 3 and footprints[0] == 1  # the full estimate, once, beside the rules


def test_load_weights_on_a_new_model_runs_the_rules_once(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = di.compile(_spec(), backend)
    source.apply_init(np.ones((1, 5), np.float32), init="xavier_uniform", key=1)
    weights = source.export_weights()
    cache_mod._SHARED.clear()  # (an equal spec's result would be shared: no rules at all)
    infers = _count(monkeypatch, "infer")
    model = di.compile(_spec(), backend)
    model.load_weights(weights, input_shape=(1, 5))
    assert infers[0] == 1  # the shapes checked against the weights are the ones apply_init then builds
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(model.to_numpy(model(x)), source.to_numpy(source(x)))


def test_the_cache_is_bounded(backend: str) -> None:
    model = di.compile(_spec(), backend)
    for features in range(1, 21):
        model.apply_init(di.ShapeDtype((1, features), "float32"), abstract=True)
    assert len(model._inferred) <= cache_mod._CACHED
    assert model.report.params["0.weight"].shape == (6, 20)


def test_errors_are_not_cached_and_change_nothing(backend: str) -> None:
    spec = di.LazyModel([di.Dense(6), di.Conv2D(4, 3)])  # a Conv2D needs (N, C, H, W), the Dense gives (N, 6)
    model = di.compile(spec, backend)
    for _ in range(2):
        with pytest.raises(ShapeMismatchError, match=r"layer '1' \(Conv2D\)"):
            model.apply_init(np.ones((1, 3), np.float32))
        assert not model.initialized and not model._inferred
    ok = di.compile(_spec(), backend)
    report = ok.apply_init(np.ones((1, 5), np.float32))
    with pytest.raises(DTypeError, match="complex64"):
        ok.apply_init(np.ones((1, 5), np.complex64))
    assert ok.report is report and len(ok._inferred) == 1


def test_equal_specs_built_separately_share_the_rules(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    infers = _count(monkeypatch, "infer")
    x = np.ones((2, 5), np.float32)
    first = di.compile(_spec(), backend).apply_init(x)
    again = di.compile(_spec(), backend).apply_init(x)  # new layer objects, the same model: the rules ran once
    assert infers[0] == 1
    # the same shapes (native names may differ between two models: MXNet numbers its blocks)
    assert {n: p.shape for n, p in again.params.items()} == {n: p.shape for n, p in first.params.items()}
    assert again.layers == first.layers and again.output_shape == first.output_shape
    ref = di.infer_shapes(_spec(), (2, 5))
    assert {n: p.shape for n, p in again.params.items()} == {n: p.shape for n, p in ref.params.items()}
    # anything that changes the model misses: a field, a field's type, a name, the data format, the input
    for other, shape in ((di.LazyModel([di.Dense(7, activation="relu"), di.Dense(3)]), (2, 5)),
                         (di.LazyModel([di.Dense(6, activation="relu"), di.Dense(3, use_bias=False)]), (2, 5)),
                         (di.LazyModel([di.Dense(6, activation="relu", name="a"), di.Dense(3)]), (2, 5)),
                         (di.LazyModel([di.Dense(6, activation="relu"), di.Dense(3)], data_format="channels_last"),
                          (2, 5)),
                         (_spec(), (2, 4))):
        count = infers[0]
        report = di.compile(other, backend).apply_init(np.ones(shape, np.float32))
        assert infers[0] == count + 1
        truth = di.infer_shapes(other, shape)
        assert {n: p.shape for n, p in report.params.items()} == {n: p.shape for n, p in truth.params.items()}


def test_a_tied_spec_does_not_share_with_its_untied_twin(backend: str) -> None:
    """[d, d] (one layer used twice: one set of weights) and [d, Dense(4)] (two equal layers) are different models."""
    d = di.Dense(4)
    tied, untied = di.LazyModel([d, d]), di.LazyModel([di.Dense(4), di.Dense(4)])
    x = np.ones((2, 4), np.float32)
    r_untied = di.compile(untied, backend).apply_init(x)
    r_tied = di.compile(tied, backend).apply_init(x)
    assert set(r_untied.params) == set(di.infer_shapes(untied, (2, 4)).params) == {"0.weight", "0.bias", "1.weight",
                                                                                   "1.bias"}
    assert set(r_tied.params) == set(di.infer_shapes(tied, (2, 4)).params) == {"0.weight", "0.bias"}


def test_the_shared_cache_is_bounded(backend: str) -> None:
    for units in range(1, cache_mod._SHARED_MAX + 10):
        di.compile(di.LazyModel([di.Dense(units)]), backend).apply_init(di.ShapeDtype((1, 3), "float32"),
                                                                        abstract=True)
    assert len(cache_mod._SHARED) <= cache_mod._SHARED_MAX


def test_threads_share_and_evict_the_cache_without_mixing_results(backend: str) -> None:
    """Four threads compile specs of 1..40 units at once (more than the shared cache holds, so entries are evicted
    while others are inserted): every report has its own spec's shapes, from infer_shapes."""
    import threading

    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(40):
                units = (i + offset) % 40 + 1
                spec = di.LazyModel([di.Dense(units), di.Dense(2)])
                report = di.compile(spec, backend).apply_init(di.ShapeDtype((1, 3), "float32"), abstract=True)
                assert report.params["0.weight"].shape == di.infer_shapes(spec, (1, 3)).params["0.weight"].shape
                assert report.params["1.weight"].shape == (2, units)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(cache_mod._SHARED) <= cache_mod._SHARED_MAX


def test_a_report_reuses_an_entry_only_where_the_framework_gave_the_same_facts(backend: str) -> None:
    """Checks._make_report keeps each ParamInfo it builds on the (shared) inference and hands the same frozen object
    to a later report whose framework facts are equal; a different native name gets an entry of its own, and each
    report has its own mapping. Truth: the NativeParam facts passed in."""
    model = di.compile(_spec(), backend)
    first = model.apply_init(np.ones((2, 5), np.float32))
    inference = model._inference
    found = {n: NativeParam(p.native_name, p.native_shape, p.shape, p.source) for n, p in first.params.items()}
    again = model._make_report(inference, found)
    assert again.params == first.params and again.params is not first.params
    assert all(again.params[n] is first.params[n] for n in found)
    w = found["0.weight"]
    other = model._make_report(inference, {**found, "0.weight": NativeParam("elsewhere.w", w.native_shape, w.shape)})
    assert other.params["0.weight"].native_name == "elsewhere.w"
    assert other.params["0.weight"].shape == first.params["0.weight"].shape == (6, 5)
    assert first.params["0.weight"].native_name == w.native_name != "elsewhere.w"  # the earlier report is untouched
    assert other.params["0.bias"] is first.params["0.bias"]
