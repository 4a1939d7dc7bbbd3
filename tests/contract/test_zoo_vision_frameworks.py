"""The zoo's image classifiers on every selected framework, initialized abstractly (nothing allocated): the
shapes the framework itself reports add up to torchvision's published counts (the issue's table), and
VGG-16-BN's adaptive pool takes any input of at least 32 x 32."""

from __future__ import annotations

import math

import pytest

import deferinit as di
from deferinit import zoo

# torchvision's counts (trainable parameters; the table) and the BatchNorm running statistics on top of
# them (running_mean and running_var: the buffers of the torchvision definitions ported by hand in
# tests/backends/torch/test_zoo_vision_torch.py, which asserts the same numbers)
COUNTS = {"resnet50": (25_557_032, 53_120), "mobilenet_v2": (3_504_872, 34_112),
          "efficientnet_b0": (5_288_548, 42_016), "densenet121": (7_978_856, 83_648),
          "vgg16_bn": (138_365_992, 8_448), "convnext_tiny": (28_589_128, 0)}


@pytest.mark.parametrize("name", list(COUNTS))
def test_counts_from_the_framework_s_abstract_shapes(framework: str, name: str) -> None:
    model = di.compile(getattr(zoo, name)(), framework)
    report = model.apply_init(di.ShapeDtype((1, 3, 224, 224), "float32"), abstract=True)
    trainable = sum(math.prod(p.native_shape) for p in report.params.values() if p.trainable)
    stats = sum(math.prod(p.native_shape) for p in report.params.values() if not p.trainable)
    assert (trainable, stats) == COUNTS[name]
    assert report.output_shape == (1, 1000)


@pytest.mark.parametrize("size", [(32, 32), (57, 91)])
def test_vgg16_bn_takes_any_input_from_32(framework: str, size: tuple) -> None:
    report = di.compile(zoo.vgg16_bn(), framework).apply_init(di.ShapeDtype((2, 3, *size), "float32"), abstract=True)
    assert report.output_shape == (2, 1000) and report.params["classifier.0.weight"].shape == (4096, 512 * 7 * 7)


def test_unet_counts_from_the_framework_s_abstract_shapes(framework: str) -> None:
    # milesial's UNet(n_channels=3, n_classes=2, bilinear=False): 31,037,698 parameters; 11,776 BatchNorm
    # statistics (the buffers of the port in tests/backends/torch/test_zoo_vision_torch.py)
    report = di.compile(zoo.unet(), framework).apply_init(di.ShapeDtype((1, 3, 96, 64), "float32"), abstract=True)
    trainable = sum(math.prod(p.native_shape) for p in report.params.values() if p.trainable)
    stats = sum(math.prod(p.native_shape) for p in report.params.values() if not p.trainable)
    assert (trainable, stats) == (31_037_698, 11_776) and report.output_shape == (1, 2, 96, 64)
