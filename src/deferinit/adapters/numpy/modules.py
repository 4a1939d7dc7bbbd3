"""The ``native`` object of the numpy backend: the plan plus a dict of canonical weights, callable like a
model. Containers are walked by :func:`deferinit.adapters.tree.run`; leaves run the kernels of
:mod:`.leaves` (looked up with ``extend.builder_for("numpy", type)``)."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedLayerError
from ...extend import builder_for
from ...merges import combine
from ...shapes import Node
from ..tree import Runner, run

__all__ = ["NumpyNet"]


class NumpyNet:
    """Canonical weights plus the plan; callable like a model."""

    def __init__(self, root: Node, data_format: str) -> None:
        self.root, self.data_format = root, data_format
        self.params: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        # ReLU masks, in call order, frozen by the parity check's finite differences (deferinit.parity_fd):
        # None in every ordinary call
        self.frozen: list[np.ndarray] | None = None
        self.frozen_at = 0

    def __call__(self, x: np.ndarray, training: bool = False,
                 record: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return run(self.root, x, _Runner(self, training), record)




class _Runner(Runner[np.ndarray]):
    """The containers' operations for the one tree walk; a leaf is its registered kernel."""

    def __init__(self, net: NumpyNet, training: bool) -> None:
        self.net, self.training = net, training

    def leaf(self, node: Node, x: np.ndarray) -> np.ndarray:
        fn = builder_for("numpy", type(node.layer))
        if fn is None:
            raise UnsupportedLayerError(f"layer '{node.path}' ({type(node.layer).__name__}) has no reference forward")
        return fn(self.net, node, x, self.training)  # type: ignore[no-any-return]

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from ... import ops

        return (a + b).astype(ops.float_type(a, b))

    def activation(self, name: str, x: np.ndarray) -> np.ndarray:
        from .leaves import activate

        return activate(self.net, name, x)

    def concat(self, xs: list[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(xs, axis=axis)

    def merge(self, op: str, xs: list[np.ndarray]) -> np.ndarray:
        from ... import ops

        return np.asarray(combine(op, xs)).astype(ops.float_type(*xs))

    def channel_axis(self, rank: int) -> int:
        return 1 if self.net.data_format == "channels_first" or rank == 2 else rank - 1
