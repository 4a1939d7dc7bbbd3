"""Per-call shortcuts on Gluon's private APIs, isolated behind one switch.

``ENABLED`` comes from ``DEFERINIT_FASTPATH`` at import (``0`` turns every shortcut off, and every call takes
Gluon's public path: ``block(x)``). It is read where a shortcut is set up (``graph.Graph`` makes the direct call
after Gluon's first inference call), never per call. Today there is one shortcut: an inference call runs the
inference graph's ``CachedOp`` directly (:class:`Direct`). It touches Gluon 1.9's private cache attributes (``_cached_op``,
``_cached_op_args``, ``_in_format``, ``_out_format``, ``Parameter._data``); MXNet 1.9.1 is the last 1.x release,
so they will not move.
"""

from __future__ import annotations

import operator
import os
from typing import Any

from mxnet import gluon

__all__ = ["ENABLED", "INFERENCE", "Direct", "call_inference"]

ENABLED = os.environ.get("DEFERINIT_FASTPATH", "1") != "0"
INFERENCE = (False, False)  # the graph key of inference mode (not training, layers not frozen), shape-independent
_DATA = operator.attrgetter("_data")


class Direct:
    """The inference graph's ``CachedOp`` called directly, without Gluon's per-call Python glue.

    Gluon's hybridized ``__call__`` spends about 10 to 30 us in Python on every call (hooks, context checks and
    ``with ctx``, flattening the arguments, one ``Parameter.data()`` per parameter, regrouping the outputs) before
    and after the C++ ``CachedOp`` it calls: as much as the whole forward of a small MLP. Once Gluon has built the
    inference graph, this calls the same ``CachedOp`` with the same arguments itself. It stays valid while every
    Parameter holds the same list of arrays (any re-initialization, ``cast`` or ``reset_ctx`` makes a new list;
    ``set_data`` and optimizers write in place), and it is dropped with Gluon's cache (``hybridize``, ``cast``).
    Only for one input, one output and one context, with no hooks on the block: anything else takes Gluon's path.
    """

    __slots__ = ("op", "position", "params", "datas", "arrays")
    op: Any
    position: int
    params: list[Any]
    datas: list[Any]
    arrays: list[Any]

    @classmethod
    def of(cls, block: gluon.HybridBlock) -> "Direct | None":
        args = block._cached_op_args
        inputs = [i for i, (is_arg, _) in enumerate(args) if is_arg]
        params = [p for is_arg, p in args if not is_arg]
        if (block._in_format != [0] or block._out_format != 0 or len(inputs) != 1 or block._callback
                or any(p._data is None or len(p._data) != 1 for p in params)):
            return None
        direct = cls()
        direct.op, direct.position, direct.params = block._cached_op, inputs[0], params
        direct.datas = [p._data for p in params]
        direct.arrays = [data[0] for data in direct.datas]
        return direct

    def __call__(self, x: Any) -> Any:
        args = self.arrays.copy()
        args.insert(self.position, x)
        return self.op(*args)

    def valid(self) -> bool:
        return all(map(operator.is_, map(_DATA, self.params), self.datas))


def call_inference(block: gluon.HybridBlock, x: Any) -> Any:
    """``block(x)`` in inference mode through :class:`Direct` where it applies; None where Gluon must do it."""
    direct = block.__dict__.get("_di_fast")
    if direct is None or block._forward_pre_hooks or block._forward_hooks or not block._active:
        return None
    if not direct.valid():
        block.__dict__["_di_fast"] = None  # made again after Gluon's next inference call
        return None
    return direct(x)

