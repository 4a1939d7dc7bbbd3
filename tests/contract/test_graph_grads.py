"""Graph models' ``intermediates(inputs)`` and ``gradients(inputs)`` on every selected backend.

Truths: the intermediates' paths and shapes are the reference rules' per-layer report (``di.infer_shapes``) and
their values the NumPy reference's with the same weights; the gradients are checked against central finite
differences of the NumPy reference forward (no framework involved) along each parameter's own gradient, on
smooth specs (no ReLU kinks), and must agree between backends. The reference backend has no gradients, as for
list specs: it refuses by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di


def _two_inputs():
    """Embedding, masked self-attention with valid_lens, a Dense called twice (tied), two outputs."""
    tokens, lens = di.Input(name="tokens", dtype="int64"), di.Input(name="valid_lens", dtype="int64")
    h = di.Embedding(11, 8, name="emb")(tokens)
    a = di.MultiHeadAttention(8, 2, name="attn")(h, h, h, valid_lens=lens)
    h = di.LayerNorm(name="ln")(di.add(h, a))
    ffn = di.Dense(8, name="ffn")
    out = di.Sequential([di.Dense(6), di.Tanh()], name="head")(ffn(di.Tanh()(ffn(h))))
    return di.LazyModel(inputs=[tokens, lens], outputs=[out, a])


def _causal_lm():
    """GPT-2's shape in small: wte + positions, causal self-attention, a tied head (Attend)."""
    tokens = di.Input(name="tokens", dtype="int64")
    wte = di.Embedding(13, 8, name="wte")
    h = di.add(wte(tokens), di.PositionEmbedding(max_len=6, name="wpe")(wte(tokens)))
    h = di.add(h, di.MultiHeadAttention(8, 2, causal=True, name="attn")(di.LayerNorm(name="ln1")(h)))
    return di.LazyModel(inputs=tokens, outputs=di.Attend(wte)(di.LayerNorm(name="ln_f")(h)))


def _cross():
    q, m = di.Input(name="queries"), di.Input(name="memory")
    mem = di.Dense(4, name="proj")(m)
    return di.LazyModel(inputs=[q, m], outputs=di.concat([di.MultiHeadAttention(4, 2, name="x")(q, mem, mem),
                                                          di.multiply(q, di.Sigmoid()(mem))]))


CASES = {"two_inputs": (_two_inputs, lambda r: (r.integers(0, 11, (2, 5)), np.array([3, 5]))),
         "causal_lm": (_causal_lm, lambda r: (r.integers(0, 13, (2, 5)),)),
         "cross": (_cross, lambda r: (r.standard_normal((2, 3, 4)).astype(np.float32),
                                      r.standard_normal((2, 3, 5)).astype(np.float32)))}


def _models(backend: str, case: str):
    make, data = CASES[case]
    spec, xs = make(), data(np.random.default_rng(0))
    ref = di.compile(spec, "numpy")
    ref.apply_init(xs, init="normal", key=1)
    model = di.compile(spec, backend)
    model.apply_init(xs, init="normal", key=1)
    rng = np.random.default_rng(2)
    weights = {n: (rng.standard_normal(w.shape) * 0.3).astype(np.float32) for n, w in ref.export_weights().items()}
    ref.load_weights(weights)
    model.load_weights(weights)
    return spec, xs, ref, model, weights


@pytest.mark.parametrize("case", sorted(CASES))
def test_intermediates_follow_the_rules_and_the_reference(backend: str, case: str) -> None:
    spec, xs, ref, model, _ = _models(backend, case)
    rules = di.infer_shapes(spec, [x.shape for x in xs])
    got = model.intermediates(xs)
    assert list(got) == list(rules.layers)  # every position, in the report's order
    want = ref.intermediates(xs)
    for path, info in rules.layers.items():
        assert got[path].shape == tuple(info.output_shape), path
        np.testing.assert_allclose(got[path], want[path], rtol=2e-4, atol=2e-4, err_msg=path)
    outs = ref(xs)
    last = spec.nodes[spec.outputs[0] - len(xs) if spec.multi_output else spec.outputs - len(xs)]
    if last["op"] == "layer":  # the output of the last call is the model's output
        path = ref.root.children[last["layer"]].path
        np.testing.assert_allclose(want[path], outs[0] if spec.multi_output else outs, rtol=1e-6)


def _loss(ref, xs, weights) -> float:
    ref.load_weights(weights)
    outs = ref(xs)
    return float(sum(np.sum(o, dtype=np.float64) for o in (outs if isinstance(outs, tuple) else (outs,))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences_of_the_reference(backend: str, case: str) -> None:
    spec, xs, ref, model, weights = _models(backend, case)
    if backend == "numpy":
        with pytest.raises(di.UnsupportedLayerError, match="numpy: gradients are not available"):
            model.gradients(xs)
        return
    grads = model.gradients(xs)
    report = model.report
    assert sorted(grads) == sorted(n for n, p in report.params.items() if p.trainable)
    for name, g in grads.items():
        assert g.shape == report.params[name].shape and g.dtype == np.float32, name
        norm = float(np.linalg.norm(g))
        if norm == 0.0:  # only a parameter the outputs do not depend on (none here) has a zero gradient
            pytest.fail(f"{name}: zero gradient")
        d = g / norm
        h = 1e-2
        up = {**weights, name: (weights[name] + h * d).astype(np.float32)}
        down = {**weights, name: (weights[name] - h * d).astype(np.float32)}
        fd = (_loss(ref, xs, up) - _loss(ref, xs, down)) / (2 * h)
        assert abs(fd - norm) <= 0.02 * norm + 2e-3, f"{name}: projection {norm}, finite difference {fd}"
