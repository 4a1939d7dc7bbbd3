"""The torch fast path (``adapters/torch/fastpath.py``) against torch's public path: the same numbers, and every
hook torch's ``_call_impl`` honours still fires with it on."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import deferinit as di
from cases import BY_ID
from deferinit.adapters.torch import fastpath


@pytest.mark.parametrize("case_id", ["mlp", "channels_last", "tied"])
def test_a_model_gives_the_same_outputs_and_gradients_both_ways(case_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), "torch")
    model.apply_init(case.data(), key=3)
    x, weights = case.data(seed=1), model.export_weights()
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(fastpath, "ENABLED", enabled)
        model.load_weights(weights)  # a training call moves BatchNorm's running statistics
        runs.append((model(x).detach().numpy(), model(x, training=True).detach().numpy(), model.gradients(x)))
    (y_on, t_on, g_on), (y_off, t_off, g_off) = runs
    np.testing.assert_array_equal(y_on, y_off)
    np.testing.assert_array_equal(t_on, t_off)
    assert g_on.keys() == g_off.keys() and all(np.array_equal(g_on[k], g_off[k]) for k in g_on)


def test_hooks_on_the_native_model_still_fire_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "ENABLED", True)
    model = di.compile(BY_ID["mlp"].make(), "torch")
    x = BY_ID["mlp"].data()
    model.apply_init(x)
    seen: list[str] = []
    handles = [model.native.register_forward_pre_hook(lambda m, a: seen.append("pre")),
               model.native.register_forward_hook(lambda m, a, y: y * 0),  # a hook may replace the output
               torch.nn.modules.module.register_module_forward_hook(
                   lambda m, a, y: seen.append("global") if m is model.native else None)]
    try:
        y = model(x).detach().numpy()
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "global"] and not y.any()
    assert model(x).detach().numpy().any()  # hooks removed: the plain forward again


def test_the_switch_is_read_from_the_environment() -> None:
    code = "from deferinit.adapters.torch import fastpath; print(fastpath.ENABLED)"
    env = dict(os.environ, DEFERINIT_FASTPATH="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_the_steady_state_call_is_the_native_forward_in_inference_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchModel._call's short path (a plain tensor of a checked signature) against the hand-called native module:
    the same numbers, the module put back in eval mode, and it is taken (no signature computed again); a new shape,
    a float64 tensor and a framework error still get what the base class's path gives."""
    from deferinit.adapters.torch import TorchModel
    from deferinit.errors import BackendError, ShapeMismatchError

    monkeypatch.setattr(fastpath, "ENABLED", True)
    model = di.compile(di.LazyModel([di.Dense(4, activation="relu"), di.BatchNorm(), di.Dense(2)]), "torch")
    model.apply_init(np.ones((3, 5), np.float32), key=0)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32))
    model(x)  # checks the signature
    signatures = [0]
    real = TorchModel._signature
    monkeypatch.setattr(TorchModel, "_signature", lambda self, t: signatures.__setitem__(0, signatures[0] + 1)
                        or real(self, t))
    model.native.train()  # left in training mode by the user: an inference call must not use batch statistics
    y = model(x)
    assert signatures == [0] and not model.native.training
    with torch.no_grad():
        want = model.native(x)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(model(x.double()), want, rtol=0, atol=0)  # coerced to float32 on the checked path
    with pytest.raises(ShapeMismatchError, match=r"layer '0' \(Dense\)"):
        model(torch.ones(3, 6))

    def broken(t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kernel gave up")

    model.native.forward = broken  # type: ignore[method-assign]
    with pytest.raises(BackendError, match=r"forward failed in the framework .*RuntimeError: kernel gave up"):
        model(x)
