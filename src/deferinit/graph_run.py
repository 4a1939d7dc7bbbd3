"""The NumPy reference forward of a graph spec, and attention with the book's masks.

:func:`reference_forward` evaluates the graph slot by slot: a layer call runs the list specs' reference walk
(:func:`deferinit.adapters.tree.run` with the numpy kernels) on the layer's plan node; attention called with
separate queries, keys and values (and ``valid_lens``) runs :func:`masked_attention`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from . import ops
from .errors import UnsupportedLayerError
from .graph import GraphModel
from .shapes import plan

__all__ = ["reference_forward", "masked_attention", "key_mask"]


def key_mask(n: Any, tq: Any, tk: Any, valid_lens: Any, causal: bool = False, xp: Any = np) -> Any:
    """``(N, Tq, Tk)`` True where a query may attend to a key: ``j < valid_lens[b]`` (shape ``(N,)``) or
    ``j < valid_lens[b, i]`` (shape ``(N, Tq)``), as d2l's ``masked_softmax``; ``j <= i`` too when causal.

    ``xp`` is the array module it is built with: numpy here and on MXNet, ``jax.numpy`` on JAX and NNX (under
    ``jax.jit`` the lengths are data). TensorFlow's sizes under ``tf.function`` are tensors: its adapter writes
    the same rule in TensorFlow ops."""
    if valid_lens is None and not causal:
        return None
    keys = xp.arange(tk)[None, None, :]
    keep = xp.ones((n, tq, tk), bool)
    if valid_lens is not None:
        lens = xp.asarray(valid_lens)
        lens = xp.broadcast_to(lens[:, None], (n, tq)) if lens.ndim == 1 else lens
        keep = xp.logical_and(keep, xp.less(keys, lens[:, :, None]))
    if causal:
        keep = xp.logical_and(keep, xp.less_equal(keys, xp.arange(tq)[None, :, None]))
    return keep


def masked_attention(q_in: np.ndarray, k_in: np.ndarray, v_in: np.ndarray, params: Mapping[str, np.ndarray],
                     num_heads: int, use_bias: bool, valid_lens: np.ndarray | None = None,
                     causal: bool = False) -> np.ndarray:
    """d2l's multi-head attention; masked scores are set to -1e6 before the softmax, as ``masked_softmax`` does."""

    def proj(name: str, v: np.ndarray) -> np.ndarray:
        y: np.ndarray = np.matmul(v, params[f"{name}_weight"].T)
        return y + params[f"{name}_bias"] if use_bias else y

    q, k, v = proj("q", q_in), proj("k", k_in), proj("v", v_in)
    n, tq, h = q.shape
    tk, d = k.shape[1], h // num_heads

    def split(m: np.ndarray) -> np.ndarray:  # (N, T, H) -> (N, heads, T, d)
        return m.reshape(n, m.shape[1], num_heads, d).transpose(0, 2, 1, 3)

    scores = np.matmul(split(q), split(k).transpose(0, 1, 3, 2)) / np.float32(math.sqrt(d))
    keep = key_mask(n, tq, tk, valid_lens, causal)
    if keep is not None:
        scores = np.where(keep[:, None], scores, np.float32(-1e6))
    weights = ops.softmax(scores, -1)
    heads = np.matmul(weights, split(v)).transpose(0, 2, 1, 3).reshape(n, tq, h)
    return proj("out", heads).astype(np.float32)


def reference_forward(spec: GraphModel, inputs: Sequence[Any], params: Mapping[str, np.ndarray],
                      record: dict[str, Any] | None = None, training: bool = False,
                      rng: np.random.Generator | None = None) -> Any:
    """Outputs of ``spec`` for ``inputs`` (one array per input) with canonical ``params``, in float32 with NumPy:
    one array, or a tuple for several outputs. With ``record``, every layer position's output at the layer's
    first call is stored in it under its path. ``training=True`` runs the list specs' training kernels
    (BatchNorm on the batch's statistics, Dropout and DropPath drawing from ``rng``) and writes the updated
    running statistics into ``params`` (then a dict)."""
    from .adapters.numpy import graph_module as _kernels  # noqa: F401  (registers Attend's kernel)
    from .adapters.numpy.leaves import _own
    from .adapters.numpy.modules import NumpyNet, _Runner
    from .adapters.tree import run

    root = plan(spec)
    net = NumpyNet(root, spec.data_format)
    net.params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    if rng is not None:
        net.rng = rng
    runner = _Runner(net, training)
    slots: list[np.ndarray] = [np.asarray(x) for x in inputs]
    slots = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in slots]
    for node in spec.nodes:
        args = [slots[a] for a in node["args"]]
        if node["op"] == "layer":
            pnode = root.children[node["layer"]]
            first = record is not None and pnode.path not in record
            if len(args) > 1:
                layer: Any = pnode.layer
                if training and layer.dropout:
                    raise UnsupportedLayerError(f"layer '{pnode.path}' (MultiHeadAttention) on backend numpy: "
                                                f"attention dropout in training mode has no reference")
                lens = args[3] if node.get("valid_lens") else None
                out = masked_attention(args[0], args[1], args[2], _own(net, pnode), layer.num_heads, layer.use_bias,
                                       lens, bool(getattr(layer, "causal", False)))
            else:
                out = run(pnode, args[0], runner, record if first else None)
            if first:
                record[pnode.path] = out  # type: ignore[index]
        elif node["op"] == "add":
            out = sum(args[1:], args[0])
        elif node["op"] == "multiply":
            out = args[0]
            for a in args[1:]:
                out = out * a
        else:
            rank = args[0].ndim
            axis = node.get("axis")
            axis = (1 if spec.data_format == "channels_first" or rank == 2 else rank - 1) if axis is None else axis
            out = np.concatenate(args, axis=axis)
        slots.append(out)
    if training:  # BatchNorm's kernel put the updated running statistics in net.params
        params.update({k: v for k, v in net.params.items() if k in params})  # type: ignore[attr-defined]
    outs = [slots[o] for o in (spec.outputs if spec.multi_output else [spec.outputs])]
    return tuple(outs) if spec.multi_output else outs[0]
