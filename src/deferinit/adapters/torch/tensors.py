"""Tensor helpers of the torch backend: RNG seeding, moving lazy tensors to meta, allocating the non-lazy modules'
tensors, dtype maps and input coercion."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ...errors import SpecError
from ..compiled import CompiledModel

__all__ = ["seeded", "rehome", "uninitialized", "allocate", "coerce", "NP_DTYPES", "READY", "F32"]

F32 = torch.float32


def uninitialized(module: nn.Module) -> nn.Module:
    for name, p in module._parameters.items():
        if p is not None:
            module._parameters[name] = UninitializedParameter(dtype=F32)
    return module


def seeded(key: Any) -> contextlib.AbstractContextManager[None]:
    """torch's default init draws from the global CPU generator: seed it for the block, then restore it (no key:
    the generator as it is, with no generator frame around the block)."""
    return contextlib.nullcontext() if key is None else _seeded(key)


@contextlib.contextmanager
def _seeded(key: Any) -> Iterator[None]:
    if isinstance(key, torch.Generator):
        if key.device.type != "cpu":
            raise SpecError(f"key: the torch backend expected an int seed or a CPU torch.Generator, received a "
                            f"{key.device.type} generator")
        seed_state = key.get_state()
    else:
        seed_state, seed = None, CompiledModel._int_key(key)
    with torch.random.fork_rng(devices=[]):
        if seed_state is not None:
            torch.set_rng_state(seed_state)
        else:
            torch.manual_seed(seed)
        yield


def rehome(net: nn.Module, device: str) -> None:
    """Move still-uninitialized parameters and buffers to ``device`` in place. ``Module.to`` cannot be used:
    it turns an ``UninitializedParameter`` into a plain empty ``Parameter`` and the lazy hook then fails."""
    for m in net.modules():
        for k, p in m._parameters.items():
            if isinstance(p, UninitializedParameter):
                m._parameters[k] = UninitializedParameter(p.requires_grad, device=device, dtype=p.dtype)
        for k, b in m._buffers.items():
            if isinstance(b, UninitializedBuffer):
                m._buffers[k] = UninitializedBuffer(b.requires_grad, device=device, dtype=b.dtype)
            elif b is not None:
                m._buffers[k] = b.to(device)


def allocate(module: nn.Module, shape: tuple[int, ...], device: torch.device) -> None:
    """Allocate a non-lazy module's uninitialized tensors (LayerNorm, Embedding) as ``shape``; torch's default
    init follows unless they are meta (shapes only: materialize resets them)."""
    for name, p in module._parameters.items():
        if p is not None:
            module._parameters[name] = nn.Parameter(torch.empty(shape, device=device, dtype=F32))
    if device.type != "meta":
        module.reset_parameters()  # type: ignore[operator]


NP_DTYPES = {getattr(torch, t): np.dtype(t) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                                      "uint8", "uint16", "uint32", "uint64", "complex64", "complex128")
             if hasattr(torch, t)}
NP_DTYPES.update({torch.bool: np.dtype(bool), torch.bfloat16: np.dtype("float32")})  # numpy has no bfloat16
READY = frozenset({torch.float32, torch.int64, torch.int32})


def coerce(x: torch.Tensor) -> torch.Tensor:
    """Floats as float32 (the model's dtype, as numpy inputs are converted); other integers as int64 indices."""
    return x.float() if x.is_floating_point() else x.long()
