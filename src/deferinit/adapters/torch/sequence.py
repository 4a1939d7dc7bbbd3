"""torch modules for the sequence layers (layers_seq.py; their builders are in ``leaves.py``), in the d2l book's PyTorch idiom.

Every input-dependent dim is deferred with torch's own mechanism, ``LazyModuleMixin``: a module holds
``UninitializedParameter``/``UninitializedBuffer`` until the dry run's pre-forward hook calls its
``initialize_parameters``, then becomes a plain module through ``cls_to_become`` (as ``nn.LazyLinear``
becomes ``nn.Linear``). So no entry here is ``source="reference"``:

* ``LazyRNN``/``LazyGRU``/``LazyLSTM`` become plain ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (``batch_first=True``).
  torch has no lazy recurrent module; the alternative, sizing ``input_size`` from ``inference.inputs``, would
  take the dim from the reference rules instead of torch's dry run. This one is small (torch's own
  parameter names and shapes, torch's own ``reset_parameters``), and a d2l init function testing
  ``type(m) == nn.GRU`` still sees an ``nn.GRU``. The output is ``output, h_n``: a ``"<seg>:output"`` step
  keeps ``output`` (d2l: ``rnn_outputs, _ = self.rnn(embs)``).
* ``MultiHeadAttention`` is d2l's: four ``nn.LazyLinear`` named ``W_q``, ``W_k``, ``W_v``, ``W_o`` (so a d2l
  model's ``state_dict`` loads as is) and d2l's ``transpose_qkv`` / ``bmm`` / softmax arithmetic.
* ``ClassToken`` (zeros, as d2l's ``cls_token``) and ``PositionEmbedding`` (``torch.randn``, as d2l's
  ``pos_embedding``) take D, and T, from the dry run; d2l computes them by hand from the image and patch sizes.
* ``PositionalEncoding`` holds d2l's sinusoidal table as a non-persistent buffer sized on the dry run
  (d2l needs ``num_hiddens`` up front).
"""

# mypy: allow-subclassing-any
# (torch is not installed in the lint session: nn.Module is Any there)
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from .modules import F32

__all__ = ["LazyRNN", "LazyGRU", "LazyLSTM", "MultiHeadAttentionModule",
           "SinusoidalEncoding", "LazySinusoidalEncoding", "ClassTokenModule", "LazyClassToken",
           "PositionEmbeddingModule", "LazyPositionEmbedding", "RecurrentOutput", "ReshapeModule", "PermuteModule",
           "ScaleModule", "TakeModule", "OneHotModule"]


# --------------------------------------------------------------------------------------------- recurrent
class _LazyRecurrent(LazyModuleMixin):
    """``input_size`` deferred to the first call; everything else is torch's own RNNBase."""

    def __init__(self, hidden_size: int, **kwargs: Any) -> None:
        # RNNBase needs an input size > 0 and allocates and draws every weight: built on meta with a stand-in
        # size, that allocates nothing and leaves the global RNG alone; then every tensor is uninitialized.
        super().__init__(1, hidden_size, batch_first=True, device="meta", dtype=F32, **kwargs)  # type: ignore[call-arg]
        for name in self._flat_weights_names:  # type: ignore[attr-defined]
            setattr(self, name, UninitializedParameter(dtype=F32))  # RNNBase.__setattr__ keeps _flat_weights
        self.input_size = 0

    def _shape(self, name: str) -> tuple[int, ...]:
        h = self.hidden_size  # type: ignore[attr-defined]
        gate = {"LSTM": 4, "GRU": 3}.get(self.mode, 1) * h  # type: ignore[attr-defined]
        if name.startswith("bias"):
            return (gate,)
        if name.startswith("weight_hh"):
            return (gate, h)
        layer = int(name[len("weight_ih_l"):].split("_")[0])
        return (gate, self.input_size if layer == 0 else h * (2 if self.bidirectional else 1))  # type: ignore[attr-defined]

    def initialize_parameters(self, input: torch.Tensor, hx: Any = None) -> None:  # noqa: A002 - torch's name
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.input_size = input.shape[-1]
                for name in self._flat_weights_names:  # type: ignore[attr-defined]
                    getattr(self, name).materialize(self._shape(name))
                self._init_flat_weights()  # type: ignore[attr-defined]  # tensors may have been re-homed
                self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            super().reset_parameters()  # type: ignore[misc]


class LazyRNN(_LazyRecurrent, nn.RNN):
    cls_to_become = nn.RNN


class LazyGRU(_LazyRecurrent, nn.GRU):
    cls_to_become = nn.GRU


class LazyLSTM(_LazyRecurrent, nn.LSTM):
    cls_to_become = nn.LSTM


class RecurrentOutput(nn.Module):
    """``(output, h_n) -> output``."""

    def forward(self, x: tuple) -> torch.Tensor:
        return x[0]


# --------------------------------------------------------------------------------------------- attention
class MultiHeadAttentionModule(nn.Module):
    """d2l's ``MultiHeadAttention`` used as self-attention (no ``valid_lens``: d2l's ``masked_softmax`` is then a
    plain softmax over the last axis); the attention dropout is d2l's ``DotProductAttention.dropout``."""

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float = 0.0, bias: bool = False,
                 causal: bool = False) -> None:
        super().__init__()
        self.num_heads, self.causal = num_heads, causal
        # d2l divides by math.sqrt(queries.shape[-1]): the same number, known here (and torch.fx can trace it)
        self.scale = math.sqrt(num_hiddens // num_heads)
        self.W_q = nn.LazyLinear(num_hiddens, bias=bias, dtype=F32)
        self.W_k = nn.LazyLinear(num_hiddens, bias=bias, dtype=F32)
        self.W_v = nn.LazyLinear(num_hiddens, bias=bias, dtype=F32)
        self.W_o = nn.LazyLinear(num_hiddens, bias=bias, dtype=F32)
        self.dropout = nn.Dropout(dropout)

    def transpose_qkv(self, X: torch.Tensor) -> torch.Tensor:
        X = X.reshape(X.shape[0], X.shape[1], self.num_heads, -1)
        X = X.permute(0, 2, 1, 3)
        return X.reshape(-1, X.shape[2], X.shape[3])

    def transpose_output(self, X: torch.Tensor) -> torch.Tensor:
        X = X.reshape(-1, self.num_heads, X.shape[1], X.shape[2])
        X = X.permute(0, 2, 1, 3)
        return X.reshape(X.shape[0], X.shape[1], -1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        queries = self.transpose_qkv(self.W_q(X))
        keys = self.transpose_qkv(self.W_k(X))
        values = self.transpose_qkv(self.W_v(X))
        scores = torch.bmm(queries, keys.transpose(1, 2)) / self.scale
        if self.causal:  # GPT-2: position i attends to positions <= i (masked as d2l's masked_softmax, -1e6)
            steps = torch.arange(scores.shape[1], device=scores.device)
            scores = scores.masked_fill(steps[None, :] > steps[:, None], -1e6)
        weights = F.softmax(scores, dim=-1)
        return self.W_o(self.transpose_output(torch.bmm(self.dropout(weights), values)))

    def reset_parameters(self) -> None:  # in the dry run's order: q, k, v, then the output projection
        for m in (self.W_q, self.W_k, self.W_v, self.W_o):
            m.reset_parameters()


# --------------------------------------------------------------------------------------------- tokens, positions
class SinusoidalEncoding(nn.Module):
    """Adds d2l's sinusoidal table ``P`` (a non-persistent buffer: computed, never saved)."""

    def __init__(self, max_len: int = 1000, num_hiddens: int = 0) -> None:
        super().__init__()
        self.max_len, self.num_hiddens = max_len, num_hiddens
        self.register_buffer("P", torch.zeros((1, max_len, num_hiddens)), persistent=False)

    def reset_parameters(self) -> None:
        if self.P.is_meta:  # type: ignore[union-attr]
            return
        # d2l's arithmetic, in float32
        d = self.num_hiddens
        X = torch.arange(self.max_len, dtype=torch.float32).reshape(-1, 1) / torch.pow(
            10000, torch.arange(0, d, 2, dtype=torch.float32) / d)
        with torch.no_grad():
            self.P[:, :, 0::2] = torch.sin(X)  # type: ignore[index]
            self.P[:, :, 1::2] = torch.cos(X)  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.P.narrow(1, 0, x.shape[1])  # type: ignore[union-attr]  # d2l: P[:, :T, :]

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, num_hiddens={self.num_hiddens}"


class LazySinusoidalEncoding(LazyModuleMixin, SinusoidalEncoding):
    cls_to_become = SinusoidalEncoding

    def __init__(self, max_len: int = 1000) -> None:
        super().__init__(max_len, 0)
        self.P = UninitializedBuffer(dtype=F32, persistent=False)

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            self.num_hiddens = x.shape[-1]
            self.P.materialize((1, self.max_len, self.num_hiddens))  # type: ignore[union-attr]
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            super().reset_parameters()


class ClassTokenModule(nn.Module):
    """d2l's ``cls_token``: ``cat((weight.expand(N, -1, -1), x), 1)``; zeros at first."""

    def __init__(self, num_hiddens: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, num_hiddens))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.weight.expand(x.shape[0], -1, -1), x), 1)


class LazyClassToken(LazyModuleMixin, ClassTokenModule):
    cls_to_become = ClassTokenModule

    def __init__(self) -> None:
        super().__init__(0)
        self.weight = UninitializedParameter(dtype=F32)

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.materialize((1, 1, x.shape[-1]))
                self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            super().reset_parameters()


class PositionEmbeddingModule(nn.Module):
    """d2l's learned ``pos_embedding`` ``(1, T, D)``, drawn with ``torch.randn`` as in the book."""

    def __init__(self, num_steps: int = 0, num_hiddens: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_steps, num_hiddens))
        self.max_len: int | None = None

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a max_len table (GPT-2's wpe) is longer than the input: its first T rows. Decided by the module's own
        # setting, not by the data, so torch.fx traces it
        return x + (self.weight if self.max_len is None else self.weight[:, :x.shape[1]])


class LazyPositionEmbedding(LazyModuleMixin, PositionEmbeddingModule):
    cls_to_become = PositionEmbeddingModule

    def __init__(self, max_len: int | None = None) -> None:
        super().__init__(0, 0)
        self.weight = UninitializedParameter(dtype=F32)
        self.max_len = max_len

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.materialize((1, self.max_len or x.shape[1], x.shape[2]))
                self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            super().reset_parameters()


# --------------------------------------------------------------------------------------------- stateless
class ReshapeModule(nn.Module):
    def __init__(self, shape: tuple) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class PermuteModule(nn.Module):
    """Keras numbering: ``dims`` count the non-batch axes from 1."""

    def __init__(self, dims: tuple) -> None:
        super().__init__()
        self.dims = (0,) + tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class ScaleModule(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class TakeModule(nn.Module):
    def __init__(self, index: int, axis: int) -> None:
        super().__init__()
        self.index, self.axis = index, axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.axis, self.index)

    def extra_repr(self) -> str:
        return f"index={self.index}, axis={self.axis}"


class OneHotModule(nn.Module):
    """d2l's ``F.one_hot(X, vocab_size).type(torch.float32)`` (``one_hot`` takes int64 only)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.long(), self.num_classes).to(F32)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
