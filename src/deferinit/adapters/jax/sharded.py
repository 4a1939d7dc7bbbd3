"""Sharded initialization on JAX: each parameter a ``jax.Array`` laid out by a ``NamedSharding`` over a
``jax.sharding.Mesh``, made with ``jax.make_array_from_callback``: JAX asks each device's slice (in native
layout) and the callback draws only that slice with the counter-based portable initializer. Flax's variable
layouts that are an axis permutation of the canonical layout (Dense, Conv, norm and bias vectors, embeddings)
can be sharded; the others (multi-head projections kept as DenseGeneral blocks, recurrent gates) only
replicated (:class:`~deferinit.errors.UnsupportedShardingError` names the parameter otherwise).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ... import init as init_mod
from ...errors import SpecError, UnsupportedShardingError
from ...sharding import ShardedReport, ShardingPlan, check_mesh
from . import params as T

__all__ = ["shard_init"]


def _perm(layout: Any, rank: int) -> tuple[int, ...] | None:
    """Native axis of each canonical axis, or None when the layout is not a permutation."""
    if not isinstance(layout, T.One) or len(layout.leaves) != 1:
        return None
    if layout.kind == "same":
        return tuple(range(rank))
    if layout.kind == "dense":
        return (1, 0)
    if layout.kind == "conv":  # native (*k, in, out) -> canonical (out, in, *k)
        n = rank - 2
        return (n + 1, n) + tuple(range(n))
    return None


def make_mesh(mesh: Any) -> tuple[Mesh, dict[str, int]]:
    if isinstance(mesh, Mesh):
        return mesh, {str(k): int(v) for k, v in mesh.shape.items()}
    shape = check_mesh(mesh)
    devices = jax.devices()
    need = math.prod(shape.values())
    if len(devices) < need:
        raise SpecError(f"shard_init: the mesh {shape} needs {need} devices, received {len(devices)} jax devices "
                        f"({devices[0].platform}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count="
                        f"{need} before importing jax")
    return Mesh(np.array(devices[:need]).reshape(tuple(shape.values())), tuple(shape)), shape


def shard_init(model: Any, x: Any, plan: ShardingPlan, mesh: Any, portable: init_mod.Initializer,
               key: int) -> ShardedReport:
    jmesh, shape = make_mesh(mesh)
    before = model._state()
    report = model.apply_init(x, init=portable, key=key, abstract=True)  # shapes only: no parameter memory
    try:
        sharded = report.shard(plan, shape)
        st = model._st(model.native)
        specs = model._inference.params
        for name, info in sharded.params.items():
            path, layout = st.built.variables[name]
            if info.param_axis is not None and _perm(layout, len(st.shape_of(layout.leaves[0].keys(path)))) is None:
                raise UnsupportedShardingError(
                    f"shard_init on backend jax: parameter '{name}' {info.shape} is held by Flax as "
                    f"{layout.native_name(path)} in a layout that is not an axis permutation of the canonical one "
                    f"({type(layout).__name__} {getattr(layout, 'kind', '')}); replicate it (a rule with "
                    f"param_axis=None before the broader one)")
        with model._gate.writing():
            shares: dict[tuple, Any] = {}
            variables: dict = {}
            for name, info in sharded.params.items():
                path, layout = st.built.variables[name]
                keys = [leaf.keys(path) for leaf in layout.leaves]
                if info.param_axis is None:  # replicated: the whole value on every device
                    whole = init_mod.generate({name: specs[name]}, portable, key)[name]
                    for k, part in zip(keys, layout.native(whole, [st.shape_of(k) for k in keys])):
                        shares[k] = part if k not in shares else shares[k] + part
                    continue
                native_shape = st.shape_of(keys[0])
                perm = _perm(layout, len(native_shape))
                assert perm is not None
                spec = [None] * len(native_shape)
                spec[perm[info.param_axis]] = info.mesh_axis
                T.put(variables, keys[0], jax.make_array_from_callback(
                    native_shape, NamedSharding(jmesh, PartitionSpec(*spec)),
                    _callback(name, specs[name], layout, perm, native_shape, portable, key)))
            replicated = NamedSharding(jmesh, PartitionSpec())
            for k, value in shares.items():
                T.put(variables, k, jax.device_put(np.ascontiguousarray(value, dtype=np.float32), replicated))
            st.variables = variables
            model._abstract = False
            st.fns.clear()
    except BaseException:
        model._restore(before)
        raise
    return sharded


def _callback(name: str, spec: Any, layout: Any, perm: tuple[int, ...], native_shape: tuple, portable: Any,
              key: int) -> Any:
    def draw(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(native_shape) - len(index))
        canonical = tuple(index[perm[i]] for i in range(len(perm)))
        part = init_mod.generate_shard({name: spec}, portable, key, {name: canonical})[name]
        native = [slice(*s.indices(d)) for s, d in zip(index, native_shape)]
        return np.ascontiguousarray(layout.native(part, [tuple(s.stop - s.start for s in native)])[0])
    return draw
