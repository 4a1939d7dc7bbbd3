"""deferinit.layers_up on MXNet against Gluon's own Conv1DTranspose/Conv2DTranspose built here by hand with the
same weights (Gluon's weight is the canonical ``(in, out // groups, *k)``)."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import deferinit as di

BACKEND = "mxnet"


@pytest.mark.parametrize("fields", [dict(), dict(strides=2), dict(strides=2, padding=1, output_padding=1),
                                    dict(strides=3, padding=2, output_padding=2, dilation=2),
                                    dict(strides=2, groups=2), dict(strides=(2, 1), padding=(1, 0))])
@pytest.mark.parametrize("ndim", [1, 2])
def test_conv_transpose_equals_gluon_own(fields: dict, ndim: int) -> None:
    if ndim == 1:
        fields = {k: v[0] if isinstance(v, tuple) else v for k, v in fields.items()}
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)[:ndim + 2]).astype(np.float32)
    spec_fields = {("stride" if k == "strides" else k): v for k, v in fields.items()}
    layer = (di.Conv1DTranspose if ndim == 1 else di.Conv2DTranspose)(6, 3, in_channels=4, **spec_fields)
    model = di.compile(di.LazyModel([layer]), "mxnet")
    model.apply_init(x, init="xavier_uniform", key=2)
    w = model.export_weights()
    assert w["0.weight"].shape == (4, 6 // fields.get("groups", 1)) + (3,) * ndim
    native = (nn.Conv1DTranspose if ndim == 1 else nn.Conv2DTranspose)(6, 3, in_channels=4, **fields)
    native.initialize()
    native.weight.set_data(mx.nd.array(w["0.weight"]))
    native.bias.set_data(mx.nd.array(w["0.bias"]))
    want = native(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(np.asarray(model.to_numpy(model(x))), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_grouped_conv_transpose_without_in_channels_equals_gluon_own_with_them(ndim: int, fmt: str) -> None:
    """Gluon refuses a grouped Conv*Transpose with in_channels=0 (its shape rule fails); the adapter defers it anyway:
    its weight, bias and output are those of Gluon's own block built with in_channels=6 and given the same values."""
    x = np.random.default_rng(1).standard_normal((2, 6, 5, 4)[:ndim + 2]).astype(np.float32)
    cls = nn.Conv1DTranspose if ndim == 1 else nn.Conv2DTranspose
    with pytest.raises(mx.base.MXNetError, match="num_filter must divide group size"):
        cls(4, 3, strides=2, groups=3, in_channels=0)
    layer = (di.Conv1DTranspose if ndim == 1 else di.Conv2DTranspose)(9, 3, stride=2, groups=3)
    model = di.compile(di.LazyModel([layer], data_format=fmt), "mxnet")  # (the adapter hybridizes the model)
    xs = x if fmt == "channels_first" else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    report = model.apply_init(xs, init="xavier_uniform", key=2)
    assert report.params["0.weight"].shape == (6, 3) + (3,) * ndim and report.params["0.weight"].source == "native"
    w = model.export_weights()
    native = cls(9, 3, strides=2, groups=3, in_channels=6)
    native.initialize()
    native.weight.set_data(mx.nd.array(w["0.weight"]))
    native.bias.set_data(mx.nd.array(w["0.bias"]))
    want = native(mx.nd.array(x)).asnumpy()
    got = np.asarray(model.to_numpy(model(xs)))
    got = got if fmt == "channels_first" else np.moveaxis(got, -1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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
