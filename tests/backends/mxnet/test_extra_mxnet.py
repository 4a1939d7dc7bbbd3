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
