"""Parity artifacts: everything one backend produced for one spec and input (:class:`Artifact`), and
:func:`make_artifact`, which runs a spec on a backend and records it.

An artifact made from a reference artifact (``source=``) runs on its input and weights; a backend whose own
portable draw has the reference's digests runs on its own draw (the same bits). How artifacts are written and
read (``.npz``, the reference's weights left out and drawn again where needed, samples of big intermediates)
is :mod:`deferinit.parity_files`; :mod:`deferinit.parity` exports both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ShapeMismatchError, SpecError
from .report import ShapeReport
from .spec import LazyModel

__all__ = ["Artifact", "make_artifact", "graph_inputs_for", "sample_like", "GRAD_SAMPLE", "INTER_SAMPLE"]



@dataclass
class Artifact:
    """Everything one backend produced for one spec and input."""

    backend: str
    spec: dict[str, Any]
    report: ShapeReport
    input: Any                           # an array, or a tuple of arrays (one per input of a graph spec)
    init: dict[str, str]                 # sha256 of each weight after apply_init(init, key) on this backend
    weights: Mapping[str, np.ndarray]    # the weights every backend ran with (the reference's only; drawn again
    #                                      on first use when its file did not store them: see the module's doc)
    output: Any                          # an array, or a tuple of arrays (a graph spec with several outputs)
    intermediates: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    train_output: Any = None             # an array, a tuple of arrays (several outputs), or None (no step)
    train_state: dict[str, np.ndarray] = field(default_factory=dict)  # non-trainable params after one step
    meta: dict[str, Any] = field(default_factory=dict)
    # which branch each non-smooth op took in this forward (deferinit.parity_branches), worked out where the
    # full intermediates were (make_artifact, when it records gradients): a file may keep only a sample of them
    branches: dict[str, np.ndarray] = field(default_factory=dict)


def _input_for(spec: LazyModel, shape: Sequence[int], seed: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        from .shapes import plan

        first = next(plan(spec).leaves())
        high = getattr(first.layer, "num_embeddings", 10)
        return rng.integers(0, high, size=tuple(shape)).astype(dtype)
    return rng.standard_normal(tuple(shape)).astype(np.float32)


def graph_inputs_for(spec: Any, shapes: Sequence[Sequence[int]], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Inputs of the given shapes for a graph spec, one per ``di.Input`` and of its dtype, drawn from ``seed``:
    floats standard normal; ids that feed an ``Embedding`` or ``OneHot`` below the smallest table they index;
    ``valid_lens`` of attention in ``1..T`` (T the longest second dim among the inputs); other integers in 0..9."""
    from .layers_base import Leaf
    from .shapes import plan

    names = spec.input_names()
    if len(shapes) != len(names):
        raise SpecError(f"parity: the graph spec expected {len(names)} input shapes ({', '.join(names)}), "
                        f"received {len(shapes)}")
    root, rng = plan(spec), np.random.default_rng(seed)
    steps = max([int(s[1]) for s in shapes if len(s) > 1] or [1])
    out = []
    for i, (shape, dtype) in enumerate(zip(shapes, spec.input_dtypes())):
        if np.dtype(dtype).kind not in "iu":
            out.append(rng.standard_normal(tuple(shape)).astype(np.float32))
            continue
        tables, lens = [], False
        for node in spec.nodes:
            if node["op"] != "layer" or i not in node["args"]:
                continue
            if node.get("valid_lens") and node["args"][3] == i:
                lens = True
                continue
            pnode = root.children[node["layer"]]
            first = pnode if isinstance(pnode.layer, Leaf) else next(pnode.leaves(), pnode)
            tables += [getattr(first.layer, a) for a in ("num_embeddings", "num_classes") if hasattr(first.layer, a)]
        low, high = (0, min(tables)) if tables else (1, steps + 1) if lens else (0, 10)
        out.append(rng.integers(low, high, size=tuple(shape)).astype(dtype))
    return tuple(out)


def make_artifact(spec: LazyModel, backend: str, x: Any = None, *, input_shape: Sequence[int] | None = None,
                  seed: int = 0, dtype: str = "float32", init: Any = "xavier_uniform", key: int = 0,
                  source: Artifact | None = None, training: bool = True, gradients: bool = True) -> Artifact:
    """Run ``spec`` on ``backend`` and record what the parity check compares.

    With ``source`` (usually the numpy reference's artifact), its input and weights are used; otherwise the
    input is ``x`` or drawn from ``seed``, and the weights are this backend's own portable initialization.
    """
    from .graph import GraphModel
    from .registry import compile, resolve

    backend = resolve(backend)
    graph = isinstance(spec, GraphModel)
    if source is not None:
        x = source.input
    elif x is None:
        if input_shape is None:
            raise SpecError("parity: expected an input array or input_shape, received neither" if not graph else
                            f"parity: a graph spec expected its inputs as a tuple of arrays "
                            f"({', '.join(spec.input_names())}), received none")  # type: ignore[attr-defined]
        # a graph spec: one shape per input (a list spec's one shape is taken as a one-input graph's)
        x = graph_inputs_for(spec, _shape_list(input_shape), seed) if graph else \
            _input_for(spec, input_shape, seed, dtype)
    if isinstance(spec, GraphModel):
        several = len(spec.input_names()) > 1  # one input is stored as an array, several as a tuple
        x = x[0] if isinstance(x, tuple) and len(x) == 1 and not several else x
        x = tuple(_finite(np.asarray(v)) for v in x) if several and isinstance(x, (tuple, list)) else \
            _finite(np.asarray(x))
    else:
        x = _finite(np.asarray(x))
    model = compile(spec, backend)
    report = model.apply_init(x, init=init, key=key)
    initial = model.export_weights()
    digests = {name: _digest(arr) for name, arr in initial.items()}
    # the source's weights; this backend's own draw when it is the same bits (then the source's are never read,
    # nor drawn again when its file did not store them)
    own = source is None or (digests == source.init and list(digests) == list(source.init))
    weights: Mapping[str, np.ndarray] = initial if own else source.weights  # type: ignore[union-attr]
    del initial
    if not own:  # this backend's own draw is already in the model: loading it again copied every weight twice
        model.load_weights(weights)  # (VGG-11: 2.2 s of torch's 10.2, 3.3 s of MXNet's 17.8, measured)
    y = model(x)
    out = tuple(np.asarray(model.to_numpy(o), dtype=np.float32) for o in y) if isinstance(y, tuple) else \
        np.asarray(model.to_numpy(y), dtype=np.float32)
    inter = {k: np.asarray(v, dtype=np.float32) for k, v in model.intermediates(x).items()}
    grads: dict[str, np.ndarray] = {}
    if gradients and backend != "numpy":
        grads = {k: _sample(k, np.asarray(v, dtype=np.float32)) for k, v in model.gradients(x).items()}
    train_out, train_state = None, {}
    from .layers import Dropout
    from .layers_extra import DropPath
    from .shapes import plan

    if any(isinstance(n.layer, (Dropout, DropPath)) and n.layer.rate > 0 for n in plan(spec).walk()):
        training = False  # dropout masks come from each framework's own random stream: not comparable
    if training:
        model.load_weights(weights)
        t = model(x, training=True)
        train_out = tuple(np.asarray(model.to_numpy(o), dtype=np.float32) for o in t) if isinstance(t, tuple) else \
            np.asarray(model.to_numpy(t), dtype=np.float32)
        after = model.export_weights()
        train_state = {n: after[n] for n, p in report.params.items() if not p.trainable}
    meta: dict[str, Any] = {"init": str(init), "key": key, "seed": seed}
    if source is None and backend == "numpy" and _portable_name(init):
        meta["redrawable"] = True  # the numpy reference's portable draw: save_artifact need not store it
    art = Artifact(backend, spec.to_dict(), report, x, digests, dict(weights) if source is None else {}, out, inter,
                   grads, train_out, train_state, meta)
    if grads:  # the branches, from the full intermediates, with the reference's kinks (where they are known)
        from .parity_branches import branches_of, kink_inputs

        ref = source if source is not None and source.intermediates else art
        art.branches = branches_of(art, kink_inputs(dict(ref.intermediates)),
                                   getattr(ref.report, "data_format", "channels_first") == "channels_last")
        art.meta["branches"] = True
    return art


def _portable_name(init: Any) -> bool:
    from .init import NAMES

    return isinstance(init, str) and init.lower() in NAMES


def _shape_list(shapes: Any) -> list[Sequence[int]]:
    items = list(shapes)
    return [tuple(shapes)] if items and all(isinstance(d, (int, np.integer)) for d in items) else items


GRAD_SAMPLE = 65536
#: entries of each bigger intermediate output a framework's artifact file keeps: they locate the first divergent
#: layer, and a fault that moves 0.1% of a layer's entries misses all 8,192 with probability 0.999**8192 = 3e-4
#: (the outputs, kept whole, are compared in full)
INTER_SAMPLE = 8192


def _finite(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ShapeMismatchError("parity: the input expected finite values, received NaN/inf "
                                     "(comparisons of non-finite outputs are meaningless)")
    return x


def _digest(arr: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(arr, dtype=np.float32)
    h = hashlib.sha256(a.reshape(-1).data)  # the bytes of tobytes(), hashed where they lie
    h.update(str(a.shape).encode())
    return h.hexdigest()


def _sample(name: str, grad: np.ndarray, size: int = GRAD_SAMPLE) -> np.ndarray:
    """Gradients of big parameters are compared on a fixed sample of entries (the same on every backend),
    so artifacts of VGG-sized models stay small."""
    flat = grad.reshape(-1)
    if flat.size <= size:
        return grad
    import zlib

    idx = np.random.default_rng(zlib.crc32(name.encode())).choice(flat.size, size, replace=False)
    return flat[np.sort(idx)]


def sample_like(name: str, full: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """``full`` as a file holds it when ``stored`` is its fixed sample (:func:`_sample`), else ``full``."""
    if stored.shape != full.shape and stored.ndim == 1 and stored.size in (GRAD_SAMPLE, INTER_SAMPLE) and \
            full.size > stored.size:
        return _sample(name, full, stored.size)
    return full
