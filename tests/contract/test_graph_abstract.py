"""Graph models: the memory check before anything is allocated, ``apply_init(..., abstract=True)`` (shapes and
native names with no parameter memory) and ``materialize()``, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from deferinit import resources, zoo


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_abstract_gpt2_allocates_nothing_big(backend: str) -> None:
    spec = zoo.gpt2()
    model = di.compile(spec, backend)
    tokens = di.ShapeDtype((1, 8), "int64")
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


def _three_inputs():
    """An image branch (conv + BatchNorm in a Residual), a token branch (attention with valid_lens, BatchNorm on
    one input only), merged: every input feeds part of the graph."""
    image, tokens, lens = di.Input(name="image"), di.Input(name="tokens", dtype="int64"), \
        di.Input(name="valid_lens", dtype="int64")
    body = di.Residual(di.Sequential([di.Conv2D(3, 3, padding="same"), di.BatchNorm(), di.ReLU()]), name="block")
    img = di.Flatten()(di.GlobalAvgPool2D()(body(image)))
    h = di.Embedding(9, 6, name="emb")(tokens)
    h = di.add(h, di.MultiHeadAttention(6, 2, name="attn")(h, h, h, valid_lens=lens))
    txt = di.BatchNorm(name="bn")(di.Dense(3, name="proj")(di.Flatten()(h)))
    return di.LazyModel(inputs=[image, tokens, lens], outputs=[di.Dense(2, name="head")(di.concat([img, txt])), txt])


def test_abstract_multi_input_graph(backend: str) -> None:
    spec = _three_inputs()
    rng = np.random.default_rng(2)
    xs = (rng.standard_normal((2, 3, 5, 5)).astype(np.float32), rng.integers(0, 9, (2, 4)), np.array([1, 4]))
    model = di.compile(spec, backend)
    report = model.apply_init(tuple(di.ShapeDtype(x.shape, x.dtype.name) for x in xs), abstract=True)
    rules = di.infer_shapes(spec, [x.shape for x in xs])
    assert {n: p.shape for n, p in report.params.items()} == {n: p.shape for n, p in rules.params.items()}
    assert all(p.native_name for p in report.params.values())
    with pytest.raises(di.NotInitializedError, match="abstractly"):
        model(xs)
    model.materialize(init="xavier_uniform", key=3)
    ref = di.compile(spec, "numpy")
    ref.apply_init(xs, init="xavier_uniform", key=3)
    for name, value in ref.export_weights().items():
        np.testing.assert_array_equal(model.export_weights()[name], value, err_msg=name)
    for got, want in zip(model(xs), ref(xs)):
        np.testing.assert_allclose(model.to_numpy(got), want, rtol=2e-4, atol=2e-4)
