"""deferinit.layers_up on TensorFlow against Keras's own Conv2DTranspose/Conv1DTranspose built here by hand with
the same weights (kernel ``(*k, out, in)``, written out here by hand from the canonical ``(in, out, *k)``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deferinit as di

BACKEND = "tensorflow"


def _model(layer: di.Layer, x: np.ndarray, fmt: str = "channels_last") -> tuple:
    model = di.compile(di.LazyModel([layer], data_format=fmt), "tensorflow")
    model.apply_init(x, init="xavier_uniform", key=1)
    return model, model.export_weights()


def _native(cls, w: dict, x: np.ndarray, **kw) -> np.ndarray:  # type: ignore[no-untyped-def]
    layer = cls(w["0.weight"].shape[1], w["0.weight"].shape[2:], **kw)
    layer.build(x.shape)
    perm = tuple(range(2, w["0.weight"].ndim)) + (1, 0)  # (in, out, *k) -> (*k, out, in)
    layer.set_weights([w["0.weight"].transpose(perm), w["0.bias"]])
    return np.asarray(layer(x))


@pytest.mark.parametrize("k, s, p, op, d", [(3, 1, 0, 0, 1), (3, 2, 0, 0, 1), (3, 2, 0, 1, 1), (2, 3, 0, 2, 1),
                                            (3, 1, 0, 0, 2)])
def test_valid_geometries_are_keras_own_output(k: int, s: int, p: int, op: int, d: int) -> None:
    x = np.random.default_rng(0).standard_normal((2, 5, 4, 3)).astype(np.float32)
    model, w = _model(di.Conv2DTranspose(4, k, stride=s, padding=p, output_padding=op, dilation=d), x)
    # Keras's "valid" with output_padding given: (in-1)*s + d*(k-1) + 1 + op, PyTorch's size at padding 0
    want = _native(keras.layers.Conv2DTranspose, w, x, strides=s, padding="valid", output_padding=op, dilation_rate=d)
    np.testing.assert_allclose(np.asarray(model.to_numpy(model(x))), want, rtol=1e-5, atol=1e-5)


def test_padding_is_keras_same_where_that_is_pytorchs() -> None:
    # k=4, s=2, p=1 (the DCGAN/U-Net upsampler): PyTorch gives 2n, as Keras's "same" (pads k - s = 2, 1 before)
    x = np.random.default_rng(1).standard_normal((2, 5, 4, 3)).astype(np.float32)
    model, w = _model(di.Conv2DTranspose(4, 4, stride=2, padding=1), x)
    want = _native(keras.layers.Conv2DTranspose, w, x, strides=2, padding="same")
    y = np.asarray(model.to_numpy(model(x)))
    assert y.shape == want.shape == (2, 10, 8, 4)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_integer_padding_is_the_valid_output_cropped() -> None:
    x = np.random.default_rng(2).standard_normal((2, 6, 3)).astype(np.float32)
    model, w = _model(di.Conv1DTranspose(4, 3, stride=2, padding=2, output_padding=1), x)
    full = _native(keras.layers.Conv1DTranspose, w, x, strides=2, padding="valid", output_padding=0)
    assert full.shape == (2, 13, 4)  # PyTorch's out = 5*2 - 4 + 2 + 1 + 1 = 10: from 2 to 13 - (2 - 1)
    np.testing.assert_allclose(np.asarray(model.to_numpy(model(x))), full[:, 2:12], rtol=1e-5, atol=1e-5)


def test_the_layer_is_keras_own() -> None:
    x = np.zeros((1, 3, 3, 2), np.float32)
    model, _ = _model(di.Conv2DTranspose(4, 3, stride=2), x)
    assert any(isinstance(la, keras.layers.Conv2DTranspose) for la in model.native._flatten_layers())


def test_upsample_by_hand() -> None:
    # half-pixel centres (PyTorch's align_corners=False): along a row 0..3 doubled, output o samples
    # (o + 0.5) / 2 - 0.5, clamped at 0 and at the last pixel; nearest repeats
    x = np.tile(np.arange(4, dtype=np.float32), (1, 2, 3, 1))  # (1, 2, 3, 4), every row 0 1 2 3
    for fmt in ("channels_first", "channels_last"):
        xi = x if fmt == "channels_first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for mode, row in (("bilinear", [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]),
                          ("nearest", [0, 0, 1, 1, 2, 2, 3, 3])):
            model = di.compile(di.LazyModel([di.Upsample2D((2, 2), mode=mode)], data_format=fmt), BACKEND)
            model.apply_init(xi)
            y = model(xi)
            y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
            y = y if fmt == "channels_first" else y.transpose(0, 3, 1, 2)
            assert y.shape == (1, 2, 6, 8)
            np.testing.assert_allclose(y, np.broadcast_to(np.array(row, np.float32), (1, 2, 6, 8)), atol=1e-6)
