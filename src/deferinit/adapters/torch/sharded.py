"""Sharded initialization on PyTorch: the model is built abstractly on the meta device (no parameter memory),
then every canonical parameter becomes a DTensor over a ``DeviceMesh`` with the plan's placements
(``Shard(dim)`` on its mesh axis, ``Replicate()`` on the others): each rank allocates and draws only its local
shard with the counter-based portable initializer, and ``DTensor.from_local`` assembles the global tensor
without communication. Buffers that are not canonical parameters (BatchNorm's ``num_batches_tracked``) are
allocated locally as torch would. The forward takes plain tensors: each module gathers its own sharded
tensors just before it runs and drops them after (``_install_hooks``), so ``model(x)`` runs on every rank.

Needs ``torch.distributed`` initialized (``init_process_group``) with one rank per mesh device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from ... import init as init_mod
from ...errors import SpecError
from ...sharding import ShardedReport, ShardingPlan, check_mesh

__all__ = ["shard_init"]


def make_mesh(mesh: Any) -> tuple[DeviceMesh, dict[str, int]]:
    if isinstance(mesh, DeviceMesh):
        names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
        return mesh, dict(zip(names, (int(s) for s in mesh.shape)))
    shape = check_mesh(mesh)
    need = math.prod(shape.values())
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else None
    if world != need:
        raise SpecError(f"shard_init: the mesh {shape} needs torch.distributed initialized with {need} ranks, "
                        f"received " + ("no process group (call torch.distributed.init_process_group first)"
                                        if world is None else f"a world of {world}"))
    return init_device_mesh("cpu", tuple(shape.values()), mesh_dim_names=tuple(shape)), shape


def shard_init(model: Any, x: Any, plan: ShardingPlan, mesh: Any, portable: init_mod.Initializer,
               key: int) -> ShardedReport:
    shape = dict(zip(mesh.mesh_dim_names or (), mesh.shape)) if isinstance(mesh, DeviceMesh) else check_mesh(mesh)
    before = model._state()
    report = model.apply_init(x, init=portable, key=key, abstract=True)  # meta tensors: shapes only
    try:
        sharded = report.shard(plan, shape)  # the plan against the shapes first, then the process group
        tmesh, shape = make_mesh(mesh)
        names = list(shape)
        coordinate = tmesh.get_coordinate()
        assert coordinate is not None
        specs = model._inference.params
        net: nn.Module = model._native
        with model._gate.writing(), torch.no_grad():
            for name, info in sharded.params.items():
                placements = [Shard(info.param_axis) if info.param_axis is not None and axis == info.mesh_axis
                              else Replicate() for axis in names]
                index = info.index(coordinate[names.index(info.mesh_axis)]) if info.mesh_axis else None
                local = init_mod.generate_shard({name: specs[name]}, portable, key, {name: index})[name]
                full = DTensor.from_local(torch.from_numpy(local), tmesh, placements, run_check=False,
                                          shape=torch.Size(info.shape), stride=_strides(info.shape))
                owner_name, _, attr = report.params[name].native_name.rpartition(".")
                owner = net.get_submodule(owner_name)
                if attr in owner._parameters:
                    owner._parameters[attr] = nn.Parameter(full, requires_grad=owner._parameters[attr].requires_grad)
                else:
                    owner._buffers[attr] = full
            for module in net.modules():  # what is not a canonical parameter: allocated locally
                for attr, t in list(module._buffers.items()):
                    if t is not None and t.is_meta:
                        module._buffers[attr] = torch.zeros(t.shape, dtype=t.dtype)
            net.eval()
            _install_hooks(net)
            model._abstract = False
    except BaseException:
        model._restore(before)
        raise
    return sharded


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _install_hooks(net: nn.Module) -> None:
    """Each module holding sharded tensors gathers them (``full_tensor``) for its own forward only and drops the
    gathered copies after it, as FSDP unshards one layer at a time: plain tensors flow between the layers."""
    def unshard(module: nn.Module, args: tuple) -> None:
        held = {}
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if isinstance(t, DTensor):
                    held[attr] = (store, t)
                    store[attr] = t.full_tensor()  # type: ignore[assignment]
        module._deferinit_sharded = held  # type: ignore[assignment]

    def reshard(module: nn.Module, args: tuple, out: Any) -> None:
        for attr, (store, t) in module.__dict__.pop("_deferinit_sharded", {}).items():
            store[attr] = t

    for module in net.modules():
        if any(isinstance(t, DTensor) for t in (*module._parameters.values(), *module._buffers.values())):
            module.register_forward_pre_hook(unshard)
            module.register_forward_hook(reshard)
