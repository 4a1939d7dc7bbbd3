"""deferinit.layers_extra and the new options on torch, against torch's own modules built here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deferinit as di


def run(layers: list, x: np.ndarray, weights: dict | None = None, backend: str = "torch", **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), backend)
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    y = model(x)
    return np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)


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


@pytest.mark.parametrize("size, k, s, p", [(7, 2, 2, 1), (8, 3, 3, 1), (9, 3, 2, 1), (6, 2, 3, 0), (10, 4, 3, 2)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("which", ["numpy", "torch"])
def test_pools_match_torch(size: int, k: int, s: int, p: int, ceil_mode: bool, which: str) -> None:
    # the reference kernel (numpy) and the torch backend, each against torch's own pooling modules
    x = np.random.default_rng(size).standard_normal((2, 3, size, size + 1)).astype(np.float32)
    np.testing.assert_allclose(run([di.MaxPool2D(k, stride=s, padding=p, ceil_mode=ceil_mode)], x, backend=which),
                               native(nn.MaxPool2d(k, s, p, ceil_mode=ceil_mode), x))
    for include in (True, False):
        got = run([di.AvgPool2D(k, stride=s, padding=p, ceil_mode=ceil_mode, count_include_pad=include)], x,
                  backend=which)
        want = native(nn.AvgPool2d(k, s, p, ceil_mode=ceil_mode, count_include_pad=include), x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out", [1, (3, 4), (5, 2), (7, 10), (9, 12)])
@pytest.mark.parametrize("which", ["numpy", "torch"])
def test_adaptive_avg_pool_matches_torch(out, which: str) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 10)).astype(np.float32)
    np.testing.assert_allclose(run([di.AdaptiveAvgPool2D(out)], x, backend=which),
                               native(nn.AdaptiveAvgPool2d(out), x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 4), 3), ((2, 6, 5), 2), ((3, 4), 4), ((2, 8, 3, 3), 1)])
@pytest.mark.parametrize("which", ["numpy", "torch"])
def test_group_norm_matches_torch(shape: tuple, groups: int, which: str) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    c = shape[1]
    w = {"0.weight": rng.standard_normal(c).astype(np.float32), "0.bias": rng.standard_normal(c).astype(np.float32)}
    ref = nn.GroupNorm(groups, c, eps=1e-3)
    ref.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in w.items()})
    np.testing.assert_allclose(run([di.GroupNorm(groups, eps=1e-3)], x, w, backend=which), native(ref, x),
                               rtol=1e-5, atol=1e-5)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt ``LayerNorm2d`` (torchvision/models/convnext.py), ported by hand: permute to
    channels last, ``F.layer_norm`` over the channels, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("which", ["numpy", "torch"])
def test_layer_norm_channels_is_convnexts_layernorm2d(which: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 6, 5, 4)) * 2 + 1).astype(np.float32)
    w = {"0.weight": rng.standard_normal(6).astype(np.float32), "0.bias": rng.standard_normal(6).astype(np.float32)}
    ref = LayerNorm2d(6, eps=1e-6)
    ref.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in w.items()})
    got = run([di.LayerNorm(axis="channels", eps=1e-6)], x, w, backend=which)
    np.testing.assert_allclose(got, native(ref, x), rtol=1e-5, atol=1e-5)
