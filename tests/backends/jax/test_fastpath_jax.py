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
    xj = jnp.asarray(x)  # a jax array of a checked signature: the steady-state call (fastpath.call)
    outs = [model(x), model(xj), model(xj), model(x, training=True), model(xj), model(x), model(x[:1])]
    return [np.asarray(model.to_numpy(y)) for y in outs] + [model.export_weights()["1.running_mean"]]


def test_fast_and_public_paths_agree(public_path: None) -> None:
    assert FlaxModel._forward is FlaxModel._public_forward and FlaxModel._call is FlaxModel._public_call
    public = _run()
    fastpath.install(FlaxModel, True)
    assert FlaxModel._forward is fastpath.forward and FlaxModel._call is fastpath.call
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


def test_the_steady_state_call_keeps_the_checks_and_names_a_framework_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastpath.call takes only a checked signature: a new shape still gets the rules' error, and a failure inside
    the compiled function is the BackendError every forward raises (the base class's wrapping)."""
    from deferinit.errors import BackendError, ShapeMismatchError

    model = di.compile(di.LazyModel([di.Dense(4, activation="relu"), di.Dense(2)]), "jax")
    model.apply_init(np.ones((2, 3), np.float32), key=0)
    xj = jnp.ones((2, 3), jnp.float32)
    want = np.asarray(model(np.ones((2, 3), np.float32)))
    np.testing.assert_array_equal(np.asarray(model(xj)), want)
    with pytest.raises(ShapeMismatchError, match=r"layer '0' \(Dense\)"):
        model(jnp.ones((2, 5), jnp.float32))
    st = model.native._deferinit_state

    def broken(variables, x):  # type: ignore[no-untyped-def]
        raise RuntimeError("XLA gave up")

    monkeypatch.setitem(st.fns, "infer", broken)
    with pytest.raises(BackendError, match=r"forward failed in the framework .*RuntimeError: XLA gave up"):
        model(xj)
