"""shard_init on every backend (issue 14): the backends with a sharding engine (jax, nnx, torch) validate the mesh
against what the framework has (devices, a process group) before allocating anything; the others refuse with
UnsupportedShardingError saying why. The sharded paths themselves are tested in tests/backends/{jax,nnx,torch}."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di

REASON = {"tensorflow": "Keras 3's distribution API", "mxnet": "Gluon has no sharded parameter type",
          "numpy": "reference backend runs on one process"}


def test_shard_init_is_supported_or_refused_with_the_reason(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Dense(4), di.ReLU(), di.Dense(2)]), backend)
    x = np.zeros((1, 6), np.float32)
    plan = di.ShardingPlan.fsdp()
    if backend in REASON:
        with pytest.raises(di.UnsupportedShardingError, match=f"backend {backend}: sharded initialization is not "
                                                              f"supported: .*{REASON[backend]}"):
            di.shard_init(model, x, plan, {"data": 2})
        assert isinstance(di.UnsupportedShardingError("x"), di.UnsupportedLayerError)
    else:  # one CPU device / no process group in this test process: the mesh cannot be made, said by name
        with pytest.raises(di.SpecError, match="needs .*(2 devices|2 ranks)"):
            di.shard_init(model, x, plan, {"data": 2})
    assert not model.initialized  # nothing was allocated or swapped in


def test_a_plan_that_does_not_fit_is_refused_before_the_framework(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Dense(5)]), backend)
    want = (di.UnsupportedShardingError, "not supported") if backend in REASON else (di.SpecError, "mesh axis 'model'")
    with pytest.raises(want[0], match=want[1]):
        di.shard_init(model, np.zeros((1, 6), np.float32), di.ShardingPlan.fsdp("model"), {"data": 1})
    assert not model.initialized
