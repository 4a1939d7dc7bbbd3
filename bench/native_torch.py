"""Hand-written PyTorch baselines for bench/run.py: the d2l book's models as an expert writes them.

Fair both ways: deferinit's torch ``__call__`` runs the ``nn.Module`` in eval mode with autograd on (a torch
model returns tensors that can be backpropagated), so the native forward is the eval-mode module called
directly, autograd on too. The native dry run is the one an expert writes: eval mode under ``no_grad``
(deferinit's is the same). ``abstract_mlp`` is torch's own shape-only path: lazy modules dry-run on the meta
device.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _dry_run(net: nn.Module, x0: np.ndarray) -> nn.Module:
    net.eval()
    with torch.no_grad():
        net(torch.from_numpy(x0))
    return net


def mlp(x0: np.ndarray) -> nn.Module:
    return _dry_run(nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(10)), x0)


def lenet(x0: np.ndarray) -> nn.Module:
    return _dry_run(nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.Sigmoid(), nn.LazyLinear(84), nn.Sigmoid(), nn.LazyLinear(10)), x0)


class Residual(nn.Module):
    """d2l's ResNet block."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet18(x0: np.ndarray) -> nn.Module:
    net = nn.Sequential(nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.LazyBatchNorm2d(),
                                      nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    for i, (num_residuals, channels) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        net.add_module(f"b{i + 2}", nn.Sequential(*[
            Residual(channels, use_1x1conv=True, strides=2) if j == 0 and i != 0 else Residual(channels)
            for j in range(num_residuals)]))
    net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(10)))
    return _dry_run(net, x0)


MODELS: dict[str, Callable[[np.ndarray], Callable[[torch.Tensor], torch.Tensor]]] = {
    "mlp": mlp, "lenet": lenet, "resnet18": resnet18}

_RESNET_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}


def _book_name(name: str) -> str:
    """Canonical name -> the hand-written model's (only ResNet's blocks differ: d2l's conv1, bn1, ... conv3)."""
    parts = name.split(".")
    if len(parts) < 4:
        return name
    return f"b{int(parts[0]) + 1}.{parts[1]}.{_RESNET_BODY['.'.join(parts[2:-1])]}.{parts[-1]}"


def load(forward: Any, compiled_model: Any) -> None:
    """Copy the compiled model's canonical weights (torch's own layouts) into the hand-written module."""
    net: nn.Module = forward
    state = {n: t for n, t in net.state_dict().items() if not n.endswith("num_batches_tracked")}
    weights = compiled_model.export_weights()
    if any(n.startswith("b2.") for n in state):  # ResNet-18: by name; the head is "last.2"
        pairs = {(_book_name(n) if not n.startswith("6.") else "last.2." + n.split(".")[-1]): w
                 for n, w in weights.items()}
    else:  # one nn.Sequential in the spec's order
        assert [tuple(t.shape) for t in state.values()] == [w.shape for w in weights.values()]
        pairs = dict(zip(state, weights.values()))
    assert set(pairs) == set(state)
    with torch.no_grad():
        for name, w in pairs.items():
            state[name].copy_(torch.from_numpy(w))


def to_native(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def sync(y: Any) -> Any:
    return y  # torch's CPU kernels are synchronous


def abstract_mlp(layers: int, width: int) -> int:
    """torch's cheapest shape-only path: lazy modules dry-run on the meta device; returns the parameter count."""
    with torch.device("meta"):
        net = nn.Sequential(*[m for _ in range(layers) for m in (nn.LazyLinear(width), nn.ReLU())])
        net(torch.empty(1, width))
    return sum(p.numel() for p in net.parameters())
