"""What the JAX and NNX sharded-initialization children (tests/backends/{jax,nnx}/test_sharded_*.py) check alike, run
inside those children (eight CPU devices, set before jax is imported). Each backend's own test inspects its native
variables; the cases, the draw count and the truths (the unsharded apply_init bit for bit, the numpy reference's
forward) are here once."""

from __future__ import annotations

from typing import Any

import numpy as np

import deferinit as di


def count_draws() -> list[tuple[Any, tuple[int, ...]]]:
    """Every portable draw from now on, as (parameter name, shape drawn): a sharded init draws slices, never the whole."""
    from deferinit import init as init_mod

    drawn: list[tuple[Any, tuple[int, ...]]] = []
    original = init_mod.Initializer.draw

    def counted(self, shape, index=None, **kw):  # type: ignore[no-untyped-def]
        out = original(self, shape, index, **kw)
        drawn.append((kw.get("name"), out.shape))
        return out

    init_mod.Initializer.draw = counted  # type: ignore[method-assign]
    return drawn


def fsdp_case(backend: str) -> tuple[Any, Any, Any]:
    """A conv net sharded over a (data 4, model 2) mesh: kernels cut on 'data' (dim 0, canonical), the LayerNorm's
    scale on 'model'. Returns the model, the report and the input."""
    spec = di.LazyModel([di.Conv2D(8, 3), di.ReLU(), di.Flatten(), di.Dense(16), di.LayerNorm(), di.Dense(4)])
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    plan = di.ShardingPlan((di.ShardRule("*.weight", 0, "data", role="kernel"), di.ShardRule("4.weight", 0, "model")))
    model = di.compile(spec, backend)
    report = di.shard_init(model, x, plan, {"data": 4, "model": 2}, init="kaiming_normal", key=3)
    return model, report, x


def check_fsdp_report(report: Any, drawn: list) -> None:
    """Hand-derived: 8 draws of the conv kernel's (2, 3, 3, 3) slice; local shapes and bytes from the plan."""
    assert sorted(s for n, s in drawn if n == "0.weight") == [(2, 3, 3, 3)] * 8, drawn
    assert report.params["3.weight"].local_shape == (4, 128) and report.bytes_per_device == 4 * (
        2 * 27 + 8 + 4 * 128 + 16 + 8 + 16 + 16 + 4)


def tensor_parallel_case(backend: str) -> tuple[Any, Any]:
    """Attention cut on its heads over a 'model' axis of 4. Returns the model and the input."""
    spec = di.LazyModel([di.MultiHeadAttention(num_heads=4, num_hiddens=16, use_bias=True), di.Dense(8)])
    x = np.random.default_rng(1).standard_normal((2, 5, 6)).astype(np.float32)
    model = di.compile(spec, backend)
    di.shard_init(model, x, di.ShardingPlan.tensor_parallel(), {"model": 4}, init="xavier_normal", key=1)
    return model, x


def check_gathered(model: Any, x: np.ndarray, init: str, key: int, what: str) -> None:
    """The sharded weights, gathered, are the unsharded apply_init's bit for bit, and the sharded model computes
    the numpy reference's output with them."""
    ref = di.compile(model.spec, model.backend)
    ref.apply_init(x, init=init, key=key)
    a, b = ref.export_weights(), model.export_weights()
    assert list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a), f"{what}: gathered != unsharded"
    numpy_ref = di.compile(model.spec, "numpy")
    numpy_ref.load_weights(b, input_shape=x.shape)
    assert np.allclose(np.asarray(model(x)), numpy_ref(x), rtol=1e-4, atol=1e-5), f"{what}: forward"
