"""The MXNet fast path (the inference graph's CachedOp called directly) against Gluon's public path: the same
model run both ways gives the same numbers, the switch really takes the public path, and the reference agrees."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import deferinit as di
from deferinit.adapters.mxnet import fastpath


def _spec() -> di.LazyModel:
    return di.LazyModel([di.Conv2D(4, 3, padding=1), di.BatchNorm(), di.ReLU(), di.MaxPool2D(2), di.Flatten(),
                         di.Dense(3)])


def _model(x: np.ndarray) -> di.CompiledModel:
    model = di.compile(_spec(), "mxnet")
    model.apply_init(x, init="xavier_uniform", key=3)
    model(x)  # Gluon's own first inference call builds the graph (and, when enabled, the direct call)
    return model


def test_fast_and_public_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    fast_model = _model(x)
    direct = fast_model.native.__dict__["_di_fast"]
    assert direct is not None
    calls: list[int] = []
    op = direct.op
    direct.op = lambda *a: calls.append(1) or op(*a)
    fast = fast_model.to_numpy(fast_model(x))
    assert calls == [1]  # the fast path ran
    monkeypatch.setattr(fastpath, "ENABLED", False)
    public_model = _model(x)
    public_model.load_weights(fast_model.export_weights())
    public = public_model.to_numpy(public_model(x))
    assert public_model.native.__dict__.get("_di_fast") is None  # switched off: Gluon's public path only
    np.testing.assert_array_equal(fast, public)
    ref = di.compile(_spec(), "numpy")
    ref.load_weights(fast_model.export_weights(), input_shape=x.shape)
    np.testing.assert_allclose(public, ref(x), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("value, enabled", [("0", False), ("1", True)])
def test_the_environment_switch(value: str, enabled: bool) -> None:
    env = dict(os.environ, DEFERINIT_FASTPATH=value)
    out = subprocess.run([sys.executable, "-c", "from deferinit.adapters.mxnet import fastpath; "
                          "print(fastpath.ENABLED)"], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == str(enabled), out.stderr
