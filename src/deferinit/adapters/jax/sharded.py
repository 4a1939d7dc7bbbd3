"""Sharded initialization on JAX: each parameter a ``jax.Array`` laid out by a ``NamedSharding`` over a
``jax.sharding.Mesh``, made with ``jax.make_array_from_callback``: JAX asks for each device's slice (in native
layout) and the callback draws only that slice with the counter-based portable initializer. A canonical axis
is cut on the native axis it lies on: transposed for Dense and Conv kernels, on the heads axis for multi-head
projections kept as DenseGeneral ``(D, heads, head_dim)`` blocks (so the heads must divide into the shards).
Recurrent gates (several Flax variables for one canonical parameter) can only be replicated; asked otherwise,
:class:`~deferinit.errors.UnsupportedShardingError` names the parameter."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ... import init as init_mod
from ...errors import SpecError, UnsupportedShardingError
from ...layouts import contiguous
from ...sharding import ShardedReport, ShardingPlan, check_mesh
from . import params as T

__all__ = ["shard_init"]


def _axes(layout: Any, rank: int) -> tuple[tuple[int, int], ...] | None:
    """For each canonical axis, (the native axis it lies on, how many canonical indices one native index spans):
    a block of ``k`` heads in native (.., heads, head_dim) is ``k * head_dim`` canonical rows. None when the
    layout is not of this kind (several variables, recurrent gates)."""
    if not isinstance(layout, T.One) or len(layout.leaves) != 1:
        return None
    if layout.kind == "same":
        return tuple((i, 1) for i in range(rank))
    if layout.kind == "dense":
        return ((1, 1), (0, 1))
    if layout.kind == "conv":  # native (*k, in, out) -> canonical (out, in, *k)
        n = rank - 2
        return ((n + 1, 1), (n, 1)) + tuple((i, 1) for i in range(n))
    if layout.kind == "heads_in":  # native (D, heads, head_dim) -> canonical (heads * head_dim, D)
        return ((1, -1), (0, 1))
    if layout.kind == "heads_out":  # native (heads, head_dim, H) -> canonical (H, heads * head_dim)
        return ((2, 1), (0, -1))
    if layout.kind == "heads_bias":  # native (heads, head_dim) -> canonical (heads * head_dim,)
        return ((0, -1),)
    return None


def _native_axes(layout: Any, native_shape: tuple) -> tuple[tuple[int, int], ...] | None:
    """``_axes`` with the head size filled in (-1 there: the native axis after the heads one)."""
    axes = _axes(layout, len(native_shape))
    if axes is None:
        return None
    return tuple((na, native_shape[na + 1] if scale == -1 else scale) for na, scale in axes)


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
            if info.param_axis is None:
                continue
            native_shape = st.shape_of(layout.leaves[0].keys(path))
            axes = _native_axes(layout, native_shape)
            if axes is None:
                raise UnsupportedShardingError(
                    f"shard_init on backend jax: parameter '{name}' {info.shape} is held by Flax as "
                    f"{layout.native_name(path)} in a layout that is not an axis permutation of the canonical one "
                    f"({type(layout).__name__}); replicate it (a rule with param_axis=None before the broader one)")
            na, scale = axes[info.param_axis]
            if native_shape[na] % info.shards:
                raise UnsupportedShardingError(
                    f"shard_init on backend jax: parameter '{name}' {info.shape} is held by Flax as "
                    f"{layout.native_name(path)} {native_shape}, whose axis {na} ({native_shape[na]} heads of "
                    f"{scale}) cannot be cut into {info.shards} equal shards; use a mesh axis that divides it")
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
                axes = _native_axes(layout, native_shape)
                assert axes is not None
                spec = [None] * len(native_shape)
                spec[axes[info.param_axis][0]] = info.mesh_axis
                T.put(variables, keys[0], jax.make_array_from_callback(
                    native_shape, NamedSharding(jmesh, PartitionSpec(*spec)),
                    _callback(name, specs[name], layout, axes, native_shape, portable, key)))
            replicated = NamedSharding(jmesh, PartitionSpec())
            for k, value in shares.items():
                T.put(variables, k, jax.device_put(contiguous(value), replicated))
            st.variables = variables
            model._abstract = False
            st.fns.clear()
    except BaseException:
        model._restore(before)
        raise
    return sharded


def _callback(name: str, spec: Any, layout: Any, axes: tuple[tuple[int, int], ...], native_shape: tuple,
              portable: Any, key: int) -> Any:
    def draw(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(native_shape) - len(index))
        native = [slice(*s.indices(d)[:2]) for s, d in zip(index, native_shape)]
        canonical = tuple(slice(native[na].start * sc, native[na].stop * sc) for na, sc in axes)
        part = init_mod.generate_shard({name: spec}, portable, key, {name: canonical})[name]
        return np.ascontiguousarray(layout.native(part, [tuple(s.stop - s.start for s in native)])[0])
    return draw
