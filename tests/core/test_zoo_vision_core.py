"""The zoo's image classifiers and LSTM classifier by the reference rules alone: torchvision's published counts
(the issue's table), the channels a few positions must have, and the LSTM classifier's count by hand."""

from __future__ import annotations

import pytest

import deferinit as di
from deferinit import zoo

COUNTS = {"resnet50": 25_557_032, "mobilenet_v2": 3_504_872, "efficientnet_b0": 5_288_548, "densenet121": 7_978_856,
          "vgg16_bn": 138_365_992, "convnext_tiny": 28_589_128}


def test_unet_count_and_shape() -> None:
    r = di.infer_shapes(zoo.unet(), (2, 3, 64, 80))
    assert r.trainable_params == 31_037_698 and r.output_shape == (2, 2, 64, 80)


@pytest.mark.parametrize("name", list(COUNTS))
def test_trainable_counts_are_torchvision_s(name: str) -> None:
    r = di.infer_shapes(getattr(zoo, name)(), (1, 3, 224, 224))
    assert r.trainable_params == COUNTS[name] and r.output_shape == (1, 1000)


def test_known_positions() -> None:
    r = di.infer_shapes(zoo.resnet50(), (1, 3, 224, 224))
    assert r.layers["layer4"].output_shape == (1, 2048, 7, 7)  # 224 / 32
    assert r.params["fc.weight"].shape == (1000, 2048)
    r = di.infer_shapes(zoo.densenet121(), (1, 3, 224, 224))
    assert r.params["classifier.weight"].shape == (1000, 1024)  # 64 + 6*32 -> 128 + 12*32 -> 256 + 24*32 -> 512 + 16*32
    r = di.infer_shapes(zoo.efficientnet_b0(), (1, 3, 224, 224))
    # the first MBConv (no expansion: depthwise conv, BN, SiLU, then the gate): 32 channels squeezed to 32 // 4
    assert r.params["features.1.0.3.1.1.weight"].shape == (8, 32, 1, 1)


def test_lstm_classifier_count_by_hand() -> None:
    spec = zoo.lstm_classifier(5000, embed_dim=64, hidden_size=128, num_classes=4, bidirectional=True)
    r = di.infer_shapes(spec, (2, 30))
    lstm = 2 * (4 * 128 * (64 + 128) + 2 * 4 * 128)  # two directions, weight_ih, weight_hh and torch's two biases
    assert r.trainable_params == 5000 * 64 + lstm + (2 * 128 * 4 + 4) and r.output_shape == (2, 4)


# the spec files of the architectures beyond the book (README's second zoo table), with the arguments they were saved with
FILES = {"resnet50": zoo.resnet50, "mobilenet_v2": zoo.mobilenet_v2, "efficientnet_b0": zoo.efficientnet_b0,
         "densenet121": zoo.densenet121, "vgg16_bn": zoo.vgg16_bn, "convnext_tiny": zoo.convnext_tiny,
         "unet": zoo.unet, "lstm_classifier": lambda: zoo.lstm_classifier(10000), "gpt2": zoo.gpt2, "bert_base": zoo.bert_base,
         "transformer": lambda: zoo.transformer(194, 214)}


@pytest.mark.parametrize("name", sorted(FILES))
def test_example_spec_files_match_the_zoo(name: str) -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "zoo" / f"{name}.json"
    assert di.load_spec(path) == FILES[name](), f"regenerate {path} with di.save_spec"
