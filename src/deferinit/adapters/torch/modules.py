"""The few torch modules and the layout glue the torch adapter needs beside torch's own ``nn`` modules.

Every spec position becomes a short list of *steps*: its main module (torch's own ``nn.LazyLinear``,
``nn.LazyConv2d``... registered under the position's canonical segment, so ``state_dict`` keys are the
canonical names) and stateless extras (activation, "same" padding, layout permutes) registered beside it as
``"<segment>:<tag>"`` (``:`` cannot occur in a spec name, so extras never collide with a layer). A Sequential
becomes a plain ``nn.Sequential`` of those steps; Residual and Concat are the two small modules below.
The tensor helpers (RNG seeding, moving lazy tensors to meta, dtype maps) are in ``tensors.py``.
"""

# mypy: allow-subclassing-any
# (torch is not installed in the lint session: nn.Module is Any there)
from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ...layers import conv_pads

__all__ = ["LazyLayerNorm", "Step", "CF", "SPEC", "ANY", "arrange", "child_name", "activation", "Residual", "Concat", "Merge",
           "SamePad", "ToChannelsFirst", "ToChannelsLast", "same_pads", "sequential", "F32"]

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


_ACTIVATIONS: dict[str, Any] = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "relu6": nn.ReLU6,
    "hard_swish": nn.Hardswish, "hard_sigmoid": nn.Hardsigmoid, "leaky_relu": nn.LeakyReLU,  # slope 0.01
    "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


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


class Merge(Concat):
    """``Add`` / ``Multiply``: runs each branch on the same input and sums or multiplies the results (torch's own
    broadcasting: ``(N, C, H, W) * (N, C, 1, 1)``)."""

    def __init__(self, branches: list[list[tuple[str, nn.Module]]], op: str) -> None:
        super().__init__(branches, 0)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        ys = [_run(mods, names, x) for names in self._branches]
        y = ys[0]
        for z in ys[1:]:
            y = y + z if self.op == "add" else y * z
        return y

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


# A spec segment may be any identifier, including names a torch container already uses ("forward", "eval",
# "training", "dim"...), which add_module refuses; those (only those) get a "~" that spec names cannot contain.
_RESERVED = frozenset(dir(nn.Sequential())) | frozenset(dir(Merge([], "add"))) | frozenset(dir(Residual([], [], None)))


def child_name(segment: str) -> str:
    return segment + "~" if segment in _RESERVED else segment


def arrange(steps: Sequence[tuple[str, Step]], channels_last: bool,
            ends: dict[str, tuple[int, bool]] | None = None) -> list[tuple[str, nn.Module]]:
    """Names and modules in forward order. Data enters and leaves in the spec's layout; for channels_last specs
    a permute is inserted only where the next step needs the other layout, so element-wise steps run in
    whichever layout the data is in and back-to-back convolutions, pools and batch norms share one permute
    pair (each is a view; torch then runs its channels_last memory-format kernels).

    ``ends``, when given, receives for every segment the index (in the list returned) of the last module run for
    it and whether its output is still channels-first there while the spec is channels_last (the report's
    shapes are observed on those modules)."""
    out: list[tuple[str, nn.Module]] = []
    used: set[str] = set()

    def emit(name: str, module: nn.Module) -> None:
        base, i = name, 1
        while name in used:
            i += 1
            name = f"{base}{i}"
        used.add(name)
        out.append((name, module))

    def end(seg: str) -> None:
        if ends is not None:
            ends[seg] = (len(out) - 1, channels_last and state == CF)

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
        end(seg)
    if channels_last and state == CF:
        emit(f"{seg}:to_spec", ToChannelsLast())
        state = SPEC
        end(seg)
    return out


def sequential(named: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(named))


class LazyLayerNorm(LazyModuleMixin, nn.LayerNorm):
    """``nn.LayerNorm`` whose normalized size torch infers from the first input, as ``nn.LazyLinear`` infers its
    ``in_features``: torch ships no lazy LayerNorm, and without one its size came from deferinit's rules
    (``source="reference"``). Written as torch's own lazy modules are: uninitialized parameters materialized by
    ``initialize_parameters`` on the first call, then the module becomes a plain ``nn.LayerNorm``."""

    cls_to_become = nn.LayerNorm
    weight: UninitializedParameter
    bias: UninitializedParameter

    def __init__(self, eps: float = 1e-5, dtype: Any = None) -> None:
        super().__init__(0, eps=eps, elementwise_affine=True, dtype=dtype)
        self.weight = UninitializedParameter(dtype=dtype)
        self.bias = UninitializedParameter(dtype=dtype)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.normalized_shape != (0,):
            super().reset_parameters()

    def initialize_parameters(self, x: torch.Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.normalized_shape = (int(x.shape[-1]),)
                self.weight.materialize(self.normalized_shape)
                self.bias.materialize(self.normalized_shape)
                self.reset_parameters()
