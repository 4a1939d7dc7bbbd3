"""The zoo's image classifiers against their torchvision definitions, ported here by hand (torchvision's wheels
are built for CUDA torch and do not import with the CPU torch pinned here): torchvision/models/resnet.py
(Bottleneck, ResNet), mobilenetv2.py (InvertedResidual), efficientnet.py (MBConv, SqueezeExcitation),
densenet.py (_DenseLayer, _Transition), vgg.py (cfg "D" with batch norm) and convnext.py (CNBlock,
LayerNorm2d). Each hand model's parameters and buffers are randomized, loaded into the spec in order (the
definitions register them in the spec's order), and both give the same eval-mode outputs."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import deferinit as di
from deferinit import zoo


def cbn(inp: int, out: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    """torchvision.ops.Conv2dNormActivation"""
    layers = [nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    return nn.Sequential(*layers, *([act()] if act else []))


# ---------------------------------------------------------------------------------------------- resnet.py
class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu, self.downsample = nn.ReLU(), downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet50() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        stride = 1 if i == 0 else 2
        down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        stage = [Bottleneck(inplanes, planes, stride, down)] + [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
        layers.append(nn.Sequential(*stage))
        inplanes = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


# ---------------------------------------------------------------------------------------------- mobilenetv2.py
class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [cbn(inp, hidden, 1, act=nn.ReLU6)] if expand_ratio != 1 else []
        layers += [cbn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), nn.Conv2d(hidden, oup, 1, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2() -> nn.Module:
    features: list[nn.Module] = [cbn(3, 32, 3, 2, act=nn.ReLU6)]
    inp = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    features.append(cbn(320, 1280, 1, act=nn.ReLU6))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, 1000))


# ---------------------------------------------------------------------------------------------- efficientnet.py
class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(input_channels, squeeze_channels, 1), nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation, self.scale_activation = nn.SiLU(), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class MBConv(nn.Module):
    def __init__(self, expand: int, k: int, stride: int, inp: int, out: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        hidden = inp * expand
        layers: list[nn.Module] = [cbn(inp, hidden, 1, act=nn.SiLU)] if expand != 1 else []
        layers += [cbn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                   SqueezeExcitation(hidden, max(1, inp // 4)), cbn(hidden, out, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x if self.use_res_connect else self.block(x)  # StochasticDepth: identity in eval


def efficientnet_b0() -> nn.Module:
    features: list[nn.Module] = [cbn(3, 32, 3, 2, act=nn.SiLU)]
    for e, k, s, i, o, n in ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)):
        features.append(nn.Sequential(*[MBConv(e, k, s if j == 0 else 1, i if j == 0 else o, o) for j in range(n)]))
    features.append(cbn(320, 1280, 1, act=nn.SiLU))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, 1000))


# ---------------------------------------------------------------------------------------------- densenet.py
class DenseLayer(nn.Module):
    def __init__(self, inp: int, growth: int = 32, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(inp), nn.ReLU()
        self.conv1 = nn.Conv2d(inp, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


def densenet121() -> nn.Module:
    features: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate((6, 12, 24, 16)):
        features.append(nn.Sequential(*[DenseLayer(c + j * 32) for j in range(n)]))
        c += n * 32
        if i != 3:
            features.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                                          nn.AvgPool2d(2, 2)))
            c //= 2
    features.append(nn.BatchNorm2d(c))
    return nn.Sequential(nn.Sequential(*features), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000))


# ---------------------------------------------------------------------------------------------- vgg.py
def vgg16_bn() -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
                         nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Dropout(), nn.Linear(4096, 1000))


# ---------------------------------------------------------------------------------------------- convnext.py
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), _Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), _Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_scale * self.block(x) + x  # StochasticDepth: identity in eval


class _Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


def convnext_tiny() -> nn.Module:
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    features: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6))]
    for i, (d, n) in enumerate(zip(dims, depths)):
        features.append(nn.Sequential(*[CNBlock(d) for _ in range(n)]))
        if i < 3:
            features.append(nn.Sequential(LayerNorm2d(d, eps=1e-6), nn.Conv2d(d, dims[i + 1], 2, 2)))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), LayerNorm2d(768, eps=1e-6), nn.Flatten(),
                         nn.Linear(768, 1000))


PORTS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "efficientnet_b0": efficientnet_b0,
    "densenet121": densenet121, "vgg16_bn": vgg16_bn, "convnext_tiny": convnext_tiny}
# torchvision's published counts (the table), which the ports must reproduce
# their BatchNorm running statistics (running_mean + running_var), as the ports hold them
STATS = {"resnet50": 53_120, "mobilenet_v2": 34_112, "efficientnet_b0": 42_016, "densenet121": 83_648, "vgg16_bn": 8_448,
         "convnext_tiny": 0}
COUNTS = {"resnet50": 25_557_032, "mobilenet_v2": 3_504_872, "efficientnet_b0": 5_288_548, "densenet121": 7_978_856,
          "vgg16_bn": 138_365_992, "convnext_tiny": 28_589_128}


def _execution_order(state: dict) -> dict:
    """A module's own parameters come first in a state_dict; ConvNeXt's layer_scale multiplies its block's output,
    so the spec (in execution order) has it after the block's parameters."""
    keys = list(state)
    for k in [k for k in keys if k.endswith(".layer_scale")]:
        keys.remove(k)
        prefix = k.rsplit(".", 1)[0] + ".block."
        keys.insert(max(i for i, other in enumerate(keys) if other.startswith(prefix)) + 1, k)
    return {k: state[k] for k in keys}


@pytest.mark.parametrize("name", list(PORTS))
def test_outputs_equal_the_torchvision_definition(name: str) -> None:
    torch.manual_seed(0)
    net = PORTS[name]().eval()
    assert sum(p.numel() for p in net.parameters()) == COUNTS[name]
    assert sum(b.numel() for k, b in net.named_buffers() if "running_" in k) == STATS[name]
    state = _execution_order({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})
    with torch.no_grad():
        for k, v in state.items():  # random everything, so no layer is an identity by its default init
            v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.05)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    model = di.compile(getattr(zoo, name)(), "torch")
    model.apply_init(x, key=0)
    canon = model.export_weights()
    assert len(canon) == len(state)
    weights = {}
    for (mine, w), (theirs, v) in zip(canon.items(), state.items()):
        arr = v.numpy().reshape(w.shape)  # layer_scale (C, 1, 1) is (C,) in the spec
        assert arr.size == w.size, (mine, theirs)
        weights[mine] = arr
    model.load_weights(weights)
    got = model(x).detach().numpy()
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_lstm_classifier_is_the_torch_idiom() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(100, 16)
            self.lstm = nn.LSTM(16, 24, batch_first=True)
            self.fc = nn.Linear(24, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.embedding(x))
            return self.fc(out[:, -1])

    torch.manual_seed(0)
    net = Net().eval()
    ids = np.random.default_rng(0).integers(0, 100, size=(4, 9))
    with torch.no_grad():
        want = net(torch.from_numpy(ids)).numpy()
    model = di.compile(zoo.lstm_classifier(100, embed_dim=16, hidden_size=24, num_classes=3), "torch")
    model.apply_init(ids, key=0)
    theirs = {k: v.numpy() for k, v in net.state_dict().items()}
    assert sorted(model.export_weights()) == sorted(theirs)  # the canonical names are torch's own here
    model.load_weights(theirs)
    np.testing.assert_allclose(model(ids).detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # by hand: embedding 100*16, LSTM 4*24*(16 + 24) + 2 * 4*24 biases, fc 24*3 + 3
    assert di.infer_shapes(model.spec, ids.shape).total_params == 1600 + 4 * 24 * 40 + 2 * 96 + 75


# ---------------------------------------------------------------------------------------------- milesial Pytorch-UNet
class DoubleConv(nn.Module):  # unet/unet_parts.py
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):  # bilinear=False
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        diff_y, diff_x = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
        x1 = nn.functional.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):  # unet/unet_model.py, UNet(n_channels=3, n_classes=2, bilinear=False)
    def __init__(self, n_channels: int = 3, n_classes: int = 2) -> None:
        super().__init__()
        self.inc = DoubleConv(n_channels, 64)
        self.down1, self.down2, self.down3 = Down(64, 128), Down(128, 256), Down(256, 512)
        self.down4 = Down(512, 1024)
        self.up1, self.up2, self.up3, self.up4 = Up(1024, 512), Up(512, 256), Up(256, 128), Up(128, 64)
        self.outc = nn.Conv2d(64, n_classes, kernel_size=1)  # OutConv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        return self.outc(self.up4(x, x1))


def test_unet_equals_milesial() -> None:
    torch.manual_seed(0)
    net = UNet().eval()
    assert sum(p.numel() for p in net.parameters()) == 31_037_698  # the figure, as the port counts
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sum(v.numel() for k, v in state.items() if "running_" in k) == 11_776
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.05)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    model = di.compile(zoo.unet(), "torch")
    model.apply_init(x, key=0)
    canon = model.export_weights()
    assert [w.shape for w in canon.values()] == [tuple(v.shape) for v in state.values()]
    model.load_weights(dict(zip(canon, (v.numpy() for v in state.values()))))
    got = model(x).detach().numpy()
    assert got.shape == (2, 2, 32, 48)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))
