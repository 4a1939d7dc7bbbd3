"""Graph models called with ``training=True`` on every selected backend: BatchNorm normalizes with the batch's
statistics and moves its running statistics (PyTorch's rule: momentum 0.1, unbiased variance), Dropout and
DropPath drop, as list specs do.

Truths: a small graph's training step derived by hand with NumPy below; a larger graph (two inputs, a convolution
and BatchNorm inside a Residual, a BatchNorm called twice, attention with valid_lens) against the NumPy reference's
training kernels, output and running statistics, over two steps; dropout's masks by their properties (every
value dropped or scaled by 1 / (1 - rate), the dropped fraction within binomial bounds, a new mask per call).
"""

from __future__ import annotations

import numpy as np

import deferinit as di


def _out(model, y):
    return [np.asarray(model.to_numpy(t)) for t in (y if isinstance(y, tuple) else (y,))]


def _bn_dense():
    a, b = di.Input(name="a"), di.Input(name="b")
    h = di.BatchNorm(name="bn")(di.Dense(4, name="fc")(a))
    return di.LazyModel(inputs=[a, b], outputs=di.add(h, di.Dropout(0.0, name="drop")(b)))


def test_batchnorm_training_step_by_hand(backend: str) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    model = di.compile(_bn_dense(), backend)
    model.apply_init((a, b), init="normal", key=0)
    w = {"fc.weight": rng.standard_normal((4, 3)).astype(np.float32), "fc.bias": np.float32([0.1, -0.2, 0.3, 0.0]),
         "bn.weight": np.float32([1.0, 2.0, 0.5, 1.5]), "bn.bias": np.float32([0.0, 1.0, -1.0, 0.5]),
         "bn.running_mean": np.float32([0.5, -0.5, 0.0, 1.0]), "bn.running_var": np.float32([1.0, 2.0, 0.5, 1.0])}
    model.load_weights(w)
    rm, rv = w["bn.running_mean"].astype(np.float64), w["bn.running_var"].astype(np.float64)
    for step in range(2):  # two batches: the running statistics accumulate
        x, y = (a, b) if step == 0 else (a[::-1] * 2 + 1, b)
        h = x.astype(np.float64) @ w["fc.weight"].T + w["fc.bias"]
        mean, var = h.mean(0), h.var(0)
        want = (h - mean) / np.sqrt(var + 1e-5) * w["bn.weight"] + w["bn.bias"] + y
        got = _out(model, model((x, y), training=True))[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        rm, rv = 0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * 6 / 5
        weights = model.export_weights()
        np.testing.assert_allclose(weights["bn.running_mean"], rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights["bn.running_var"], rv, rtol=1e-5, atol=1e-6)
    # inference reads the running statistics and leaves them alone
    h = a.astype(np.float64) @ w["fc.weight"].T + w["fc.bias"]
    want = (h - rm) / np.sqrt(rv + 1e-5) * w["bn.weight"] + w["bn.bias"] + b
    np.testing.assert_allclose(_out(model, model((a, b)))[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.export_weights()["bn.running_mean"], rm, rtol=1e-5, atol=1e-6)


def _vision_text():
    """An image through conv + BatchNorm inside a Residual, DropPath(0); tokens through attention with valid_lens
    and Dropout(0); one BatchNorm called on both branches (its statistics move twice per step)."""
    image, tokens, lens = di.Input(name="image"), di.Input(name="tokens", dtype="int64"), \
        di.Input(name="valid_lens", dtype="int64")
    body = di.Residual(di.Sequential([di.Conv2D(3, 3, padding="same"), di.BatchNorm(), di.ReLU()]), name="block")
    img = di.Flatten()(di.GlobalAvgPool2D()(di.DropPath(0.0, name="dp")(body(image))))
    h = di.Embedding(9, 6, name="emb")(tokens)
    h = di.LayerNorm(name="ln")(di.add(h, di.MultiHeadAttention(6, 2, name="attn")(h, h, h, valid_lens=lens)))
    txt = di.Dense(3, name="proj")(di.Flatten()(di.Dropout(0.0, name="drop")(h)))
    shared = di.BatchNorm(name="shared_bn")
    return di.LazyModel(inputs=[image, tokens, lens], outputs=[di.Dense(2, name="head")(
        di.concat([shared(img), shared(txt)])), shared(txt)])


def test_training_matches_the_reference(backend: str) -> None:
    rng = np.random.default_rng(1)
    xs = (rng.standard_normal((4, 3, 5, 5)).astype(np.float32), rng.integers(0, 9, (4, 4)), np.array([1, 4, 2, 3]))
    spec = _vision_text()
    ref, model = di.compile(spec, "numpy"), di.compile(spec, backend)
    ref.apply_init(xs, init="xavier_uniform", key=2)
    model.apply_init(xs, init="xavier_uniform", key=2)
    weights = ref.export_weights()
    for name in weights:  # running statistics away from their start values, so the momentum rule shows
        if name.endswith("running_mean"):
            weights[name] = rng.standard_normal(weights[name].shape).astype(np.float32)
        elif name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 2.0, weights[name].shape).astype(np.float32)
    ref.load_weights(weights)
    model.load_weights(weights)
    for step in range(2):
        batch = xs if step == 0 else (xs[0] * 2 - 1, xs[1][::-1].copy(), xs[2])
        want, got = ref(batch, training=True), _out(model, model(batch, training=True))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)
        after, expected = model.export_weights(), ref.export_weights()
        moved = [n for n in expected if n.endswith(("running_mean", "running_var"))]
        assert len(moved) == 4
        for name in moved:
            assert not np.allclose(expected[name], weights[name]), name  # the reference did move them
            np.testing.assert_allclose(after[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for g, w in zip(_out(model, model(xs)), ref(xs)):  # inference with the trained statistics
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)


def _droppers():
    x = di.Input(name="x")
    return di.LazyModel(inputs=x, outputs=[di.Dropout(0.5, name="drop")(x), di.DropPath(0.25, name="dp")(x)])


def test_dropout_and_droppath_drop_in_training(backend: str) -> None:
    x = np.random.default_rng(3).uniform(1.0, 2.0, (64, 32)).astype(np.float32)
    model = di.compile(_droppers(), backend)
    model.apply_init(x)
    for y in _out(model, model(x)):  # inference: the identity
        np.testing.assert_array_equal(y, x)
    first = None
    for _ in range(2):
        drop, path = _out(model, model(x, training=True))
        dropped = drop == 0
        assert np.all(dropped | np.isclose(drop, x * 2, rtol=1e-6))  # each value dropped, or kept and scaled
        assert 0.44 < dropped.mean() < 0.56  # 1024 expected of 2048 (binomial: outside with chance < 1e-7)
        gone = np.all(path == 0, axis=1)
        assert np.all(gone | np.all(np.isclose(path, x / 0.75, rtol=1e-6), axis=1))  # per sample: all or nothing
        assert 4 <= gone.sum() <= 32  # 16 expected of 64 (outside with chance < 1e-4)
        if first is None:
            first = dropped
        else:
            assert not np.array_equal(first, dropped)  # a new mask per call
