"""Sharded initialization: one spec materialized across devices or processes, each holding only its slices.

:func:`shard_init` validates the plan against the reference shapes (``ShapeReport.shard``) before anything is
allocated, then lets the backend's own engine distribute the parameters: JAX places each on a ``jax.sharding.Mesh``
with a ``NamedSharding`` and ``jax.make_array_from_callback`` (Flax NNX: the same, each ``nnx.Param`` given its
sharded array); PyTorch builds on the meta device and makes DTensors with ``Shard(dim)`` / ``Replicate()``
placements over a ``DeviceMesh``. Each device (or rank) draws only its own slice with the counter-based portable
initializers (``counter.py``), so the gathered weights are bit-identical to an unsharded ``apply_init`` with the
same ``init`` and ``key``. TensorFlow, MXNet and the numpy reference refuse it with
:class:`~deferinit.errors.UnsupportedShardingError`.
"""

from __future__ import annotations

from typing import Any

from . import init as init_mod
from .errors import SpecError, UnsupportedShardingError
from .sharding import ShardedReport, ShardingPlan

__all__ = ["shard_init"]

_WHY = {
    "tensorflow": "Keras 3's distribution API (keras.distribution.ModelParallel) places variables itself when "
                  "they are created and deferinit loads canonical weights into built models, so a shard cannot "
                  "be drawn alone into its place; use the jax or torch backend",
    "mxnet": "Gluon has no sharded parameter type (its KVStore shards gradients, not parameters); use the jax "
             "or torch backend",
    "numpy": "the reference backend runs on one process; use the jax or torch backend",
}


def shard_init(model: Any, dummy_input: Any, plan: ShardingPlan, mesh: Any, *, init: Any = "xavier_uniform",
               key: int = 0) -> ShardedReport:
    """Initialize ``model`` (a compiled model) sharded by ``plan`` over ``mesh``: a mapping of axis names to
    sizes (``{"data": 4}``) or the framework's own mesh (``jax.sharding.Mesh``, torch ``DeviceMesh``).

    ``init`` must be portable (a name or a :mod:`deferinit.init` object): the framework's own initializers
    are not counter-based, so their shards could not match an unsharded draw. Returns the
    :class:`~deferinit.sharding.ShardedReport` (each parameter's sharding, local shape, bytes per device).
    """
    portable = init_mod.get(init)
    if portable is None:
        raise SpecError(f"shard_init: expected a portable initializer (a name such as 'xavier_uniform' or an object "
                        f"from deferinit.init), received {init!r}; framework initializers cannot draw one shard "
                        f"alone")
    if not isinstance(plan, ShardingPlan):
        raise SpecError(f"shard_init: expected a deferinit ShardingPlan, received {type(plan).__name__}")
    hook = getattr(model, "_shard_init", None)
    if hook is None:
        backend = getattr(model, "backend", type(model).__name__)
        raise UnsupportedShardingError(f"shard_init on backend {backend}: sharded initialization is not supported: "
                                       + _WHY.get(backend, "this backend has no sharding engine"))
    key = model._int_key(key)
    return hook(dummy_input, plan, mesh, portable, key)  # type: ignore[no-any-return]
