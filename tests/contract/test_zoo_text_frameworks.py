"""zoo.gpt2, zoo.bert_base and zoo.transformer (graph specs) on every selected framework: the framework's outputs equal the NumPy
reference's with the same weights (the reference itself equals ``transformers``' GPT-2 and BERT: see
tests/backends/torch/test_zoo_text_torch.py), and the framework's own arrays add up to the counts derived by
hand below at full width."""

from __future__ import annotations

import numpy as np

import deferinit as di
from deferinit import zoo

# one GPT-2 block at full width: ln_1 + attention (4 x (768*768 + 768)) + ln_2 + MLP (768*3072 + 3072 + 3072*768 + 768)
BLOCK = 2 * 1536 + 4 * (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)


def _outs(model: object, y: object) -> list[np.ndarray]:
    ys = y if isinstance(y, (list, tuple)) else [y]
    return [np.asarray(model.to_numpy(t)) for t in ys]  # type: ignore[attr-defined]


def _same_weights(framework: str, spec: di.LazyModel, inputs: tuple) -> tuple:
    ref = di.compile(spec, "numpy")
    ref.apply_init(inputs, init="xavier_uniform", key=3)
    model = di.compile(spec, framework)
    model.apply_init(inputs, key=0)
    weights = ref.export_weights()
    model.load_weights(weights)
    back = model.export_weights()
    assert sorted(back) == sorted(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(back[name], w, err_msg=name)
    return ref, model


def test_gpt2_equals_reference(framework: str) -> None:
    spec = zoo.gpt2(2, vocab_size=61, n_positions=12, n_embd=16, n_head=4)
    ids = np.random.default_rng(0).integers(0, 61, size=(2, 9)).astype(np.int64)
    ref, model = _same_weights(framework, spec, (ids,))
    (want,), (got,) = _outs(ref, ref((ids,))), _outs(model, model((ids,)))
    assert got.shape == (2, 9, 61)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bert_equals_reference(framework: str) -> None:
    spec = zoo.bert_base(vocab_size=53, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=24, max_position_embeddings=10)
    rng = np.random.default_rng(1)
    ids, types = rng.integers(0, 53, size=(3, 7)).astype(np.int64), rng.integers(0, 2, size=(3, 7)).astype(np.int64)
    lens = np.array([7, 2, 5], np.int64)
    ref, model = _same_weights(framework, spec, (ids, types, lens))
    want, got = _outs(ref, ref((ids, types, lens))), _outs(model, model((ids, types, lens)))
    assert [g.shape for g in got] == [(3, 7, 16), (3, 16)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_full_width_counts_from_the_framework_s_arrays(framework: str) -> None:
    gpt = di.compile(zoo.gpt2(1), framework)
    gpt.apply_init((np.zeros((1, 4), np.int64),), key=0)
    sizes = {n: a.size for n, a in gpt.export_weights().items()}
    assert sizes["wpe.weight"] == 1024 * 768 and "lm_head" not in " ".join(sizes)  # the head is wte's table
    assert sum(sizes.values()) == 50257 * 768 + 1024 * 768 + BLOCK + 1536
    del gpt
    bert = di.compile(zoo.bert_base(num_hidden_layers=1), framework)
    bert.apply_init((np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64), np.array([4])), key=0)
    total = sum(a.size for a in bert.export_weights().values())
    # embeddings (30522 + 512 + 2) x 768 + LayerNorm, one layer (the GPT-2 block's sizes, in another order), pooler
    assert total == (30522 + 512 + 2) * 768 + 1536 + BLOCK + 768 * 768 + 768


def test_transformer_equals_reference(framework: str) -> None:
    spec = zoo.transformer(29, 31, num_hiddens=16, ffn_num_hiddens=8, num_heads=4, dropout=0.0)
    rng = np.random.default_rng(2)
    src, tgt, lens = rng.integers(0, 29, size=(2, 6)), rng.integers(0, 31, size=(2, 5)), np.array([6, 2], np.int64)
    ref, model = _same_weights(framework, spec, (src, lens, tgt))
    (want,), (got,) = _outs(ref, ref((src, lens, tgt))), _outs(model, model((src, lens, tgt)))
    assert got.shape == (2, 5, 31)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
