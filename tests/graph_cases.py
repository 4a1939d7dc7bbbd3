"""Graph specs (``LazyModel(inputs=, outputs=)``) with their inputs, for parity: the contract test
(tests/contract/test_graph_parity.py) and the cross-process matrix (tests/parity_matrix.py) run the same ones.
Each is small: parity's finite differences run the reference forward twice per parameter checked."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import deferinit as di
from deferinit import zoo


def _two_inputs() -> di.LazyModel:
    """Two inputs (tokens and valid_lens), masked self-attention, a Dense called twice, two outputs."""
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    h = di.Embedding(11, 8, name="emb")(tokens)
    a = di.MultiHeadAttention(8, 2, name="attn")(h, h, h, valid_lens=lens)
    h = di.LayerNorm(name="ln")(di.add(h, a))
    ffn = di.Dense(8, name="ffn")
    return di.LazyModel(inputs=[tokens, lens], outputs=[ffn(di.Tanh()(ffn(h))), a])


def _causal() -> di.LazyModel:
    """Causal self-attention and a head tied to the embedding (Attend)."""
    tokens = di.Input(name="tokens", dtype="int64")
    wte = di.Embedding(13, 8, name="wte")
    h = wte(tokens)
    h = di.add(h, di.MultiHeadAttention(8, 2, causal=True, name="attn")(di.LayerNorm(name="ln1")(h)))
    return di.LazyModel(inputs=tokens, outputs=di.Attend(wte)(di.LayerNorm(name="ln_f")(h)))


def _gpt2() -> di.LazyModel:
    return zoo.gpt2(2, vocab_size=40, n_positions=12, n_embd=8, n_head=2)


def _bert() -> di.LazyModel:
    return zoo.bert_base(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=12)


def _batchnorm() -> di.LazyModel:
    """Two float inputs, a convolution and BatchNorm inside a Residual, a BatchNorm called on both branches (its
    statistics move twice per training step), two outputs: parity compares the training-mode step too."""
    image, side = di.Input(name="image"), di.Input(name="side")
    body = di.Residual(di.Sequential([di.Conv2D(2, 3, padding="same"), di.BatchNorm(), di.ReLU()]), name="block")
    img = di.Dense(4, name="img")(di.Flatten()(di.GlobalAvgPool2D()(body(image))))
    bn = di.BatchNorm(name="bn")
    return di.LazyModel(inputs=[image, side], outputs=[di.add(bn(img), bn(di.Dense(4, name="side_fc")(side))), img])


#: name -> (spec maker, inputs maker)
GRAPH_CASES: dict[str, tuple[Callable[[], di.LazyModel], Callable[[np.random.Generator], Any]]] = {
    "graph_two_inputs": (_two_inputs, lambda r: (r.integers(0, 11, (2, 5)), np.array([3, 5]))),
    "graph_causal": (_causal, lambda r: r.integers(0, 13, (2, 6))),
    "graph_gpt2": (_gpt2, lambda r: r.integers(0, 40, (2, 6))),
    "graph_batchnorm": (_batchnorm, lambda r: (r.standard_normal((3, 2, 5, 5)).astype(np.float32),
                                               r.standard_normal((3, 6)).astype(np.float32))),
    "graph_bert": (_bert, lambda r: (r.integers(0, 30, (2, 6)), r.integers(0, 2, (2, 6)), np.array([4, 6]))),
}


def graph_case(name: str) -> tuple[di.LazyModel, Any]:
    make, data = GRAPH_CASES[name]
    return make(), data(np.random.default_rng(0))
