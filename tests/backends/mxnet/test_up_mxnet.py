"""deferinit.layers_up on MXNet against Gluon's own Conv1DTranspose/Conv2DTranspose built here by hand with the
same weights (Gluon's weight is the canonical ``(in, out // groups, *k)``)."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import deferinit as di


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
