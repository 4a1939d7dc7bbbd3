"""A graph spec on Gluon: the native is a Gluon block whose parameters Gluon collects (a layer called twice is one
block, its parameters once), and the output equals the same arithmetic on Gluon's own Dense blocks by hand."""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import gluon

import deferinit as di


def test_graph_is_gluon_and_a_tied_dense_is_one_block():
    a, b = di.Input(name="a"), di.Input(name="b")
    dense = di.Dense(3)
    spec = di.LazyModel(inputs=[a, b], outputs=[di.multiply(dense(a), dense(b)), di.concat([a, b])])
    model = di.compile(spec, "mxnet")
    xa, xb = np.ones((2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(2, 4)
    report = model.apply_init((xa, xb), init="xavier_uniform", key=0)
    assert isinstance(model.native, gluon.Block)
    assert len(list(model.native.collect_params().values())) == 2 and list(report.params) == ["0.weight", "0.bias"]
    w = model.export_weights()
    hand = gluon.nn.Dense(3, in_units=4)
    hand.initialize()
    hand.weight.set_data(mx.nd.array(w["0.weight"]))
    hand.bias.set_data(mx.nd.array(w["0.bias"]))
    want = (hand(mx.nd.array(xa)) * hand(mx.nd.array(xb))).asnumpy()
    got, joined = model((xa, xb))
    np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(joined.asnumpy(), np.concatenate([xa, xb], axis=1))
