"""Hand-written PyTorch baselines for bench/run.py: the d2l book's models as an expert writes them.

Fair both ways: deferinit's torch ``__call__`` runs the ``nn.Module`` in eval mode with autograd on (a torch
model returns tensors that can be backpropagated), so the native forward is the eval-mode module called
directly, autograd on too. The native dry run is the one an expert writes: eval mode under ``no_grad``
(deferinit's is the same). ``abstract_mlp`` is torch's own shape-only path: lazy modules dry-run on the meta
device.

The zoo's large models (``ZOO``, ``ZOO_ABSTRACT``): torchvision's ResNet-50 and MobileNetV2 written out by hand
(torchvision's wheels are CUDA builds; the definitions are those of tests/backends/torch/test_zoo_vision_torch.py)
and ``transformers``' ``GPT2LMHeadModel`` / ``BertModel`` built from their configs. Their abstract path is
construction under ``torch.device("meta")``; concrete init is construction plus an eval-mode dry run.
"""

from __future__ import annotations

import importlib.util
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


# ------------------------------------------------------------------------------------------------ the zoo
# The vision models are written once, with every input dim as torchvision writes it; ``_zoo_lazy`` builds the
# same code with torch's lazy modules instead (the in-dims left to torch's dry run, as deferinit's torch
# backend builds its models): the bench times both against deferinit, so it shows which part of the gap to the
# eager model is torch's own lazy path.
_LAZY = False


def _conv2d(inp: int, out: int, *args: Any, **kwargs: Any) -> nn.Module:
    return nn.LazyConv2d(out, *args, **kwargs) if _LAZY else nn.Conv2d(inp, out, *args, **kwargs)


def _bn2d(channels: int) -> nn.Module:
    return nn.LazyBatchNorm2d() if _LAZY else nn.BatchNorm2d(channels)


def _linear(inp: int, out: int) -> nn.Module:
    return nn.LazyLinear(out) if _LAZY else nn.Linear(inp, out)


def _cbn(inp: int, out: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    """torchvision.ops.Conv2dNormActivation"""
    layers = [_conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False), _bn2d(out)]
    return nn.Sequential(*layers, *([act()] if act else []))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (the stride on the 3x3 convolution)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv2d(inplanes, planes, 1, bias=False), _bn2d(planes)
        self.conv2, self.bn2 = _conv2d(planes, planes, 3, stride, 1, bias=False), _bn2d(planes)
        self.conv3, self.bn3 = _conv2d(planes, planes * 4, 1, bias=False), _bn2d(planes * 4)
        self.relu, self.downsample = nn.ReLU(inplace=True), downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _resnet50() -> nn.Module:
    layers: list[nn.Module] = [_conv2d(3, 64, 7, 2, 3, bias=False), _bn2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        stride = 1 if i == 0 else 2
        down = nn.Sequential(_conv2d(inplanes, planes * 4, 1, stride, bias=False), _bn2d(planes * 4))
        layers.append(nn.Sequential(Bottleneck(inplanes, planes, stride, down),
                                    *[Bottleneck(planes * 4, planes) for _ in range(1, blocks)]))
        inplanes = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), _linear(2048, 1000))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [_cbn(inp, hidden, 1, act=nn.ReLU6)] if expand_ratio != 1 else []
        layers += [_cbn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), _conv2d(hidden, oup, 1, bias=False),
                   _bn2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _mobilenet_v2() -> nn.Module:
    features: list[nn.Module] = [_cbn(3, 32, 3, 2, act=nn.ReLU6)]
    inp = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    features.append(_cbn(320, 1280, 1, act=nn.ReLU6))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         _linear(1280, 1000))


class GPT2(nn.Module):
    """transformers' GPT2LMHeadModel (12 layers, the tied LM head): the logits of every position, no cache."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        self.net = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=12))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=ids, use_cache=False).logits


class Bert(nn.Module):
    """transformers' BertModel (BERT-base, with its pooler); the valid lengths become the attention mask."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        self.net = transformers.BertModel(transformers.BertConfig())

    def forward(self, ids: torch.Tensor, types: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (torch.arange(ids.shape[1])[None] < lens[:, None]).long()  # ones, then zeros past each length
        out = self.net(input_ids=ids, token_type_ids=types, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output


_ZOO_MAKE: dict[str, Callable[[], nn.Module]] = {"resnet50": _resnet50, "mobilenet_v2": _mobilenet_v2, "gpt2": GPT2,
                                                 "bert_base": Bert}


def _count(net: nn.Module) -> int:
    """Parameters (GPT-2's tied embedding once) and BatchNorm's running statistics, as deferinit counts them."""
    stats = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in net.parameters()) + stats


def _zoo(name: str) -> Callable[[list[np.ndarray]], tuple[nn.Module, int]]:
    def build(inputs: list[np.ndarray]) -> tuple[nn.Module, int]:
        net = _ZOO_MAKE[name]().eval()
        with torch.no_grad():
            net(*(torch.from_numpy(x) for x in inputs))
        return net, _count(net)
    return build


def _lazy_model(name: str) -> nn.Module:
    """The zoo model ``name`` written with torch's lazy modules, in eval mode, not yet dry-run."""
    global _LAZY
    _LAZY = True
    try:
        return _ZOO_MAKE[name]().eval()
    finally:
        _LAZY = False


def _zoo_lazy(name: str) -> Callable[[list[np.ndarray]], tuple[nn.Module, int]]:
    """The same model with torch's lazy modules, then the dry run that materializes them."""
    def build(inputs: list[np.ndarray]) -> tuple[nn.Module, int]:
        net = _lazy_model(name)
        with torch.no_grad():
            net(*(torch.from_numpy(x) for x in inputs))
        return net, _count(net)
    return build


def _zoo_lazy_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    """torch's own abstract path for a model written with lazy modules: constructed and dry-run on meta."""
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        with torch.no_grad(), torch.device("meta"):
            net = _lazy_model(name)
            net(*(torch.empty(s, dtype=getattr(torch, d), device="meta") for s, d in inputs))
        return _count(net)
    return build


def _zoo_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        with torch.device("meta"):  # the modules' shapes are in their constructors: no dry run needed
            return _count(_ZOO_MAKE[name]())
    return build


# nox -s bench installs transformers (backends/torch.txt's "# tests:" line); a bare torch environment may lack it.
# Looked up, not imported: the cold-start runs import this module and time it
ZOO_NOTES: dict[str, str] = {}
if importlib.util.find_spec("transformers") is None:
    del _ZOO_MAKE["gpt2"], _ZOO_MAKE["bert_base"]
    ZOO_NOTES = {name: "transformers is not installed: no native model" for name in ("gpt2", "bert_base")}
ZOO = {name: _zoo(name) for name in _ZOO_MAKE}
ZOO_LAZY = {name: _zoo_lazy(name) for name in ("resnet50", "mobilenet_v2")}  # the vision models
ZOO_ABSTRACT = {name: _zoo_abstract(name) for name in _ZOO_MAKE}
ZOO_LAZY_ABSTRACT = {name: _zoo_lazy_abstract(name) for name in ZOO_LAZY}
