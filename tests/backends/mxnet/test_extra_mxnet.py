"""deferinit.layers_extra and the new options on MXNet, against Gluon's own blocks and operators built here by
hand."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import deferinit as di


def run(layers: list, x: np.ndarray, weights: dict | None = None, **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), "mxnet")
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    return np.asarray(model.to_numpy(model(x)))


X = (np.random.default_rng(0).standard_normal((3, 11)) * 5).astype(np.float32)


def _block(b):  # type: ignore[no-untyped-def]
    b.initialize()
    return lambda x: b(x)


@pytest.mark.parametrize("layer, native", [
    (di.ReLU6(), lambda x: mx.nd.clip(x, 0, 6)),
    (di.SiLU(), _block(nn.Swish())),
    (di.HardSigmoid(), lambda x: mx.nd.hard_sigmoid(x, alpha=1 / 6, beta=0.5)),
    (di.HardSwish(), lambda x: x * mx.nd.hard_sigmoid(x, alpha=1 / 6, beta=0.5)),
    (di.LeakyReLU(), _block(nn.LeakyReLU(0.01))), (di.LeakyReLU(0.3), _block(nn.LeakyReLU(0.3))),
])
def test_activations_match_gluon(layer: di.Layer, native) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(run([layer], X), native(mx.nd.array(X)).asnumpy(), rtol=1e-5, atol=1e-6)


def test_group_norm_is_mxnets_operator_with_per_channel_affine() -> None:
    # MXNet's GroupNorm operator with unit per-group scale, then gamma/beta per channel by hand
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 6, 5, 4)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    y = mx.nd.GroupNorm(mx.nd.array(x), mx.nd.ones(3), mx.nd.zeros(3), num_groups=3, eps=1e-3).asnumpy()
    want = y * gamma.reshape(1, 6, 1, 1) + beta.reshape(1, 6, 1, 1)
    got = run([di.GroupNorm(3, eps=1e-3)], x, {"0.weight": gamma, "0.bias": beta})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    model = di.compile(di.LazyModel([di.GroupNorm(3)]), "mxnet")
    model.apply_init(x)
    assert model.report.params["0.weight"].shape == (6,)
