"""The jax backend's per-call shortcuts (fastpath.py) compute exactly what the public path computes."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import deferinit as di
from deferinit.adapters.jax import FlaxModel, fastpath


@pytest.fixture
def public_path():  # type: ignore[no-untyped-def]
    fastpath.install(FlaxModel, False)
    try:
        yield
    finally:
        fastpath.install(FlaxModel, fastpath.ENABLED)


def _run() -> list[np.ndarray]:
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1), di.BatchNorm(), di.ReLU(), di.Dropout(0.5), di.Flatten(),
                         di.Dense(3)])
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    model = di.compile(spec, "jax")
    model.apply_init(x, key=3)  # Flax's defaults, drawn when first read (a pending draw)
    outs = [model(x), model(jnp.asarray(x)), model(x, training=True), model(x), model(x[:1])]
    return [np.asarray(model.to_numpy(y)) for y in outs] + [model.export_weights()["1.running_mean"]]


def test_fast_and_public_paths_agree(public_path: None) -> None:
    assert FlaxModel._forward is FlaxModel._public_forward
    public = _run()
    fastpath.install(FlaxModel, True)
    assert FlaxModel._forward is fastpath.forward
    fast = _run()
    assert len(public) == len(fast)
    for a, b in zip(public, fast):
        np.testing.assert_array_equal(a, b)


def test_the_switch_is_the_environment_variable() -> None:
    code = "from deferinit.adapters.jax import FlaxModel, fastpath; print(fastpath.ENABLED, FlaxModel._forward is fastpath.forward)"
    for value, want in (("0", "False False"), ("1", "True True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "DEFERINIT_FASTPATH": value})
        assert out.stdout.split() == want.split()
