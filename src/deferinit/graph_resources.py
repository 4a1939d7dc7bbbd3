"""The memory estimate of a graph spec (:func:`graph_footprint`): the list specs' :class:`~deferinit.resources.Footprint`
from the same per-layer estimate, with a graph's own bound on what is alive at once.

Each layer's output, buffers and tables are counted by the list specs' estimate (``resources._Estimate``) on its
plan node (containers inside a layer as in list specs). A graph keeps a slot alive until its last reader, which
this bound does not track: it counts every input and every layer output as alive together, plus the largest
work space of any one layer, so it can only over-state an inference forward's peak (never under-state it).
"""

from __future__ import annotations

import math
from typing import Sequence

from .resources import Footprint, Tensor, _concrete, _Estimate
from .shapes import Inference

__all__ = ["graph_footprint"]


def graph_footprint(inference: Inference, input_shapes: Sequence[tuple[int | None, ...]], input_itemsizes: Sequence[int]) -> Footprint:
    """What a graph model of these shapes needs, from the reference rules alone (``input_shapes``: one per input)."""
    est = _Estimate.__new__(_Estimate)
    est.inputs, est.layers = inference.inputs, inference.report.layers
    est.data_format = inference.report.data_format
    est.tables = est.saved = 0
    est._cache, est.layer_of = {}, {}
    est.tensors = [Tensor("", None, "input", _concrete(tuple(s)), size) for s, size in zip(input_shapes, input_itemsizes)]
    input_bytes = sum(t.nbytes for t in est.tensors)
    outputs = work = 0
    for child in inference.root.children:
        out = est.out_bytes(child)
        work = max(work, est.peak(child) - out)
        outputs += out
    params = grads = 0
    for name, spec in inference.params.items():
        nbytes = 4 * math.prod(spec.shape)
        params += nbytes
        grads += nbytes if spec.trainable else 0
        path = name.rpartition(".")[0]
        est.tensors.append(Tensor(path, est.layer_of.get(path), f"parameter '{name}'", spec.shape, 4))
    largest = max(est.tensors, key=lambda t: t.nbytes)
    return Footprint(params=params, grads=grads, tables=est.tables, peak=input_bytes + outputs + work,
                     saved=input_bytes + est.saved, tensors=tuple(est.tensors), largest=largest)
