"""deferinit.layers_extra and the new options on torch, against torch's own modules built here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deferinit as di


def run(layers: list, x: np.ndarray, weights: dict | None = None, **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), "torch")
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    return np.asarray(model.to_numpy(model(x)))


def native(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


X = (np.random.default_rng(0).standard_normal((3, 11)) * 5).astype(np.float32)


@pytest.mark.parametrize("layer, module", [
    (di.ReLU6(), nn.ReLU6()), (di.SiLU(), nn.SiLU()), (di.HardSwish(), nn.Hardswish()),
    (di.HardSigmoid(), nn.Hardsigmoid()), (di.LeakyReLU(), nn.LeakyReLU()), (di.LeakyReLU(0.3), nn.LeakyReLU(0.3)),
    (di.GELU(approximate="tanh"), nn.GELU(approximate="tanh")), (di.Activation("gelu_tanh"), nn.GELU("tanh")),
    (di.Activation("hard_swish"), nn.Hardswish()), (di.Activation("leaky_relu"), nn.LeakyReLU(0.01)),
])
def test_activations_match_torch_modules(layer: di.Layer, module: nn.Module) -> None:
    np.testing.assert_allclose(run([layer], X), native(module, X), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_return_sequences_false_is_torchs_final_hidden_state(kind: str, bidirectional: bool) -> None:
    # torch's h_n holds each direction's final state: the forward one after the last step, the backward one
    # after the first; return_sequences=False is their concatenation (Keras's convention)
    x = np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)
    spec = getattr(di, kind)(5, num_layers=2, bidirectional=bidirectional, return_sequences=False)
    model = di.compile(di.LazyModel([spec]), "torch")
    model.apply_init(x, key=2)
    weights = model.export_weights()
    ref = getattr(nn, kind)(4, 5, num_layers=2, bidirectional=bidirectional, batch_first=True)
    ref.load_state_dict({k.split(".", 1)[1]: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        out = ref(torch.from_numpy(x))
    h_n = (out[1][0] if kind == "LSTM" else out[1]).numpy()
    want = np.concatenate([h_n[-2], h_n[-1]], axis=-1) if bidirectional else h_n[-1]
    np.testing.assert_allclose(model.to_numpy(model(x)), want, rtol=1e-5, atol=1e-6)
