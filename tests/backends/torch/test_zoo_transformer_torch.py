"""zoo.transformer against d2l's encoder-decoder Transformer, ported here by hand from the book's PyTorch chapter
("The Transformer Architecture", d2l.ai chapter 11.7, with its ``masked_softmax``, ``DotProductAttention``,
``MultiHeadAttention``, ``PositionalEncoding``, ``AddNorm``, ``PositionWiseFFN``): the same parameter count
after the book's lazy dry run, and the same outputs with the same weights (the decoder in the book's training
mode, whose ``dec_valid_lens = arange(1, T + 1)`` is the causal mask; dropout 0 so both are deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from d2l_attention import AddNorm, MultiHeadAttention, PositionalEncoding, PositionWiseFFN, TransformerEncoder
from torch import nn

import deferinit as di
from deferinit import zoo


class TransformerDecoderBlock(nn.Module):
    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float, i: int) -> None:
        super().__init__()
        self.i = i
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(ffn_num_hiddens, num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    def forward(self, X, state):  # type: ignore[no-untyped-def]
        enc_outputs, enc_valid_lens = state[0], state[1]
        if state[2][self.i] is None:
            key_values = X
        else:
            key_values = torch.cat((state[2][self.i], X), dim=1)
        state[2][self.i] = key_values
        if self.training:
            batch_size, num_steps, _ = X.shape
            dec_valid_lens = torch.arange(1, num_steps + 1, device=X.device).repeat(batch_size, 1)
        else:
            dec_valid_lens = None
        X2 = self.attention1(X, key_values, key_values, dec_valid_lens)
        Y = self.addnorm1(X, X2)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens)
        Z = self.addnorm2(Y, Y2)
        return self.addnorm3(Z, self.ffn(Z)), state


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, num_blks: int,
                 dropout: float) -> None:
        super().__init__()
        self.num_hiddens, self.num_blks = num_hiddens, num_blks
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blks = nn.Sequential()
        for i in range(num_blks):
            self.blks.add_module("block" + str(i), TransformerDecoderBlock(
                num_hiddens, ffn_num_hiddens, num_heads, dropout, i))
        self.dense = nn.LazyLinear(vocab_size)

    def init_state(self, enc_outputs, enc_valid_lens):  # type: ignore[no-untyped-def]
        return [enc_outputs, enc_valid_lens, [None] * self.num_blks]

    def forward(self, X, state):  # type: ignore[no-untyped-def]
        X = self.pos_encoding(self.embedding(X) * math.sqrt(self.num_hiddens))
        for blk in self.blks:
            X, state = blk(X, state)
        return self.dense(X), state


class EncoderDecoder(nn.Module):  # d2l.EncoderDecoder
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_X, dec_X, enc_valid_lens):  # type: ignore[no-untyped-def]
        enc_all_outputs = self.encoder(enc_X, enc_valid_lens)
        dec_state = self.decoder.init_state(enc_all_outputs, enc_valid_lens)
        return self.decoder(dec_X, dec_state)[0]


def book(src_vocab: int, tgt_vocab: int, num_hiddens: int = 256, ffn_num_hiddens: int = 64, num_heads: int = 4,
         num_blks: int = 2, dropout: float = 0.2) -> nn.Module:
    return EncoderDecoder(TransformerEncoder(src_vocab, num_hiddens, ffn_num_hiddens, num_heads, num_blks, dropout),
                          TransformerDecoder(tgt_vocab, num_hiddens, ffn_num_hiddens, num_heads, num_blks, dropout))


def _weights(net: nn.Module, num_blks: int) -> dict[str, np.ndarray]:
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    w = {"enc_embedding.weight": sd["encoder.embedding.weight"], "dec_embedding.weight": sd["decoder.embedding.weight"],
         "dec_dense.weight": sd["decoder.dense.weight"], "dec_dense.bias": sd["decoder.dense.bias"]}

    def attention(mine: str, theirs: str) -> None:
        for proj, t in (("q", "W_q"), ("k", "W_k"), ("v", "W_v"), ("out", "W_o")):
            w[f"{mine}.{proj}_weight"] = sd[f"{theirs}.{t}.weight"]

    def block(mine: str, theirs: str, norms: int) -> None:
        for j in range(1, norms + 1):
            w[f"{mine}_addnorm{j}_ln.weight"] = sd[f"{theirs}.addnorm{j}.ln.weight"]
            w[f"{mine}_addnorm{j}_ln.bias"] = sd[f"{theirs}.addnorm{j}.ln.bias"]
        for d in ("dense1", "dense2"):
            w[f"{mine}_ffn_{d}.weight"], w[f"{mine}_ffn_{d}.bias"] = sd[f"{theirs}.ffn.{d}.weight"], sd[f"{theirs}.ffn.{d}.bias"]

    for i in range(num_blks):
        attention(f"enc{i}_attention", f"encoder.blks.block{i}.attention")
        block(f"enc{i}", f"encoder.blks.block{i}", 2)
        attention(f"dec{i}_attention1", f"decoder.blks.block{i}.attention1")
        attention(f"dec{i}_attention2", f"decoder.blks.block{i}.attention2")
        block(f"dec{i}", f"decoder.blks.block{i}", 3)
    return w


def _dry_run(net: nn.Module, src: np.ndarray, lens: np.ndarray, tgt: np.ndarray) -> torch.Tensor:
    return net(torch.from_numpy(src), torch.from_numpy(tgt), torch.from_numpy(lens))


def test_count_is_the_book_s_after_its_lazy_dry_run() -> None:
    # the chapter's defaults; the vocabulary sizes are MTFraEng's, any will do for the comparison
    src, lens, tgt = np.ones((2, 9), np.int64), np.array([9, 3], np.int64), np.ones((2, 9), np.int64)
    net = book(194, 214)
    _dry_run(net, src, lens, tgt)
    want = sum(p.numel() for p in net.parameters())
    assert di.infer_shapes(zoo.transformer(194, 214), [src.shape, lens.shape, tgt.shape]).total_params == want
    model = di.compile(zoo.transformer(194, 214), "torch")
    model.apply_init((src, lens, tgt), key=0)
    assert sum(a.size for a in model.export_weights().values()) == want


@pytest.mark.parametrize("target", ["torch", "numpy"])
def test_outputs_equal_the_book_s(target: str) -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(0, 37, size=(3, 8)), rng.integers(0, 41, size=(3, 6))
    lens = np.array([8, 3, 5], np.int64)
    net = book(37, 41, num_hiddens=32, ffn_num_hiddens=16, dropout=0.0)
    torch.manual_seed(0)
    _dry_run(net, src, lens, tgt)
    for p in net.parameters():  # the lazy layers' dry run leaves them initialized; biases too, to compare them
        nn.init.normal_(p, std=0.3)
    net.train()  # the decoder's causal mask is the book's training mode (dropout 0: nothing random)
    with torch.no_grad():
        want = _dry_run(net, src, lens, tgt).numpy()
    spec = zoo.transformer(37, 41, num_hiddens=32, ffn_num_hiddens=16, dropout=0.0)
    model = di.compile(spec, target)
    model.apply_init((src, lens, tgt), key=0)
    weights = _weights(net, 2)
    assert sorted(weights) == sorted(model.export_weights())
    model.load_weights(weights)
    got = model((src, lens, tgt))
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
