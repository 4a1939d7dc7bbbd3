"""Graph models' gradients on torch against torch autograd of the same graph written by hand (plain tensors)."""

from __future__ import annotations

import numpy as np
import torch

import deferinit as di


def test_gradients_equal_hand_written_autograd() -> None:
    x, y = di.Input(name="x"), di.Input(name="y")
    d1, d2 = di.Dense(4, name="d1"), di.Dense(4, name="d2")
    c = di.Tanh()(di.add(d1(x), d2(y)))
    spec = di.LazyModel(inputs=[x, y], outputs=[d1(c), di.multiply(c, y)])  # d1 called twice: one parameter set
    rng = np.random.default_rng(0)
    xs = (rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32))
    model = di.compile(spec, "torch")
    model.apply_init(xs, init="normal", key=0)
    w = {n: (rng.standard_normal(a.shape) * 0.5).astype(np.float32) for n, a in model.export_weights().items()}
    model.load_weights(w)
    t = {n: torch.tensor(a, requires_grad=True) for n, a in w.items()}
    tx, ty = torch.from_numpy(xs[0]), torch.from_numpy(xs[1])
    hc = torch.tanh(tx @ t["d1.weight"].T + t["d1.bias"] + ty @ t["d2.weight"].T + t["d2.bias"])
    total = (hc @ t["d1.weight"].T + t["d1.bias"]).sum() + (hc * ty).sum()
    total.backward()
    grads = model.gradients(xs)
    assert sorted(grads) == sorted(t)
    for name, tensor in t.items():
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    inter = model.intermediates(xs)  # d1 is recorded at its first call, on x
    np.testing.assert_allclose(inter["d1"], (tx @ t["d1.weight"].T + t["d1.bias"]).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(inter["2"], hc.detach().numpy(), rtol=1e-5, atol=1e-6)
