"""A graph spec on PyTorch against the same model written by hand in torch (d2l's MultiHeadAttention with
``masked_softmax``, an AddNorm), with the same weights: the same outputs; and the native module is torch's own
(lazy modules materialized in the dry run, a layer called twice one module)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from d2l_attention import masked_softmax  # d2l, chapter "Attention Scoring Functions"
from torch import nn

import deferinit as di


class HandBlock(nn.Module):
    """d2l's MultiHeadAttention (no bias) + AddNorm, on embedded tokens, with queries from a second input."""

    def __init__(self, vocab, d, heads):
        super().__init__()
        self.emb, self.heads = nn.Embedding(vocab, d), heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.ln = nn.LayerNorm(d)

    def split(self, X):
        X = X.reshape(X.shape[0], X.shape[1], self.heads, -1).permute(0, 2, 1, 3)
        return X.reshape(-1, X.shape[2], X.shape[3])

    def forward(self, tokens, queries, valid_lens):
        h = self.emb(tokens)
        q, k, v = self.split(self.W_q(queries)), self.split(self.W_k(h)), self.split(self.W_v(h))
        lens = torch.repeat_interleave(valid_lens, repeats=self.heads, dim=0)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        out = torch.bmm(masked_softmax(scores, lens), v)
        out = out.reshape(-1, self.heads, out.shape[1], out.shape[2]).permute(0, 2, 1, 3)
        a = self.W_o(out.reshape(out.shape[0], out.shape[1], -1))
        return self.ln(a + queries), a


def _spec():
    tokens = di.Input(name="tokens", dtype="int64")
    queries = di.Input(name="queries")
    lens = di.Input(name="valid_lens", dtype="int64")
    h = di.Embedding(20, 8, name="emb")(tokens)
    a = di.MultiHeadAttention(8, 2, name="att")(queries, h, h, valid_lens=lens)
    return di.LazyModel(inputs=[tokens, queries, lens], outputs=[di.LayerNorm(name="ln")(di.add(a, queries)), a])


@pytest.mark.parametrize("lens", [np.array([3, 6]), np.array([[1, 2, 3, 4], [6, 5, 4, 3]])])
def test_graph_matches_hand_written_torch(lens):
    rng = np.random.default_rng(0)
    tokens, queries = rng.integers(0, 20, (2, 6)), rng.standard_normal((2, 4, 8)).astype(np.float32)
    model = di.compile(_spec(), "torch")
    model.apply_init((tokens, queries, lens), init="xavier_uniform", key=0)
    assert isinstance(model.native, nn.Module)
    hand = HandBlock(20, 8, 2)
    w = model.export_weights()
    with torch.no_grad():
        hand.emb.weight.copy_(torch.from_numpy(w["emb.weight"]))
        for proj, lin in (("q", hand.W_q), ("k", hand.W_k), ("v", hand.W_v), ("out", hand.W_o)):
            lin.weight.copy_(torch.from_numpy(w[f"att.{proj}_weight"]))
        hand.ln.weight.copy_(torch.from_numpy(w["ln.weight"]))
        hand.ln.bias.copy_(torch.from_numpy(w["ln.bias"]))
        want = hand(torch.from_numpy(tokens), torch.from_numpy(queries), torch.from_numpy(lens))
    got = model((tokens, queries, lens))
    assert isinstance(got, tuple) and len(got) == 2
    for g, h in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), h.numpy(), rtol=1e-5, atol=1e-5)
    # the state_dict keys are the canonical names (d2l's W_q... for attention, as in list specs)
    assert sorted(model.native.state_dict()) == sorted(["emb.weight", "att.W_q.weight", "att.W_k.weight",
                                                        "att.W_v.weight", "att.W_o.weight", "ln.weight", "ln.bias"])


def test_layer_called_twice_is_one_torch_module_and_torch_init_applies():
    a, b = di.Input(name="a"), di.Input(name="b")
    dense = di.Dense(3)
    spec = di.LazyModel(inputs=[a, b], outputs=di.multiply(dense(a), dense(b)))
    model = di.compile(spec, "torch")
    ones = lambda m: nn.init.ones_(m.weight) if isinstance(m, nn.Linear) else None  # noqa: E731
    model.apply_init((np.ones((1, 2), np.float32), np.ones((1, 2), np.float32)), init=ones)
    assert [n for n, _ in model.native.named_parameters()] == ["0.weight", "0.bias"]
    assert isinstance(model.native.get_submodule("0"), nn.Linear)  # the LazyLinear became torch's Linear
    bias = model.export_weights()["0.bias"]
    xa, xb = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, -1.0]], np.float32)
    want = (xa.sum() + bias) * (xb.sum() + bias)
    np.testing.assert_allclose(model((xa, xb)).detach().numpy()[0], want, rtol=1e-6)
