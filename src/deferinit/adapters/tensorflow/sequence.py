"""Keras layers for the sequence specs: stock Keras recurrent layers put together as PyTorch stacks them
(``recurrent``), and small layers where stock Keras has none or takes the input differently.

Each small layer builds its own variables in ``build()`` from the input shape it is first called with:
Keras's own deferred initialization, as a stock layer does. Reshape, Permute and Scale are stock Keras
layers (``Reshape``, ``Permute``, ``Rescaling``) and need nothing here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...layers_seq import GRU, LSTM, RNN

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
from keras import ops
# isort: on

from .containers import Seq

__all__ = ["recurrent", "SelfAttention", "PositionalEncoding", "ClassToken", "PositionEmbedding", "Take", "OneHot"]


def recurrent(s: Any, name: str) -> Any:
    """Keras's own recurrent layers, batch-first with ``return_sequences=True``, one per spec layer (stacked in a
    Sequential, with Dropout between as PyTorch applies it), each wrapped in ``Bidirectional(merge_mode="concat")``
    when bidirectional: layer ``l + 1`` sees both directions of layer ``l``, as in PyTorch. Keras's formulas are
    PyTorch's (checked in the tests): sigmoid recurrent activation (Keras 3's default, not hard_sigmoid); GRU
    with ``reset_after=True`` applies the reset gate to ``W_hh h + b_hh`` and keeps both biases, only its gate
    order differs ((z, r, h) for (r, z, n)); LSTM gates (i, f, c, o) are PyTorch's (i, f, g, o)."""
    kind = {RNN: "simple_rnn", GRU: "gru", LSTM: "lstm"}[type(s)]

    def one(layer_name: str, top: bool = True) -> Any:
        # inside Bidirectional, Keras names the two directions forward_<kind> and backward_<kind>; the top layer
        # returns the last step only where the spec says so (Keras's own return_sequences=False)
        common = dict(use_bias=s.use_bias, return_sequences=s.return_sequences or not top,
                      name=kind if s.bidirectional else layer_name)
        if isinstance(s, GRU):
            rnn = keras.layers.GRU(s.hidden_size, reset_after=True, recurrent_activation="sigmoid", **common)
        elif isinstance(s, LSTM):
            rnn = keras.layers.LSTM(s.hidden_size, recurrent_activation="sigmoid", **common)
        else:
            rnn = keras.layers.SimpleRNN(s.hidden_size, activation=s.activation, **common)
        if s.bidirectional:
            return keras.layers.Bidirectional(rnn, merge_mode="concat", name=layer_name)
        return rnn

    if s.num_layers == 1:
        return one(name)
    stack = []
    for i in range(s.num_layers):
        if i and s.dropout:
            stack.append(keras.layers.Dropout(s.dropout, name=f"dropout{i}"))
        stack.append(one(f"l{i}", i == s.num_layers - 1))
    return Seq(stack, name=name)


class SelfAttention(keras.layers.MultiHeadAttention):  # type: ignore[misc]
    """Keras's MultiHeadAttention called as self-attention on one input, as a layer of a Sequential takes it.

    Keras computes d2l's function exactly: per-head projections ``(D, heads, head_dim)`` whose flattened
    ``(D, H)`` form is d2l's ``W_q`` (heads are consecutive blocks of ``head_dim``, as in ``transpose_qkv``),
    scaled dot-product scores with scale ``1 / sqrt(key_dim)`` = ``1 / sqrt(head_dim)`` (Keras scales the
    queries before the product, d2l the scores after: the same up to rounding), softmax over the keys,
    dropout on the attention weights, and an output projection ``(heads, head_dim, H)``; ``use_bias`` puts a
    bias on all four projections, as d2l's ``bias=`` does. Only the call signature differs: one input, which
    is query, key and value.
    """

    def build(self, input_shape: Any) -> None:
        super().build(input_shape, input_shape)

    def call(self, inputs: Any, training: Any = None) -> Any:  # type: ignore[override]
        return super().call(inputs, inputs, training=training)

    def compute_output_shape(self, input_shape: Any, value_shape: Any = None, key_shape: Any = None) -> Any:
        return super().compute_output_shape(input_shape, input_shape)

    def compute_output_spec(self, inputs: Any, training: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().compute_output_spec(inputs, inputs)


def sinusoidal_table(steps: int, dim: int) -> np.ndarray:
    """d2l's positional encoding ``P`` of shape ``(1, steps, dim)``, computed as the book does in float32."""
    x = np.arange(steps, dtype=np.float32).reshape(-1, 1) / np.power(
        np.float32(10000), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    table = np.zeros((1, steps, dim), np.float32)
    table[:, :, 0::2] = np.sin(x)
    table[:, :, 1::2] = np.cos(x)
    return table


class PositionalEncoding(keras.layers.Layer):  # type: ignore[misc]
    """Adds d2l's sinusoidal table (no parameters; its width is the input's, known at build)."""

    def __init__(self, max_len: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_len = max_len
        self.table: Any = None  # built from the input width

    def build(self, input_shape: Any) -> None:
        self.table = sinusoidal_table(self.max_len, int(input_shape[-1]))

    def call(self, x: Any) -> Any:
        steps = ops.shape(x)[1]  # a tensor under a relaxed (None-length) trace
        table = self.table[:, :steps] if isinstance(steps, int) else ops.convert_to_tensor(self.table)[:, :steps]
        return ops.add(x, ops.cast(table, x.dtype))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "max_len": self.max_len}


class ClassToken(keras.layers.Layer):  # type: ignore[misc]
    """Prepends a learned ``(1, 1, D)`` token to every sequence (d2l's ViT ``cls_token``, zeros at first)."""

    def build(self, input_shape: Any) -> None:
        self.token = self.add_weight(shape=(1, 1, int(input_shape[-1])), initializer="zeros", name="cls_token")

    def call(self, x: Any) -> Any:
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, self.token.shape[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        steps = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], steps, input_shape[2])


class PositionEmbedding(keras.layers.Layer):  # type: ignore[misc]
    """Adds a learned ``(1, T, D)`` position embedding; T and D both come from the input at build.

    Its default initializer is the standard normal of d2l's ``torch.randn`` (Keras's ``RandomNormal``
    defaults to a standard deviation of 0.05)."""

    def __init__(self, embeddings_initializer: Any = None, max_len: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_len = max_len
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=1.0))

    def build(self, input_shape: Any) -> None:
        self.embeddings = self.add_weight(shape=(1, self.max_len or int(input_shape[1]), int(input_shape[2])),
                                          initializer=self.embeddings_initializer, name="pos_embedding")

    def call(self, x: Any) -> Any:
        table = self.embeddings if self.max_len is None else self.embeddings[:, :ops.shape(x)[1]]
        return ops.add(x, ops.cast(table, x.dtype))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


class Take(keras.layers.Layer):  # type: ignore[misc]
    """``x[:, index]`` along ``axis`` (the axis disappears): d2l's ``X[:, 0]`` for the class token."""

    def __init__(self, index: int, axis: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index, self.axis = index, axis

    def call(self, x: Any) -> Any:
        return ops.take(x, self.index, axis=self.axis)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[:self.axis]) + tuple(input_shape[self.axis + 1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "index": self.index, "axis": self.axis}


class OneHot(keras.layers.Layer):  # type: ignore[misc]
    """Integer ids -> float32 one-hot vectors (d2l's ``tf.one_hot(X, vocab_size)``)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def call(self, x: Any) -> Any:
        # a symbolic build feeds float placeholders; data are integer ids
        return ops.one_hot(ops.cast(x, "int32"), self.num_classes, dtype="float32")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape) + (self.num_classes,)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype="float32")

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}
