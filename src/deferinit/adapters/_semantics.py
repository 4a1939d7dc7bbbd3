"""What every backend refuses the same way, before its framework sees the data, where the frameworks disagree.

* Token ids out of range, at the layer they reach. Frameworks disagree about an id outside ``[0, size)``
  (measured: numpy wraps -1 around and raises on 50, torch raises, TensorFlow raises on 50 but reads -1, JAX reads
  NaN for 50, MXNet clamps, and TensorFlow's, JAX's and MXNet's one-hot give a row of zeros). So every
  ``Embedding`` and ``OneHot`` position that the model's integer input reaches is checked, wherever it sits: after
  ``Identity``, ``Dropout``, ``Reshape``, ``Permute``, ``Flatten`` or ``Take`` (the layers that pass ids on), in
  every branch of a ``Concat`` or ``Residual``. Only ``Take`` changes which ids arrive, so the ids are routed
  through the layers before it; for the rest one min/max of the input serves every position.
* A BatchNorm's input rank, fixed when the model is initialized. torch builds BatchNorm1d/2d/3d and Keras an input
  spec for one rank, where numpy, JAX and MXNet take any; every other layer whose rank the rules leave free
  (Dense, LayerNorm, Embedding, OneHot, activations, Flatten, Reshape...) takes any rank in every framework
  (measured on all five), so the rule is BatchNorm's alone.
* A non-finite training batch reaching a BatchNorm: every framework would average the NaN into the running
  statistics, silently, and every later inference call would return NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError, UnsupportedLayerError, fmt_shape, where
from ..layers import BatchNorm, Flatten, Leaf
from ..layers_seq import Permute, Reshape, Take
from ..merges import Merge
from ..shapes import Inference, Node
from ..spec import Concat, Residual, Sequential

__all__ = ["IdCheck", "id_checks", "check_ids", "batch_norms", "batch_norm_rank_error", "check_finite_batch"]

_MOVES = (Take, Reshape, Permute, Flatten)


@dataclass(frozen=True)
class IdCheck:
    """One position taking ids: its path, layer type and table size, and the layers the ids pass on the way."""

    path: str
    kind: str
    size: int
    route: tuple[Leaf, ...] = ()


def id_checks(root: Node) -> tuple[IdCheck, ...]:
    """Every Embedding/OneHot position that receives the model input's integers, in the order of the walk."""
    found: list[IdCheck] = []
    _route(root, root.path, (), found)
    return tuple(IdCheck(c.path, c.kind, c.size, c.route if any(isinstance(m, Take) for m in c.route) else ())
                 for c in found)


def _route(node: Node, path: str, route: tuple[Leaf, ...] | None, found: list[IdCheck]
           ) -> tuple[Leaf, ...] | None:
    """The route of the ids after ``node``, or None once they have become floats (module level: a recursive
    closure is a reference cycle)."""
    if route is None:
        return None
    target = node.tied_to or node
    layer = target.layer
    if isinstance(layer, Leaf):
        if layer.accepts == "int":
            size = getattr(layer, "num_embeddings", getattr(layer, "num_classes", None))
            found.append(IdCheck(path, type(layer).__name__, int(size), route))  # type: ignore[arg-type]
            return None
        if layer.accepts != "any":
            return None
        return route + (layer,) if isinstance(layer, _MOVES) else route
    # a tied container has no subtree of its own: walk the first use's, named at this position
    children = [(child, path + child.path[len(target.path):]) for child in target.children]
    if isinstance(layer, Sequential):
        for child, child_path in children:
            route = _route(child, child_path, route, found)
        return route
    if isinstance(layer, (Residual, Concat, Merge)):
        for child, child_path in children:
            _route(child, child_path, route, found)
    return None


def _move(layer: Leaf, ids: np.ndarray) -> np.ndarray:
    """The ids after a layer that passes them on (views: nothing is copied)."""
    if isinstance(layer, Take):
        return np.take(ids, layer.index, axis=layer.axis)
    if isinstance(layer, Reshape):
        return ids.reshape((ids.shape[0],) + tuple(layer.shape))
    if isinstance(layer, Permute):
        return ids.transpose((0,) + tuple(layer.dims))
    return ids.reshape(ids.shape[0], -1)


def check_ids(checks: tuple[IdCheck, ...], ids: Any) -> None:
    """ShapeMismatchError naming the first position whose ids fall outside ``[0, size)``."""
    arr = np.asarray(ids)
    if not arr.size or arr.dtype.kind not in "iu":
        return
    ranges: dict[tuple, tuple[int, int]] = {}
    for check in checks:
        span = ranges.get(check.route)
        if span is None:
            seen = arr
            for layer in check.route:
                seen = _move(layer, seen)
            # no ids at all: the empty range (0, -1), where nothing is out of range
            span = ranges[check.route] = (int(seen.min()), int(seen.max())) if seen.size else (0, -1)
        if span[0] < 0 or span[1] >= check.size:
            raise ShapeMismatchError(f"layer '{check.path}' ({check.kind}) expected indices in [0, {check.size}), "
                                     f"received values from {span[0]} to {span[1]}; nothing was run")


def batch_norms(root: Node, backend: str) -> tuple[Node, ...]:
    """Every BatchNorm position, in the order of the walk (tied ones too: their input rank is fixed at init), and,
    in the same walk (one per compile), the refusals of what a list spec cannot run on ``backend``: causal
    ``MultiHeadAttention`` where it is not masked (refused by name rather than computed unmasked), and ``Attend``."""
    norms = []
    for node in root.walk():
        layer = (node.tied_to or node).layer
        if isinstance(layer, BatchNorm):
            norms.append(node)
        elif node.tied_to is None and type(layer).__name__ == "Attend":
            raise UnsupportedLayerError(f"layer '{node.path}' (Attend) on backend {backend}: Attend reuses an "
                                        f"embedding's table, which list specs cannot pass along; use a graph spec "
                                        f"(LazyModel(inputs=, outputs=))")
        elif node.tied_to is None and getattr(layer, "causal", False) is True and backend not in ("numpy", "torch"):
            raise UnsupportedLayerError(f"layer '{node.path}' (MultiHeadAttention) on backend {backend}: causal=True "
                                        f"is not supported on this backend yet (numpy and torch mask it)")
    return tuple(norms)


def batch_norm_rank_error(positions: tuple[Node, ...], before: Inference, now: Inference) -> ShapeMismatchError | None:
    """The error naming the first BatchNorm whose input rank differs from the one it was initialized with, if any."""
    for node in positions:
        got, want = now.inputs.get(node.path), before.inputs.get(node.path)
        if got is not None and want is not None and len(got) != len(want):
            return ShapeMismatchError(
                f"{where(node.path, node.layer)} expected a rank-{len(want)} input, as when the model was initialized "
                f"(it received {fmt_shape(want)} from input shape {fmt_shape(before.report.input_shape)}), received "
                f"rank {len(got)} {fmt_shape(got)} (input shape {fmt_shape(now.report.input_shape)}); a BatchNorm's "
                f"input rank is fixed when the model is initialized: call apply_init with an input of this rank (then "
                f"load_weights again to keep the weights)")
    return None


def check_finite_batch(positions: tuple[Node, ...], batch: Any) -> None:
    """ShapeMismatchError when a training batch holds NaN or infinity and would reach a BatchNorm's statistics."""
    arr = np.asarray(batch)
    if not positions or arr.dtype.kind != "f" or np.isfinite(arr).all():
        return
    node = positions[0]
    raise ShapeMismatchError(f"{where(node.path, node.layer)} expected finite values in a training batch (its running "
                             f"statistics would become NaN), received {int(arr.size - np.isfinite(arr).sum())} NaN or "
                             f"infinite value(s) in the input; nothing was run or changed. Clean the batch, or call "
                             f"with training=False")
