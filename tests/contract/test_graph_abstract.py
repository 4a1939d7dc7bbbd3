"""Graph models: the memory check before anything is allocated, ``apply_init(..., abstract=True)`` (shapes and
native names with no parameter memory) and ``materialize()``. Backends without an abstract path for graphs
(tensorflow, mxnet so far) must refuse it by name, leaving the model uninitialized."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from deferinit import resources, zoo

ABSTRACT = ("numpy", "torch", "jax", "nnx")


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_abstract_gpt2_allocates_nothing_big(backend: str) -> None:
    spec = zoo.gpt2()
    model = di.compile(spec, backend)
    tokens = di.ShapeDtype((1, 8), "int64")
    if backend not in ABSTRACT:
        with pytest.raises(di.UnsupportedLayerError, match=f"backend {backend}: abstract apply_init"):
            model.apply_init(tokens, abstract=True)
        assert not model.initialized
        return
    before = _rss_mib()
    report = model.apply_init(tokens, abstract=True)
    grown = _rss_mib() - before
    assert report.total_params == 124_439_808  # transformers' GPT2LMHeadModel count (by hand in test_zoo_text)
    assert grown < 200, f"abstract apply_init grew the process by {grown:.0f} MiB (the weights are 475 MiB)"
    rules = di.infer_shapes(spec, [(1, 8)])
    for name, p in report.params.items():
        assert p.native_name and p.shape == rules.params[name].shape, name
    assert report.params["wte.weight"].native_shape == (50257, 768)
    with pytest.raises(di.NotInitializedError, match="abstractly"):
        model(np.zeros((1, 8), np.int64))
    with pytest.raises(di.NotInitializedError, match="abstractly"):
        model.export_weights()


def test_memory_check_refuses_before_allocating(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = di.compile(zoo.gpt2(), backend)
    monkeypatch.setattr(resources, "available_memory", lambda: 200 * 2**20)  # 200 MiB: the weights are 475 MiB
    with pytest.raises(di.ResourceError, match=r"apply_init on inputs \(1, 8\) would need .*wte.weight.*abstract=True"):
        model.apply_init(np.zeros((1, 8), np.int64))
    assert not model.initialized


def _small_gpt2():
    return zoo.gpt2(2, vocab_size=40, n_positions=12, n_embd=8, n_head=2)


def test_materialize_gives_the_concrete_model(backend: str) -> None:
    spec = _small_gpt2()
    tokens = np.random.default_rng(0).integers(0, 40, (2, 6))
    model = di.compile(spec, backend)
    if backend not in ABSTRACT:
        with pytest.raises(di.UnsupportedLayerError, match="abstract"):
            model.apply_init(di.ShapeDtype((2, 6), "int64"), abstract=True)
        assert not model.initialized
        return
    abstract = model.apply_init(di.ShapeDtype((2, 6), "int64"), abstract=True)
    ref = di.compile(spec, "numpy")
    concrete = ref.apply_init(tokens, init="normal", key=4)
    assert {n: p.shape for n, p in abstract.params.items()} == {n: p.shape for n, p in concrete.params.items()}
    with pytest.raises(di.DTypeError, match="'input_ids'"):  # shapes-only inputs are checked as data would be
        model.apply_init(di.ShapeDtype((2, 6), "float32"), abstract=True)
    model.materialize(init="normal", key=4)
    for name, value in ref.export_weights().items():  # the portable init: the same numbers as the reference
        np.testing.assert_array_equal(model.export_weights()[name], value)
    np.testing.assert_allclose(model.to_numpy(model(tokens)), ref(tokens), rtol=2e-4, atol=2e-4)
    assert model.materialize() is model.report  # already concrete: nothing to do


def test_load_weights_fills_an_abstract_model(backend: str) -> None:
    if backend not in ABSTRACT:
        return  # refused above
    spec = _small_gpt2()
    tokens = np.random.default_rng(1).integers(0, 40, (2, 6))
    ref = di.compile(spec, "numpy")
    ref.apply_init(tokens, init="normal", key=5)
    model = di.compile(spec, backend)
    model.apply_init(di.ShapeDtype((2, 6), "int64"), abstract=True)
    with pytest.raises(di.WeightsError, match="missing"):
        model.load_weights({})
    model.load_weights(ref.export_weights())
    np.testing.assert_allclose(model.to_numpy(model(tokens)), ref(tokens), rtol=2e-4, atol=2e-4)
