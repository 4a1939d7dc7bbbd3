"""Sharded initialization on JAX (issue 14): eight CPU devices (XLA_FLAGS, set before jax is imported, so in
a child process), parameters as jax.Arrays laid out by NamedShardings over a Mesh, each device's slice drawn
alone. Truth: the unsharded apply_init of the same init and key (bit for bit), the plan's local shapes derived
by hand, and the numpy reference backend's forward with the same weights."""

from __future__ import annotations

import textwrap

import pytest

import deferinit as di
from isolated import run_isolated

ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}

CHILD = textwrap.dedent("""
    import numpy as np, jax
    from sharded_checks import check_fsdp_report, check_gathered, count_draws, fsdp_case, tensor_parallel_case
    assert len(jax.devices()) == 8
    drawn = count_draws()
    model, report, x = fsdp_case("jax")
    v = model.variables["params"]
    # native layouts: conv HWIO (3, 3, 3, 8) cut on O; Dense (in, out) (128, 16) cut on out; LayerNorm scale on 'model'
    assert v["layers_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
    assert {s.data.shape for s in v["layers_0"]["kernel"].addressable_shards} == {(3, 3, 3, 2)}
    assert {s.data.shape for s in v["layers_3"]["kernel"].addressable_shards} == {(128, 4)}
    assert {s.data.shape for s in v["layers_4"]["scale"].addressable_shards} == {(8,)}
    assert {s.data.shape for s in v["layers_5"]["kernel"].addressable_shards} == {(16, 1)}
    assert v["layers_3"]["bias"].sharding.is_fully_replicated
    check_fsdp_report(report, drawn)
    check_gathered(model, x, "kaiming_normal", 3, "fsdp")

    # tensor parallel: Flax keeps q/k/v as (D, heads, head_dim) and out as (heads, head_dim, H): cut on the heads
    model, x = tensor_parallel_case("jax")
    v = model.variables["params"]["layers_0"]
    assert {s.data.shape for s in v["query"]["kernel"].addressable_shards} == {(6, 1, 4)}
    assert {s.data.shape for s in v["out"]["kernel"].addressable_shards} == {(1, 4, 16)}
    assert v["out"]["bias"].sharding.is_fully_replicated
    check_gathered(model, x, "xavier_normal", 1, "tensor parallel")
    print("OK")
""")



def test_sharded_init_over_eight_cpu_devices() -> None:
    proc = run_isolated(CHILD, timeout=600, memory_mib=None, env=ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


REFUSED = textwrap.dedent("""
    import numpy as np, deferinit as di
    spec = di.LazyModel([di.MultiHeadAttention(num_heads=2, num_hiddens=8)])
    model = di.compile(spec, "jax")
    x = np.zeros((1, 3, 8), np.float32)
    model.apply_init(x, init="xavier_uniform", key=0)
    before = model.export_weights()
    try:  # 2 heads cannot be cut into 4 shards, though the canonical (8, 8) rows could
        di.shard_init(model, x, di.ShardingPlan.tensor_parallel(), {"model": 4})
    except di.UnsupportedShardingError as exc:
        assert "'0.q_weight'" in str(exc) and "2 heads of 4" in str(exc), exc
    else:
        raise AssertionError("no error")
    after = model.export_weights()
    assert all(np.array_equal(before[n], after[n]) for n in before)  # the model is as it was
    gru = di.compile(di.LazyModel([di.GRU(8)]), "jax")  # gates: several Flax variables for one canonical weight
    try:
        di.shard_init(gru, np.zeros((1, 3, 4), np.float32), di.ShardingPlan.fsdp(), {"data": 2})
    except di.UnsupportedShardingError as exc:
        assert "weight_ih_l0" in str(exc) and "replicate it" in str(exc), exc
    else:
        raise AssertionError("no error")
    assert not gru.initialized
    try:
        di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 16})
    except di.SpecError as exc:
        assert "16 devices" in str(exc), exc
    print("OK")
""")


def test_layouts_that_cannot_be_sharded_are_refused_and_nothing_changes() -> None:
    proc = run_isolated(REFUSED, timeout=300, memory_mib=None, env=ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_framework_initializers_are_refused() -> None:
    model = di.compile(di.LazyModel([di.Dense(4)]), "jax")
    with pytest.raises(di.SpecError, match="portable initializer"):
        di.shard_init(model, di.ShapeDtype((1, 3)), di.ShardingPlan.fsdp(), {"data": 1}, init=None)
