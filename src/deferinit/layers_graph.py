"""Layers that only make sense beside another layer of the same graph: :class:`Attend`, the tied output
projection of a language model (``h @ emb.weight.T``: GPT-2's head, d2l's weight tying)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .layers_base import Leaf, ParamSpec, RuleContext
from .layers_norm import Embedding
from .spec import Shape, _bad

__all__ = ["Attend", "embedding_path"]


@dataclass(frozen=True, eq=False, repr=False)
class Attend(Leaf):
    """``h @ embedding.weight.T``: logits over the vocabulary from the embedding's own table. No parameters of
    its own: the table is reported once, under the embedding. Used in graph specs, where the embedding is
    called too (``Attend(emb)(h)`` after ``emb(tokens)``)."""

    embedding: Embedding

    def validate(self) -> None:
        if not isinstance(self.embedding, Embedding):
            raise _bad("Attend", "embedding", self.embedding, "the deferinit.Embedding whose table it reuses")

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        if not shape or shape[-1] != self.embedding.dim:
            raise ctx.mismatch(f"inputs whose last dim is the embedding's dim {self.embedding.dim}",
                               f"shape {tuple(shape)}")
        return tuple(shape[:-1]) + (self.embedding.num_embeddings,), {}


def embedding_path(root: Any, layer: Attend) -> str:
    """The canonical path of the embedding an Attend reuses (its first use in the plan)."""
    for node in root.walk():
        if node.tied_to is None and node.layer is layer.embedding:
            return str(node.path)
    from .errors import SpecError

    raise SpecError("Attend: its embedding is not used in the spec; call the embedding on the tokens too")
