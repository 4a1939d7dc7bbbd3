"""The few torch modules and the layout glue the torch adapter needs beside torch's own ``nn`` modules.

Every spec position becomes a short list of *steps*: its main module (torch's own ``nn.LazyLinear``,
``nn.LazyConv2d``... registered under the position's canonical segment, so ``state_dict`` keys are the
canonical names) and stateless extras (activation, "same" padding, layout permutes) registered beside it as
``"<segment>:<tag>"`` (``:`` cannot occur in a spec name, so extras never collide with a layer). A Sequential
becomes a plain ``nn.Sequential`` of those steps; Residual and Concat are the two small modules below.
The helpers at the end (RNG seeding, moving lazy tensors to meta, dtype maps) serve ``torch.py``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..errors import SpecError
from ..layers import conv_pads
from .compiled import CompiledModel

__all__ = ["Step", "CF", "SPEC", "ANY", "arrange", "child_name", "activation", "Residual", "Concat", "SamePad",
           "ToChannelsFirst", "ToChannelsLast", "same_pads", "sequential", "seeded", "rehome", "uninitialized", "allocate", "coerce",
           "NP_DTYPES", "READY", "F32"]

F32 = torch.float32

# Physical layout a step needs (or, as a state, what the data flowing between steps is in):
CF = "cf"        # channels at axis 1 (torch's convolutions, pools, batch norm)
SPEC = "spec"    # the spec's data_format (Dense, LayerNorm, Flatten and softmax act on the spec's last axis)
ANY = "any"      # layout-agnostic (element-wise), or, as a state, rank-2 data where both layouts coincide


class Step(NamedTuple):
    tag: str                 # "" for the position's main module
    module: nn.Module
    need: str = ANY
    out: str | None = None   # state after the step when it changes rank (ANY: rank 2 now; SPEC: rank grew)


class ToChannelsFirst(nn.Module):
    """``(N, *spatial, C) -> (N, C, *spatial)`` as a view; identity on rank 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(-1, 1)


class ToChannelsLast(nn.Module):
    """``(N, C, *spatial) -> (N, *spatial, C)`` as a view; identity on rank 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(1, -1)


def same_pads(x: torch.Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> list[int]:
    pads: list[int] = []
    for i in reversed(range(len(kernel))):  # F.pad lists the last dim first
        pads += conv_pads(x.shape[2 + i], kernel[i], stride[i], dilation[i], "same")
    return pads


torch.fx.wrap("same_pads")  # size-dependent arithmetic: one opaque call in torch.fx traces


class SamePad(nn.Module):
    """TensorFlow's "same" padding for a strided convolution (``out = ceil(in / stride)``, the odd pixel after).

    torch's ``padding="same"`` refuses stride > 1, and the pads depend on each input's spatial size, so they
    are computed per call from channels-first ``x`` with the reference rule itself.
    """

    def __init__(self, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, same_pads(x, self.kernel, self.stride, self.dilation))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> Step:
    """torch's own module for an activation name (GELU is torch's exact erf form by default)."""
    if name == "softmax":
        return Step("softmax", nn.Softmax(dim=-1), SPEC)
    return Step(name, _ACTIVATIONS[name](), ANY)


def _run(modules: Any, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    for name in names:
        x = modules[name](x)
    return x


class Residual(nn.Module):
    """``activation(body(x) + shortcut(x))``; children ``body``/``shortcut`` (plus their ``:``-tagged extras)."""

    def __init__(self, body: list[tuple[str, nn.Module]], shortcut: list[tuple[str, nn.Module]],
                 act: nn.Module | None) -> None:
        super().__init__()
        for name, module in body + shortcut:
            self.add_module(name, module)
        self._body = tuple(n for n, _ in body)
        self._shortcut = tuple(n for n, _ in shortcut)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        y = _run(mods, self._body, x) + _run(mods, self._shortcut, x)
        return y if self.act is None else self.act(y)


class Concat(nn.Module):
    """Runs each branch on the same input and concatenates along ``dim`` (the channel axis of the spec's format:
    1 for channels_first, -1 for channels_last, which is also axis 1 on rank-2 data)."""

    def __init__(self, branches: list[list[tuple[str, nn.Module]]], dim: int) -> None:
        super().__init__()
        for branch in branches:
            for name, module in branch:
                self.add_module(name, module)
        self._branches = tuple(tuple(n for n, _ in branch) for branch in branches)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        return torch.cat([_run(mods, names, x) for names in self._branches], self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# A spec segment may be any identifier, including names a torch container already uses ("forward", "eval",
# "training", "dim"...), which add_module refuses; those (only those) get a "~" that spec names cannot contain.
_RESERVED = frozenset(dir(nn.Sequential())) | frozenset(dir(Concat([], 1))) | frozenset(dir(Residual([], [], None)))


def child_name(segment: str) -> str:
    return segment + "~" if segment in _RESERVED else segment


def arrange(steps: Sequence[tuple[str, Step]], channels_last: bool) -> list[tuple[str, nn.Module]]:
    """Names and modules in forward order. Data enters and leaves in the spec's layout; for channels_last specs
    a permute is inserted only where the next step needs the other layout, so element-wise steps run in
    whichever layout the data is in and back-to-back convolutions, pools and batch norms share one permute
    pair (each is a view; torch then runs its channels_last memory-format kernels)."""
    out: list[tuple[str, nn.Module]] = []
    used: set[str] = set()

    def emit(name: str, module: nn.Module) -> None:
        base, i = name, 1
        while name in used:
            i += 1
            name = f"{base}{i}"
        used.add(name)
        out.append((name, module))

    state, seg = SPEC, ""
    for seg, step in steps:
        if channels_last and step.need != ANY and state != ANY and step.need != state:
            emit(f"{seg}:to_{step.need}", ToChannelsFirst() if step.need == CF else ToChannelsLast())
            state = step.need
        emit(child_name(seg) if not step.tag else f"{seg}:{step.tag}", step.module)
        if step.out is not None:
            state = step.out
        elif step.need != ANY and state != ANY:
            state = step.need
    if channels_last and state == CF:
        emit(f"{seg}:to_spec", ToChannelsLast())
    return out


# --------------------------------------------------------------------------------------------- helpers
def uninitialized(module: nn.Module) -> nn.Module:
    for name, p in module._parameters.items():
        if p is not None:
            module._parameters[name] = UninitializedParameter(dtype=F32)
    return module


@contextlib.contextmanager
def seeded(key: Any) -> Iterator[None]:
    """torch's default init draws from the global CPU generator: seed it for the block, then restore it."""
    if key is None:
        yield
        return
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


def sequential(named: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(named))
