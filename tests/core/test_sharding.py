"""Sharding plans and ShapeReport.shard: framework-free, numbers derived by hand."""

from __future__ import annotations

import json

import pytest

import deferinit as di
from deferinit.sharding import SCRATCH_BYTES_PER_VALUE


@pytest.fixture
def mlp() -> di.ShapeReport:
    # 0.weight (64, 32), 0.bias (64,), 2.weight (10, 64), 2.bias (10,)
    return di.infer_shapes(di.LazyModel([di.Dense(64), di.ReLU(), di.Dense(10)]), (None, 32))


def test_fsdp_shards_weights_on_dim0_and_replicates_biases(mlp: di.ShapeReport) -> None:
    sharded = mlp.shard(di.ShardingPlan.fsdp(), {"data": 2})
    w0, b0, w2 = sharded.params["0.weight"], sharded.params["0.bias"], sharded.params["2.weight"]
    assert (w0.param_axis, w0.mesh_axis, w0.shards, w0.local_shape) == (0, "data", 2, (32, 32))
    assert (w2.local_shape, b0.param_axis, b0.local_shape) == ((5, 64), None, (64,))
    assert sharded.total_bytes == 4 * (64 * 32 + 64 + 10 * 64 + 10)
    assert sharded.bytes_per_device == 4 * (32 * 32 + 64 + 5 * 64 + 10)  # 5672
    assert sharded.peak_bytes_per_device == 5672 + SCRATCH_BYTES_PER_VALUE * 32 * 32
    assert w0.index(1) == (slice(32, 64), slice(0, 32))
    assert "dim 0 over 'data' (2)" in sharded.table()


def test_tensor_parallel_cuts_attention_like_megatron() -> None:
    spec = di.LazyModel([di.MultiHeadAttention(num_heads=2, num_hiddens=8, use_bias=True)])
    sharded = di.infer_shapes(spec, (None, 5, 6)).shard(di.ShardingPlan.tensor_parallel(), {"model": 4})
    got = {n: (p.param_axis, p.local_shape) for n, p in sharded.params.items()}
    assert got == {"0.q_weight": (0, (2, 6)), "0.q_bias": (0, (2,)), "0.k_weight": (0, (2, 6)),
                   "0.k_bias": (0, (2,)), "0.v_weight": (0, (2, 6)), "0.v_bias": (0, (2,)),
                   "0.out_weight": (1, (8, 2)), "0.out_bias": (None, (8,))}


def test_a_two_axis_mesh(mlp: di.ShapeReport) -> None:
    plan = di.ShardingPlan((di.ShardRule("0.weight", 1, "model"), di.ShardRule("*.weight", 0, "data")))
    sharded = mlp.shard(plan, {"data": 2, "model": 4})
    assert sharded.params["0.weight"].local_shape == (64, 8) and sharded.params["2.weight"].local_shape == (5, 64)
    assert sharded.devices == 8
    assert sharded.bytes_per_device == 4 * (64 * 8 + 64 + 5 * 64 + 10)


def test_a_dim_that_does_not_divide_names_the_parameter(mlp: di.ShapeReport) -> None:
    with pytest.raises(di.SpecError, match=r"'2\.weight' \(10, 64\).*divide into 4 .*received size 10"):
        mlp.shard(di.ShardingPlan.fsdp(), {"data": 4})


def test_an_unknown_mesh_axis_and_an_axis_out_of_range(mlp: di.ShapeReport) -> None:
    with pytest.raises(di.SpecError, match=r"'0\.weight'.*mesh axis 'data'.*\['model'\]"):
        mlp.shard(di.ShardingPlan.fsdp(), {"model": 2})
    with pytest.raises(di.SpecError, match=r"'0\.bias' \(64,\).*param_axis in \[-1, 1\), received 1"):
        mlp.shard(di.ShardingPlan((di.ShardRule("*", 1),)), {"data": 2})
    assert mlp.shard(di.ShardingPlan((di.ShardRule("*.weight", -1),)), {"data": 2}).params["2.weight"].local_shape == (10, 32)


@pytest.mark.parametrize("mesh", [{}, {"data": 0}, {"data": True}, [("data", 2)], {1: 2}])
def test_bad_meshes(mlp: di.ShapeReport, mesh: object) -> None:
    with pytest.raises(di.SpecError, match="mesh_shape"):
        mlp.shard(di.ShardingPlan.fsdp(), mesh)  # type: ignore[arg-type]


def test_bad_rules_and_plans() -> None:
    with pytest.raises(di.SpecError, match="param_axis"):
        di.ShardRule("*", "0")  # type: ignore[arg-type]
    with pytest.raises(di.SpecError, match="pattern"):
        di.ShardRule("")
    with pytest.raises(di.SpecError, match="ShardRule objects"):
        di.ShardingPlan(("*",))  # type: ignore[arg-type]
    with pytest.raises(di.SpecError, match="unexpected keys"):
        di.ShardingPlan.from_dict({"format": "deferinit.sharding_plan", "rules": [{"pattern": "*", "axis": 0}]})
    with pytest.raises(di.SpecError, match="not a deferinit sharding plan"):
        di.ShardingPlan.from_dict({"rules": []})
    with pytest.raises(di.SpecError, match="expected JSON"):
        di.ShardingPlan.from_json("{")
    with pytest.raises(di.SpecError, match="ShardingPlan"):
        di.infer_shapes(di.LazyModel([di.Dense(2)]), (1, 3)).shard("fsdp", {"data": 2})


def test_plans_round_trip_through_json() -> None:
    for plan in (di.ShardingPlan.fsdp("x"), di.ShardingPlan.tensor_parallel()):
        text = plan.to_json()
        assert json.loads(text)["format"] == "deferinit.sharding_plan"
        assert di.ShardingPlan.from_json(text) == plan


def test_a_report_read_from_json_has_no_roles(mlp: di.ShapeReport) -> None:
    again = di.ShapeReport.from_json(mlp.to_json())
    assert again == mlp  # roles are not part of the compared content
    with pytest.raises(di.SpecError, match="no parameter roles"):
        again.shard(di.ShardingPlan.fsdp(), {"data": 2})
    by_name = di.ShardingPlan((di.ShardRule("*.weight", 0),))
    assert again.shard(by_name, {"data": 2}).bytes_per_device == mlp.shard(by_name, {"data": 2}).bytes_per_device


def test_a_large_spec_is_planned_in_milliseconds() -> None:
    spec = di.LazyModel([di.Embedding(50_000, 8192)] + [di.Dense(8192) for _ in range(40)])
    sharded = di.infer_shapes(spec, (None, 16)).shard(di.ShardingPlan.fsdp(), {"data": 8})
    per = 4 * (50_000 * 8192 // 8 + 40 * (8192 * 8192 // 8 + 8192))
    assert sharded.bytes_per_device == per
