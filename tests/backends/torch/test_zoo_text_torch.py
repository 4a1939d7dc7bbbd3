"""zoo.gpt2 and zoo.bert_base against the ``transformers`` reference models, built here from their configs (no
download): the reference's weights, renamed into canonical names, load into the spec compiled for torch and
for the NumPy reference, and both give the reference's outputs. Full-size parameter counts come from
``transformers`` itself (``GPT2LMHeadModel(GPT2Config())``, ``BertModel(BertConfig())``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # installed by the torch session: backends/torch.txt's "# tests:" line

import deferinit as di
from deferinit import zoo


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def gpt2_weights(ref: torch.nn.Module, n_layer: int, d: int) -> dict[str, np.ndarray]:
    sd = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items()}
    w = {"wte.weight": _np(sd["wte.weight"]), "wpe.weight": _np(sd["wpe.weight"])[None],
         "ln_f.weight": _np(sd["ln_f.weight"]), "ln_f.bias": _np(sd["ln_f.bias"])}
    for i in range(n_layer):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            w[f"h{i}_{ln}.weight"], w[f"h{i}_{ln}.bias"] = _np(sd[p + ln + ".weight"]), _np(sd[p + ln + ".bias"])
        qkv, qkv_b = _np(sd[p + "attn.c_attn.weight"]), _np(sd[p + "attn.c_attn.bias"])  # Conv1D: (in, 3 * out)
        for j, proj in enumerate("qkv"):
            w[f"h{i}_attn.{proj}_weight"] = qkv[:, j * d:(j + 1) * d].T.copy()
            w[f"h{i}_attn.{proj}_bias"] = qkv_b[j * d:(j + 1) * d].copy()
        w[f"h{i}_attn.out_weight"] = _np(sd[p + "attn.c_proj.weight"]).T.copy()
        w[f"h{i}_attn.out_bias"] = _np(sd[p + "attn.c_proj.bias"])
        for name in ("c_fc", "c_proj"):
            w[f"h{i}_mlp_{name}.weight"] = _np(sd[p + f"mlp.{name}.weight"]).T.copy()
            w[f"h{i}_mlp_{name}.bias"] = _np(sd[p + f"mlp.{name}.bias"])
    return w


def bert_weights(ref: torch.nn.Module, layers: int) -> dict[str, np.ndarray]:
    sd = ref.state_dict()
    w = {"word_embeddings.weight": _np(sd["embeddings.word_embeddings.weight"]),
         "token_type_embeddings.weight": _np(sd["embeddings.token_type_embeddings.weight"]),
         "position_embeddings.weight": _np(sd["embeddings.position_embeddings.weight"])[None],
         "embeddings_LayerNorm.weight": _np(sd["embeddings.LayerNorm.weight"]),
         "embeddings_LayerNorm.bias": _np(sd["embeddings.LayerNorm.bias"]),
         "pooler.weight": _np(sd["pooler.dense.weight"]), "pooler.bias": _np(sd["pooler.dense.bias"])}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for proj, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            w[f"layer{i}_attention.{proj}_weight"] = _np(sd[p + f"attention.self.{theirs}.weight"])
            w[f"layer{i}_attention.{proj}_bias"] = _np(sd[p + f"attention.self.{theirs}.bias"])
        w[f"layer{i}_attention.out_weight"] = _np(sd[p + "attention.output.dense.weight"])
        w[f"layer{i}_attention.out_bias"] = _np(sd[p + "attention.output.dense.bias"])
        for mine, theirs in ((f"layer{i}_attention_LayerNorm", "attention.output.LayerNorm"),
                             (f"layer{i}_intermediate", "intermediate.dense"), (f"layer{i}_output", "output.dense"),
                             (f"layer{i}_output_LayerNorm", "output.LayerNorm")):
            w[f"{mine}.weight"], w[f"{mine}.bias"] = _np(sd[p + theirs + ".weight"]), _np(sd[p + theirs + ".bias"])
    return w


def _outputs(y: object) -> list[np.ndarray]:
    ys = y if isinstance(y, (list, tuple)) else [y]
    return [t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in ys]


def test_full_size_counts_are_the_references() -> None:
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    bert = transformers.BertModel(transformers.BertConfig())
    want_gpt = sum(p.numel() for p in gpt.parameters())  # the tied lm_head counted once
    want_bert = sum(p.numel() for p in bert.parameters())
    assert (want_gpt, want_bert) == (124_439_808, 109_482_240)  # the figures, as transformers counts
    assert di.infer_shapes(zoo.gpt2(), (1, 1024)).total_params == want_gpt
    assert di.infer_shapes(zoo.bert_base(), [(1, 512), (1, 512), (1,)]).total_params == want_bert


@pytest.mark.parametrize("target", ["torch", "numpy"])
def test_gpt2_outputs_equal_transformers(target: str) -> None:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=16)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 11)).astype(np.int64)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    spec = zoo.gpt2(2, vocab_size=97, n_positions=16, n_embd=32, n_head=4)
    model = di.compile(spec, target)
    model.apply_init((ids,), key=0)
    weights = gpt2_weights(ref, 2, 32)
    assert sorted(weights) == sorted(model.export_weights())
    model.load_weights(weights)
    (got,) = _outputs(model((ids,)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # causal: the first five positions do not see the later tokens
    later = ids.copy()
    later[:, 5:] = (later[:, 5:] + 1) % 97
    (moved,) = _outputs(model((later,)))
    np.testing.assert_allclose(moved[:, :5], got[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["torch", "numpy"])
def test_bert_outputs_equal_transformers(target: str) -> None:
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=20)
    ref = transformers.BertModel(cfg).eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 101, size=(3, 9)).astype(np.int64)
    types = rng.integers(0, 2, size=(3, 9)).astype(np.int64)
    lens = np.array([9, 4, 6], np.int64)
    mask = (np.arange(9)[None] < lens[:, None]).astype(np.int64)  # ones, then zeros past each length
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                  attention_mask=torch.from_numpy(mask))
    spec = zoo.bert_base(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=20)
    model = di.compile(spec, target)
    model.apply_init((ids, types, lens), key=0)
    weights = bert_weights(ref, 2)
    assert sorted(weights) == sorted(model.export_weights())
    model.load_weights(weights)
    hidden, pooled = _outputs(model((ids, types, lens)))
    np.testing.assert_allclose(hidden, out.last_hidden_state.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), rtol=1e-4, atol=1e-4)
