"""Language models of the zoo as graph specs (``deferinit.zoo.gpt2``, ``deferinit.zoo.bert_base``).

Each is written layer for layer after the ``transformers`` reference (``GPT2LMHeadModel``, ``BertModel``) with
its defaults, so the parameter counts are the reference's (124,439,808 and 109,482,240) and the reference's
weights load into the spec by a renaming (see ``tests/backends/torch/test_zoo_text_torch.py``):

* attention is deferinit's ``MultiHeadAttention`` (d2l's ``W_q``, ``W_k``, ``W_v``, ``W_o`` with biases): GPT-2's
  fused ``c_attn`` is those three projections side by side, and its ``-inf``-like causal mask and BERT's
  additive padding mask weigh masked keys exactly 0 as d2l's -1e6 does;
* learned positions are ``PositionEmbedding(max_len=)``: a ``(1, max_len, D)`` table whose first T rows are
  added (``wpe``, BERT's ``position_embeddings``);
* GPT-2's head is ``Attend(wte)``, the tied projection (no parameters of its own); BERT's pooler is
  ``Dense(tanh)`` on the first token (``Take(0)``).

Dropout is left out: the references apply it only in training, and inference outputs are what the tests compare.
"""

from __future__ import annotations

from typing import Any

from .graph import Input, add
from .layers import Dense, Dropout, Embedding, LayerNorm
from .layers_graph import Attend
from .layers_seq import MultiHeadAttention, PositionalEncoding, PositionEmbedding, Scale, Take
from .spec import LazyModel

__all__ = ["gpt2", "bert_base", "transformer"]


def transformer(src_vocab_size: int, tgt_vocab_size: int, num_hiddens: int = 256, ffn_num_hiddens: int = 64,
                num_heads: int = 4, num_blks: int = 2, dropout: float = 0.2, use_bias: bool = False) -> LazyModel:
    """d2l's encoder-decoder Transformer (chapter "The Transformer Architecture", PyTorch), with the chapter's
    defaults (the vocabulary sizes are the data's). Inputs ``src`` (int64 ``(N, Ts)``), ``src_valid_lens``
    (int64 ``(N,)``: the encoder's keys and the decoder's cross-attention keys past each length are masked) and
    ``tgt`` (int64 ``(N, Tt)``, the decoder input); output the logits ``(N, Tt, tgt_vocab_size)``. The decoder's
    self-attention is causal: the book's training-mode ``dec_valid_lens = arange(1, Tt + 1)``, i.e. the whole
    target sequence at once (teacher forcing), not the step-by-step cache of prediction."""
    src = Input(name="src", dtype="int64")
    lens = Input(name="src_valid_lens", dtype="int64")
    tgt = Input(name="tgt", dtype="int64")

    def embed(ids: Any, vocab: int, name: str) -> Any:  # X * sqrt(d), sinusoids, dropout
        x = Scale(float(num_hiddens) ** 0.5, name=f"{name}_scale")(Embedding(vocab, num_hiddens, name=f"{name}_embedding")(ids))
        return Dropout(dropout, name=f"{name}_pos_dropout")(PositionalEncoding(name=f"{name}_pos_encoding")(x))

    def add_norm(x: Any, y: Any, name: str) -> Any:  # d2l's AddNorm: ln(dropout(Y) + X)
        return LayerNorm(name=f"{name}_ln")(add(Dropout(dropout, name=f"{name}_dropout")(y), x))

    def ffn(x: Any, name: str) -> Any:
        return Dense(num_hiddens, name=f"{name}_dense2")(Dense(ffn_num_hiddens, activation="relu", name=f"{name}_dense1")(x))

    def attention(name: str, causal: bool = False) -> MultiHeadAttention:
        return MultiHeadAttention(num_hiddens, num_heads, use_bias=use_bias, dropout=dropout, causal=causal, name=name)

    x = embed(src, src_vocab_size, "enc")
    for i in range(num_blks):
        b = f"enc{i}"
        x = add_norm(x, attention(f"{b}_attention")(x, x, x, valid_lens=lens), f"{b}_addnorm1")
        x = add_norm(x, ffn(x, f"{b}_ffn"), f"{b}_addnorm2")
    y = embed(tgt, tgt_vocab_size, "dec")
    for i in range(num_blks):
        b = f"dec{i}"
        y = add_norm(y, attention(f"{b}_attention1", causal=True)(y, y, y), f"{b}_addnorm1")
        y = add_norm(y, attention(f"{b}_attention2")(y, x, x, valid_lens=lens), f"{b}_addnorm2")
        y = add_norm(y, ffn(y, f"{b}_ffn"), f"{b}_addnorm3")
    return LazyModel(inputs=[src, lens, tgt], outputs=Dense(tgt_vocab_size, name="dec_dense")(y))


def gpt2(n_layer: int = 12, *, vocab_size: int = 50257, n_positions: int = 1024, n_embd: int = 768, n_head: int = 12,
         n_inner: int | None = None, layer_norm_epsilon: float = 1e-5) -> LazyModel:
    """GPT-2 (``transformers.GPT2LMHeadModel(GPT2Config())``): pre-LayerNorm blocks with causal attention and a
    tanh-GELU MLP, learned positions, and the output projection tied to the token embedding. Input
    ``input_ids`` (int64, ``(N, T)``, ``T <= n_positions``); output the logits ``(N, T, vocab_size)``."""
    ids = Input(name="input_ids", dtype="int64")
    wte = Embedding(vocab_size, n_embd, name="wte")
    h = PositionEmbedding(max_len=n_positions, name="wpe")(wte(ids))
    for i in range(n_layer):
        x = LayerNorm(eps=layer_norm_epsilon, name=f"h{i}_ln_1")(h)
        h = add(h, MultiHeadAttention(n_embd, n_head, use_bias=True, causal=True, name=f"h{i}_attn")(x, x, x))
        x = LayerNorm(eps=layer_norm_epsilon, name=f"h{i}_ln_2")(h)
        x = Dense(n_inner or 4 * n_embd, activation="gelu_tanh", name=f"h{i}_mlp_c_fc")(x)
        h = add(h, Dense(n_embd, name=f"h{i}_mlp_c_proj")(x))
    h = LayerNorm(eps=layer_norm_epsilon, name="ln_f")(h)
    return LazyModel(inputs=ids, outputs=Attend(wte, name="lm_head")(h))


def bert_base(*, vocab_size: int = 30522, hidden_size: int = 768, num_hidden_layers: int = 12,
              num_attention_heads: int = 12, intermediate_size: int = 3072, max_position_embeddings: int = 512,
              type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, pooler: bool = True) -> LazyModel:
    """BERT-base (``transformers.BertModel(BertConfig())``): post-LayerNorm encoder layers with an exact-GELU
    MLP. Inputs ``input_ids`` and ``token_type_ids`` (int64, ``(N, T)``) and ``valid_lens`` (int64, ``(N,)``:
    the keys past each sequence's length are masked, as an attention mask of ``T`` ones then zeros does);
    outputs the last hidden state ``(N, T, hidden_size)`` and, with ``pooler``, the pooled ``(N, hidden_size)``."""
    ids = Input(name="input_ids", dtype="int64")
    types = Input(name="token_type_ids", dtype="int64")
    lens = Input(name="valid_lens", dtype="int64")
    h = add(Embedding(vocab_size, hidden_size, name="word_embeddings")(ids),
            Embedding(type_vocab_size, hidden_size, name="token_type_embeddings")(types))
    h = PositionEmbedding(max_len=max_position_embeddings, name="position_embeddings")(h)
    h = LayerNorm(eps=layer_norm_eps, name="embeddings_LayerNorm")(h)
    for i in range(num_hidden_layers):
        a = MultiHeadAttention(hidden_size, num_attention_heads, use_bias=True, name=f"layer{i}_attention")(
            h, h, h, valid_lens=lens)
        h = LayerNorm(eps=layer_norm_eps, name=f"layer{i}_attention_LayerNorm")(add(h, a))
        x = Dense(intermediate_size, activation="gelu", name=f"layer{i}_intermediate")(h)
        h = LayerNorm(eps=layer_norm_eps, name=f"layer{i}_output_LayerNorm")(add(h, Dense(hidden_size, name=f"layer{i}_output")(x)))
    if not pooler:
        return LazyModel(inputs=[ids, types, lens], outputs=h)
    pooled = Dense(hidden_size, activation="tanh", name="pooler")(Take(0, name="first_token")(h))
    return LazyModel(inputs=[ids, types, lens], outputs=[h, pooled])
