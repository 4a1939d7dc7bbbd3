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


def _ops(block) -> list[str]:  # type: ignore[no-untyped-def]
    """The operators of the graph Gluon cached last for ``block``."""
    import json

    return [n["op"] for n in json.loads(block._cached_graph[1].tojson())["nodes"] if n["op"] != "null"]


def test_relu6_inference_graph_is_one_clip_and_recorded_graphs_keep_the_exact_kinks() -> None:
    # inference: MXNet's own clip, one op (the kink-exact form is six, and MobileNetV2's forward paid 1.76x for it)
    x = np.zeros((2, 3, 2, 2), np.float32)
    x[0, 0] = 1.0  # channel 0: four values inside (0, 6); channel 1: saturated; channel 2: exact zeros, on the kink
    x[1, 1] = 7.0
    model = di.compile(di.LazyModel([di.BatchNorm(), di.Activation("relu6")]), "mxnet")
    model.apply_init(x)
    y = model(x)
    np.testing.assert_array_equal(y.asnumpy(), mx.nd.clip(mx.nd.array(x) / np.sqrt(1 + 1e-5), 0, 6).asnumpy())
    ops = _ops(model.native)
    assert ops.count("clip") == 1 and "where" not in ops, ops
    # an inference-mode graph recorded by the user is one of its own, with PyTorch's gradient at the kinks: the BN
    # shift's gradient counts the values strictly inside (0, 6) (derived by hand: 4, 0, 0; plain clip, which passes
    # it at its bounds, gives 8, 4, 8)
    with mx.autograd.record(train_mode=False):
        total = model.native(mx.nd.array(x)).sum()
    total.backward()
    assert "where" in _ops(model.native)
    np.testing.assert_allclose(model.native._deferinit.params["0.bias"].grad().asnumpy(), [4.0, 0.0, 0.0], atol=1e-6)
    # and deferinit's own gradients (a training-mode pass with inference BatchNorm) agree
    np.testing.assert_allclose(model.gradients(x)["0.bias"], [4.0, 0.0, 0.0], atol=1e-6)
    # back to inference: the cached clip graph again, same values
    np.testing.assert_array_equal(model(x).asnumpy(), y.asnumpy())
