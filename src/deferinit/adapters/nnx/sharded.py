"""Sharded initialization on Flax NNX: the jax backend's engine (``adapters/jax/sharded.py``) applied to NNX
variables. An abstract ``apply_init`` builds the modules under ``nnx.eval_shape`` (every variable a
``ShapeDtypeStruct``, nothing allocated); then each variable is given a ``jax.Array`` made with
``jax.make_array_from_callback`` over a ``NamedSharding`` of the plan, each device's callback drawing only its
slice with the counter-based portable initializer, and the replicated ones are ``jax.device_put`` with
``PartitionSpec()``. NNX keeps the jax backend's native layouts (Dense ``(in, out)``, Conv HWIO, multi-head
projections as ``(D, heads, head_dim)`` blocks), so the same layouts are cut the same way and refused by name
when they are not an axis permutation of the canonical one (recurrent gates). On any error the model is as it was.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ... import init as init_mod
from ...errors import UnsupportedShardingError
from ...layouts import contiguous
from ...sharding import ShardedReport, ShardingPlan
from .. import tree
from ..jax.sharded import _callback, _native_axes, make_mesh
from .structure import NnxBuilder, find

__all__ = ["shard_init"]


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def shard_init(model: Any, x: Any, plan: ShardingPlan, mesh: Any, portable: init_mod.Initializer,
               key: int) -> ShardedReport:
    jmesh, shape = make_mesh(mesh)
    before = model._state()
    report = model.apply_init(x, init=portable, key=key, abstract=True)  # nnx.eval_shape: no parameter memory
    try:
        sharded = report.shard(plan, shape)
        native, built = model.native, model._built()
        specs = model._inference.params
        for name, info in sharded.params.items():
            if info.param_axis is None:
                continue
            layout, keys = built.variables[name][1], built.keys(name)
            native_shape = tuple(int(d) for d in find(native, keys[0]).shape)
            axes = _native_axes(layout, native_shape) if len(keys) == 1 else None
            if axes is None:
                raise UnsupportedShardingError(
                    f"shard_init on backend nnx: parameter '{name}' {info.shape} is held by NNX as "
                    f"{', '.join(_name(k) for k in keys)} in a layout that is not an axis permutation of the "
                    f"canonical one ({type(layout).__name__}); replicate it (a rule with param_axis=None before the "
                    f"broader one)")
            na, scale = axes[info.param_axis]
            if native_shape[na] % info.shards:
                raise UnsupportedShardingError(
                    f"shard_init on backend nnx: parameter '{name}' {info.shape} is held by NNX as "
                    f"{_name(keys[0])} {native_shape}, whose axis {na} ({native_shape[na]} heads of {scale}) cannot "
                    f"be cut into {info.shards} equal shards; use a mesh axis that divides it")
        with model._gate.writing():
            shares: dict[tuple, Any] = {}
            values: dict[tuple, Any] = {}
            for name, info in sharded.params.items():
                layout, keys = built.variables[name][1], built.keys(name)
                shapes = [tuple(int(d) for d in find(native, k).shape) for k in keys]
                if info.param_axis is None:  # replicated: the whole value on every device
                    whole = init_mod.generate({name: specs[name]}, portable, key)[name]
                    for k, part in zip(keys, layout.native(whole, shapes)):
                        shares[k] = part if k not in shares else shares[k] + part
                    continue
                axes = _native_axes(layout, shapes[0])
                assert axes is not None
                spec: list[Any] = [None] * len(shapes[0])
                spec[axes[info.param_axis][0]] = info.mesh_axis
                values[keys[0]] = jax.make_array_from_callback(
                    shapes[0], NamedSharding(jmesh, PartitionSpec(*spec)),
                    _callback(name, specs[name], layout, axes, shapes[0], portable, key))
            replicated = NamedSharding(jmesh, PartitionSpec())
            for k, value in shares.items():
                values[k] = jax.device_put(contiguous(value), replicated)
            for k, value in values.items():  # the variables hold ShapeDtypeStructs: set_value, not [...] =
                find(native, k).set_value(value)
            nnx.update(native, jax.device_put(_other_state(model, key), replicated))
            model._abstract = False
            model._fns = {}
    except BaseException:
        model._restore(before)
        raise
    return sharded


def _other_state(model: Any, key: int) -> Any:
    """The variables that are not parameters (the ``nnx.Rngs`` streams that Dropout and ``nnx.RNN`` keep: key and
    count), as the concrete build would make them: the same build, jitted with only these as outputs, so XLA
    drops the parameter initializers and no parameter memory is allocated."""
    cf = model.spec.data_format == "channels_first"
    rng, inputs = model._key(key), model._inference.inputs

    def make() -> Any:
        made = tree.build(model.root, NnxBuilder(model.root, cf, nnx.Rngs(rng), inputs))[0]
        return nnx.state(made, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat)))
    return jax.jit(make)()
