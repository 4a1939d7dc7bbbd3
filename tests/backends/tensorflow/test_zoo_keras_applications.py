"""The zoo's image classifiers against ``keras.applications`` (built with ``weights=None``: no download).

Keras's variants are not all torchvision's; each difference is derived here by hand from the two definitions and
checked against the counts Keras itself reports. Where the variant is the same network (ConvNeXt-T without its
preprocessing layer, DenseNet-121), Keras's model with random weights and the spec compiled for TensorFlow with
those weights (Keras's variables in order, converted to the canonical layouts) give the same logits."""

from __future__ import annotations

import numpy as np
import pytest
from keras import applications

import deferinit as di
from deferinit import zoo


def _count(model: object) -> tuple[int, int]:
    return (sum(int(np.prod(v.shape)) for v in model.trainable_weights),  # type: ignore[attr-defined]
            sum(int(np.prod(v.shape)) for v in model.non_trainable_weights))  # type: ignore[attr-defined]


def _ours(name: str) -> tuple[int, int]:
    r = di.infer_shapes(getattr(zoo, name)(), (1, 3, 224, 224))
    return r.trainable_params, r.non_trainable_params


def test_keras_counts_and_how_its_variants_differ() -> None:
    kw = {"weights": None, "classifier_activation": None}
    assert _count(applications.ConvNeXtTiny(include_preprocessing=False, **kw)) == _ours("convnext_tiny")
    assert _count(applications.MobileNetV2(**kw)) == _ours("mobilenet_v2")
    assert _count(applications.DenseNet121(**kw)) == _ours("densenet121")
    # EfficientNetB0 keeps a Normalization layer in the model: mean (3), variance (3) and count (1) statistics
    trainable, stats = _ours("efficientnet_b0")
    assert _count(applications.EfficientNetB0(**kw)) == (trainable, stats + 7)
    # Keras's ResNet50 gives every convolution a bias (torchvision's have none): one per output channel of each
    # convolution, and each is followed by a BatchNorm, so as many as the BatchNorms' channels (half the stats)
    trainable, stats = _ours("resnet50")
    assert _count(applications.ResNet50(**kw)) == (trainable + stats // 2, stats)
    # Keras has VGG16 without batch normalization: vgg16_bn less its BatchNorms' weight and bias (two per channel)
    trainable, stats = _ours("vgg16_bn")
    assert _count(applications.VGG16(**kw)) == (trainable - stats, 0)


def _canonical(keras_model: object, names: list[str], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Keras's variables in order, as canonical arrays: convolution kernels HWIO -> OIHW, Dense (in, out) -> (out, in)."""
    out = {}
    variables = keras_model.weights  # type: ignore[attr-defined]
    assert len(variables) == len(names)
    for name, v in zip(names, variables):
        a = np.asarray(v.numpy())
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 2:
            a = a.T
        assert a.shape == shapes[name], (name, v.path)
        out[name] = a
    return out


@pytest.mark.parametrize("name, make", [
    ("convnext_tiny", lambda: applications.ConvNeXtTiny(weights=None, include_preprocessing=False,
                                                        classifier_activation=None, input_shape=(64, 64, 3))),
    ("densenet121", lambda: applications.DenseNet121(weights=None, classifier_activation=None,
                                                     input_shape=(64, 64, 3))),
])
def test_same_logits_as_keras(name: str, make: object) -> None:
    keras_model = make()  # type: ignore[operator]
    rng = np.random.default_rng(0)
    for v in keras_model.weights:  # random everything; variances positive
        shape = tuple(v.shape)
        v.assign((rng.uniform(0.5, 1.5, shape) if "variance" in v.path else rng.standard_normal(shape) * 0.05)
                 .astype(np.float32))
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = np.asarray(keras_model(x.transpose(0, 2, 3, 1), training=False))
    model = di.compile(getattr(zoo, name)(), "tensorflow")
    report = model.apply_init(x, key=0)
    model.load_weights(_canonical(keras_model, list(report.params), {n: p.shape for n, p in report.params.items()}))
    got = model.to_numpy(model(x))
    # DenseNet121's BatchNorms use epsilon 1.001e-5 in Keras, 1e-5 in torchvision and the spec
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))
