"""Everyday image classifiers of the zoo, layer for layer after their torchvision definitions (and an LSTM
text classifier in the usual torch idiom), with the references' defaults (``num_classes=1000``).

Each follows torchvision's module order, kernel sizes, strides, paddings, biases and normalization epsilons, so
the parameter counts are torchvision's and its weights load by renaming (``tests/backends/torch/
test_zoo_vision_torch.py`` ports the definitions by hand and compares outputs). Blocks whose input and output
match add a shortcut with ``Residual``; squeeze-and-excitation is ``Multiply([Identity(), gate])``; a dense
block's concatenation is ``Concat([Identity(), layer])``; stochastic depth is ``DropPath`` with torchvision's
linearly growing rates. Everything runs at any input of at least 32 x 32 (the adaptive pools).
"""

from __future__ import annotations

from typing import Any

from .layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
)
from .layers_extra import AdaptiveAvgPool2D, DropPath, LayerScale
from .layers_seq import LSTM, Permute
from .layers_up import Conv2DTranspose
from .merges import Multiply
from .spec import Concat, Layer, LazyModel, Residual, Sequential

__all__ = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vgg16_bn", "convnext_tiny", "unet",
           "lstm_classifier"]


def _conv_bn(channels: int, k: int, stride: int = 1, groups: int = 1, act: str = "relu") -> list[Layer]:
    """torchvision's Conv2dNormActivation: a bias-free convolution padded (k-1)//2, BatchNorm, activation."""
    return [Conv2D(channels, k, stride=stride, padding=(k - 1) // 2, groups=groups, use_bias=False), BatchNorm(),
            Activation(act)]


# ------------------------------------------------------------------------------------------------ ResNet-50
def _bottleneck(planes: int, stride: int, downsample: bool) -> Residual:
    """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 convolution)."""
    body = Sequential([*_conv_bn(planes, 1), *_conv_bn(planes, 3, stride), Conv2D(planes * 4, 1, use_bias=False),
                       BatchNorm()])
    short = Sequential([Conv2D(planes * 4, 1, stride=stride, use_bias=False), BatchNorm()]) if downsample else None
    return Residual(body, shortcut=short, activation="relu")


def resnet50(num_classes: int = 1000) -> LazyModel:
    """torchvision ``resnet50``: 25,557,032 parameters."""
    layers: list[Layer] = [Conv2D(64, 7, stride=2, padding=3, use_bias=False), BatchNorm(), Activation("relu"),
                           MaxPool2D(3, stride=2, padding=1)]
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        stride = 1 if i == 0 else 2
        layers.append(Sequential([_bottleneck(planes, stride if b == 0 else 1, b == 0) for b in range(blocks)],
                                 name=f"layer{i + 1}"))
    return LazyModel([*layers, GlobalAvgPool2D(), Dense(num_classes, name="fc")], name="resnet50")


# ------------------------------------------------------------------------------------------------ MobileNetV2
def _inverted_residual(inp: int, oup: int, stride: int, t: int) -> Layer:
    hidden = inp * t
    body = ([] if t == 1 else _conv_bn(hidden, 1, act="relu6")) + _conv_bn(hidden, 3, stride, groups=hidden,
                                                                           act="relu6")
    body += [Conv2D(oup, 1, use_bias=False), BatchNorm()]
    return Residual(Sequential(body)) if stride == 1 and inp == oup else Sequential(body)


def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2) -> LazyModel:
    """torchvision ``mobilenet_v2`` (width 1.0): 3,504,872 parameters."""
    features: list[Layer] = [Sequential(_conv_bn(32, 3, 2, act="relu6"))]
    inp = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            features.append(_inverted_residual(inp, c, s if i == 0 else 1, t))
            inp = c
    features.append(Sequential(_conv_bn(1280, 1, act="relu6")))
    return LazyModel([Sequential(features, name="features"), GlobalAvgPool2D(),
                      Sequential([Dropout(dropout), Dense(num_classes)], name="classifier")], name="mobilenet_v2")


# ------------------------------------------------------------------------------------------------ EfficientNet-B0
def _mbconv(inp: int, oup: int, k: int, stride: int, expand: int, sd: float) -> Layer:
    """torchvision's MBConv: expand 1x1, depthwise kxk, squeeze-and-excitation (squeeze = inp // 4, SiLU then
    sigmoid), project 1x1; a stochastic-depth shortcut when the shape is kept."""
    hidden = inp * expand
    body = ([] if expand == 1 else _conv_bn(hidden, 1, act="silu")) + _conv_bn(hidden, k, stride, groups=hidden,
                                                                               act="silu")
    gate = Sequential([AdaptiveAvgPool2D(1), Conv2D(max(1, inp // 4), 1, activation="silu"),
                       Conv2D(hidden, 1, activation="sigmoid")])
    body += [Multiply([Identity(), gate]), Conv2D(oup, 1, use_bias=False), BatchNorm()]
    if stride == 1 and inp == oup:
        return Residual(Sequential([*body, DropPath(sd)]))
    return Sequential(body)


def efficientnet_b0(num_classes: int = 1000, dropout: float = 0.2, stochastic_depth_prob: float = 0.2) -> LazyModel:
    """torchvision ``efficientnet_b0``: 5,288,548 parameters."""
    config = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
    total, done = sum(c[-1] for c in config), 0
    features: list[Layer] = [Sequential(_conv_bn(32, 3, 2, act="silu"))]
    for expand, k, stride, inp, oup, n in config:
        stage = []
        for i in range(n):
            stage.append(_mbconv(inp if i == 0 else oup, oup, k, stride if i == 0 else 1, expand,
                                 stochastic_depth_prob * done / total))
            done += 1
        features.append(Sequential(stage))
    features.append(Sequential(_conv_bn(1280, 1, act="silu")))
    return LazyModel([Sequential(features, name="features"), GlobalAvgPool2D(),
                      Sequential([Dropout(dropout), Dense(num_classes)], name="classifier")], name="efficientnet_b0")


# ------------------------------------------------------------------------------------------------ DenseNet-121
def _dense_layer(growth: int, bn_size: int) -> Concat:
    layer = Sequential([BatchNorm(), Activation("relu"), Conv2D(bn_size * growth, 1, use_bias=False), BatchNorm(),
                        Activation("relu"), Conv2D(growth, 3, padding=1, use_bias=False)])
    return Concat([Identity(), layer])  # torch.cat([x, new_features], 1)


def densenet121(num_classes: int = 1000, growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16),
                num_init_features: int = 64, bn_size: int = 4) -> LazyModel:
    """torchvision ``densenet121``: 7,978,856 parameters."""
    features: list[Layer] = [Conv2D(num_init_features, 7, stride=2, padding=3, use_bias=False), BatchNorm(),
                             Activation("relu"), MaxPool2D(3, stride=2, padding=1)]
    channels = num_init_features
    for i, n in enumerate(block_config):
        features.append(Sequential([_dense_layer(growth_rate, bn_size) for _ in range(n)]))
        channels += n * growth_rate
        if i != len(block_config) - 1:
            channels //= 2
            features.append(Sequential([BatchNorm(), Activation("relu"), Conv2D(channels, 1, use_bias=False),
                                        AvgPool2D(2, stride=2)]))
    features.append(BatchNorm())
    return LazyModel([Sequential(features, name="features"), Activation("relu"), GlobalAvgPool2D(),
                      Dense(num_classes, name="classifier")], name="densenet121")


# ------------------------------------------------------------------------------------------------ VGG-16-BN
def vgg16_bn(num_classes: int = 1000, dropout: float = 0.5) -> LazyModel:
    """torchvision ``vgg16_bn``: 138,365,992 parameters; any input >= 32 x 32 (the adaptive pool gives 7 x 7)."""
    features: list[Layer] = []
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        features += [MaxPool2D(2, stride=2)] if v == "M" else [Conv2D(int(v), 3, padding=1), BatchNorm(), Activation("relu")]
    classifier = [Dense(4096, activation="relu"), Dropout(dropout), Dense(4096, activation="relu"), Dropout(dropout),
                  Dense(num_classes)]
    return LazyModel([Sequential(features, name="features"), AdaptiveAvgPool2D(7), Flatten(),
                      Sequential(classifier, name="classifier")], name="vgg16_bn")


# ------------------------------------------------------------------------------------------------ ConvNeXt-T
def _cn_block(dim: int, sd: float) -> Residual:
    """torchvision's CNBlock: depthwise 7x7, LayerNorm and the MLP over channels-last (its Permutes), layer
    scale 1e-6, stochastic depth."""
    return Residual(Sequential([
        Conv2D(dim, 7, padding=3, groups=dim), Permute((2, 3, 1)), LayerNorm(eps=1e-6), Dense(4 * dim, activation="gelu"),
        Dense(dim), Permute((3, 1, 2)), LayerScale(1e-6), DropPath(sd)]))


def convnext_tiny(num_classes: int = 1000, stochastic_depth_prob: float = 0.1) -> LazyModel:
    """torchvision ``convnext_tiny``: 28,589,128 parameters."""
    depths, dims = (3, 3, 9, 3), (96, 192, 384, 768)
    total, done = sum(depths), 0
    features: list[Layer] = [Sequential([Conv2D(dims[0], 4, stride=4), LayerNorm(axis="channels", eps=1e-6)])]
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        stage = []
        for _ in range(depth):
            stage.append(_cn_block(dim, stochastic_depth_prob * done / (total - 1)))
            done += 1
        features.append(Sequential(stage))
        if i + 1 < len(dims):
            features.append(Sequential([LayerNorm(axis="channels", eps=1e-6), Conv2D(dims[i + 1], 2, stride=2)]))
    return LazyModel([Sequential(features, name="features"), GlobalAvgPool2D(),
                      Sequential([LayerNorm(eps=1e-6), Dense(num_classes)], name="classifier")], name="convnext_tiny")


# ------------------------------------------------------------------------------------------------ U-Net
def _double_conv(channels: int) -> Sequential:
    """milesial's DoubleConv: (3x3 convolution without bias, BatchNorm, ReLU) twice."""
    return Sequential([*_conv_bn(channels, 3), *_conv_bn(channels, 3)])


def _level(widths: tuple[int, ...], k: int) -> Concat:
    """Level k's skip connection: ``cat([x_k, up(inner(down(x_k)))])`` (milesial's ``Up`` concatenates the skip
    first). The inner part: MaxPool, DoubleConv, the next level (and its DoubleConv), then the transposed
    convolution back to this level's width."""
    inner: list[Layer] = [MaxPool2D(2), _double_conv(widths[k + 1])]
    if k + 2 < len(widths):
        inner += [_level(widths, k + 1), _double_conv(widths[k + 1])]
    return Concat([Identity(), Sequential([*inner, Conv2DTranspose(widths[k], 2, stride=2)])])


def unet(n_channels: int = 3, n_classes: int = 2) -> LazyModel:
    """milesial Pytorch-UNet ``UNet(n_channels=3, n_classes=2, bilinear=False)``: 31,037,698 parameters. The
    skip connections nest (each level a ``Concat`` of the identity and the level below); H and W must be
    multiples of 16 (milesial pads the upsampled map when they are not). ``n_channels`` is the input's, which
    the spec infers; it is kept for the reference's signature."""
    widths = (64, 128, 256, 512, 1024)
    return LazyModel([_double_conv(64), _level(widths, 0), _double_conv(64), Conv2D(n_classes, 1)], name="unet")


# ------------------------------------------------------------------------------------------------ text
def lstm_classifier(vocab_size: int, embed_dim: int = 128, hidden_size: int = 256, num_classes: int = 2,
                    num_layers: int = 1, bidirectional: bool = False, **kw: Any) -> LazyModel:
    """The torch idiom: ``nn.Embedding`` -> ``nn.LSTM(batch_first=True)`` -> the last step's output ->
    ``nn.Linear``. Input int64 token ids ``(N, T)``; output ``(N, num_classes)``."""
    return LazyModel([Embedding(vocab_size, embed_dim, name="embedding"),
                      LSTM(hidden_size, num_layers=num_layers, bidirectional=bidirectional, return_sequences=False,
                           name="lstm", **kw),
                      Dense(num_classes, name="fc")], name="lstm_classifier")


# ------------------------------------------------------------------------------------------------ parity
#: name -> (model at 10 classes, input shape) for the cross-framework parity session: the smallest input each
#: runs at (32 x 32), except the deep BatchNorm nets, whose last stage would then hold one pixel: a training-mode
#: BatchNorm over 2 values per channel divides by a difference of nearly equal numbers, so float32 summation
#: order alone moves its output (ResNet-50 at 32 x 32: 2.8 between torch and the reference); at 64 x 64 the
#: last stage has 2 x 2 pixels and the step is well conditioned.
PARITY_INPUTS: dict[str, tuple[int, ...]] = {
    "resnet50": (2, 3, 64, 64), "mobilenet_v2": (2, 3, 32, 32), "efficientnet_b0": (2, 3, 32, 32),
    "densenet121": (2, 3, 64, 64), "vgg16_bn": (2, 3, 32, 32), "convnext_tiny": (2, 3, 32, 32),
    "unet": (2, 3, 32, 32), "lstm_classifier": (2, 12),
}


def parity_specs() -> dict[str, Any]:
    """The models above at small inputs for ``nox -s parity`` (name -> spec, input shape, dtype)."""
    out: dict[str, Any] = {}
    for name, shape in PARITY_INPUTS.items():
        if name == "unet":
            spec = unet()
        elif name == "lstm_classifier":
            spec = lstm_classifier(50, embed_dim=16, hidden_size=24, num_classes=3)
        else:
            spec = globals()[name](num_classes=10)
        out[f"zoo_{name}"] = (spec, shape, "int64" if name == "lstm_classifier" else "float32")
    return out

