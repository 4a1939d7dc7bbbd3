"""Add and Multiply on torch, against a squeeze-and-excitation block written here by hand in torch (the
torchvision form: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``), given the same weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import deferinit as di


class HandSE(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        x = x * scale
        return self.a(x) + x + self.b(x)


def test_matches_a_hand_written_torch_block() -> None:
    spec = di.LazyModel([
        di.Conv2D(6, 3, padding=1),
        di.Multiply([di.Identity(), di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(2, 1, activation="relu"),
                                                   di.Conv2D(6, 1), di.Sigmoid()])], name="se"),
        di.Add([di.Conv2D(6, 1), di.Identity(), di.Conv2D(6, 3, padding=1)], name="sum")])
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5)).astype(np.float32)
    model = di.compile(spec, "torch")
    model.apply_init(x, init="xavier_uniform", key=0)
    w = model.export_weights()
    hand = HandSE(6, 2)
    names = {"conv": "0", "fc1": "se.1.1", "fc2": "se.1.2", "a": "sum.0", "b": "sum.2"}
    with torch.no_grad():
        for mine, theirs in names.items():
            getattr(hand, mine).weight.copy_(torch.from_numpy(w[f"{theirs}.weight"]))
            getattr(hand, mine).bias.copy_(torch.from_numpy(w[f"{theirs}.bias"]))
        want = hand(torch.from_numpy(x)).numpy()
    got = model(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the native module's own state_dict keys are the canonical names, its merge modules torch modules
    assert sorted(model.native.state_dict()) == sorted(w)
    assert isinstance(model.native.get_submodule("se"), nn.Module)
