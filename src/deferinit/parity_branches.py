"""Which branch each framework's forward took at the non-smooth points of a list spec, read from its parity artifact.

A ReLU input within float32 rounding of 0, or two entries of a max-pool window that close, can land on either side
on different frameworks; their gradients then differ through every layer before it, each right for the values it
computed. :func:`deferinit.parity.compare_artifacts` compares gradients pairwise only between frameworks whose
branches agree (:func:`crossings`), and reports the others. The branches come from each artifact's own
intermediate outputs: for every ReLU/ReLU6 input (a layer whose next output is ``max(x, 0)`` or ``clip(x, 0, 6)``
of its own), which side of each kink every value lies on; for every ``MaxPool2D``, which entry each window takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layers import MaxPool2D
from .parity_artifacts import Artifact
from .shapes import plan
from .spec import LazyModel, Sequential

__all__ = ["kink_inputs", "branches_of", "crossings", "pool_key"]


def kink_inputs(intermediates: dict[str, np.ndarray]) -> dict[str, tuple[float, ...]]:
    """The layers whose output feeds a ReLU or ReLU6 layer (the next output in execution order is ``max(x, 0)`` or
    ``clip(x, 0, 6)`` of theirs), each with its activation's kinks."""
    keys = list(intermediates)
    found: dict[str, tuple[float, ...]] = {}
    for before, after in zip(keys, keys[1:]):
        x, y = np.asarray(intermediates[before]), np.asarray(intermediates[after])
        if x.shape != y.shape or x.dtype.kind != "f" or not (x < 0).any():
            continue
        if np.array_equal(y, np.maximum(x, 0)):
            found[before] = (0.0,)
        elif (x > 6).any() and np.array_equal(y, np.clip(x, 0, 6)):
            found[before] = (0.0, 6.0)
    return found


def _pool_inputs(art: Artifact) -> dict[str, tuple[MaxPool2D, np.ndarray]]:
    """Each MaxPool2D position of a list spec with the input ``art``'s own forward gave it (from its intermediates:
    a Sequential feeds each child the one before's output, any other container each child its own input)."""
    if isinstance(art.input, tuple) or not art.intermediates:
        return {}
    try:
        root = plan(LazyModel.from_dict(art.spec))
    except Exception:  # noqa: BLE001 - a spec this version cannot read has no pools to look at
        return {}
    if getattr(root.layer, "inputs", None):  # a graph spec: its children are not a chain
        return {}
    found: dict[str, tuple[MaxPool2D, np.ndarray]] = {}

    def visit(node: Any, x: np.ndarray | None) -> None:
        chain = isinstance(node.layer, Sequential)
        for child in node.children:
            if isinstance(child.layer, MaxPool2D) and x is not None:
                found[child.path] = (child.layer, x)
            visit(child, x)
            if chain:
                x = art.intermediates.get(child.path)

    visit(root, np.asarray(art.input))
    return found


def _argmax_windows(pool: MaxPool2D, x: np.ndarray, channels_last: bool) -> np.ndarray:
    """Which entry of each window a max pool takes (the first of exact ties), with -inf padding and ceil mode."""
    from .layers_extra import pool_out

    if channels_last:
        x = np.moveaxis(x, -1, 1)
    pads = []
    for size, k, st, pd in zip(x.shape[-2:], pool.pool_size, pool.strides, pool.padding):
        n = pool_out(size, k, st, pd, pool.ceil_mode)
        pads.append((pd, pd + max(0, (n - 1) * st + k - (size + 2 * pd))))  # a ceil-mode window past the end
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads], constant_values=-np.inf)
    (kh, kw), (sh, sw) = pool.pool_size, pool.strides
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    taken: np.ndarray = win.reshape(*win.shape[:4], kh * kw).argmax(-1)
    return taken


def branches_of(art: Artifact, kinks: dict[str, tuple[float, ...]], channels_last: bool) -> dict[str, np.ndarray]:
    """Which branch every non-smooth op took in ``art``'s own forward: the side of each kink of every ReLU/ReLU6
    input (keyed by the layer's path), and the entry every max-pool window took (its gradient goes there alone; keyed
    by :func:`pool_key`)."""
    out = {}
    for layer, ks in kinks.items():
        x = art.intermediates.get(layer)
        if x is not None:
            out[layer] = np.stack([np.asarray(x) > k for k in ks])
    if isinstance(art.input, tuple):
        return out
    for path, (pool, x) in _pool_inputs(art).items():
        y = art.intermediates.get(path)
        try:
            taken = _argmax_windows(pool, np.asarray(x), channels_last)
        except (ValueError, TypeError):  # an input this look does not understand: only the kinks are compared
            continue
        if y is not None and taken.shape == (np.moveaxis(y, -1, 1) if channels_last else y).shape:
            out[pool_key(path)] = taken  # (the windows' count checked against the pool's own output)
    return out


def pool_key(path: str) -> str:
    """The record of a max pool's windows: a key of its own, since the pool's output may also feed a ReLU, whose
    sides are recorded under the pool's path."""
    return f"{path} (max-pool windows)"


def crossings(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[int, str | None]:
    """How many activation inputs two forwards put on different sides of a kink, and the first such layer."""
    count, first = 0, None
    for layer, sides in a.items():
        other = b.get(layer)
        if other is None or other.shape != sides.shape:
            continue
        n = int(np.count_nonzero(sides != other))
        if n and first is None:
            first = layer
        count += n
    return count, first
