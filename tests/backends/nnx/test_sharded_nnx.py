"""Sharded initialization on Flax NNX (issue 14): eight CPU devices (XLA_FLAGS, set before jax is imported, so in
a child process), each NNX variable given a jax.Array laid out by a NamedSharding over a Mesh, each device's slice
drawn alone. Truth: the unsharded apply_init of the same init and key on nnx (bit for bit), the native layouts'
local shapes derived by hand, and the numpy reference backend's forward with the same weights."""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

import deferinit as di
from isolated import run_isolated

ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}

CHILD = textwrap.dedent("""
    import numpy as np, jax, deferinit as di
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from sharded_checks import check_fsdp_report, check_gathered, count_draws, fsdp_case, tensor_parallel_case
    assert len(jax.devices()) == 8
    drawn = count_draws()
    model, report, x = fsdp_case("nnx")
    layers = model.native.layers
    assert isinstance(layers[0], nnx.Conv) and isinstance(layers[3], nnx.Linear)
    # native layouts: conv HWIO (3, 3, 3, 8) cut on O; Linear (in, out) (128, 16) cut on out; LayerNorm scale on 'model'
    conv, dense, norm, last = layers[0].kernel[...], layers[3].kernel[...], layers[4].scale[...], layers[5].kernel[...]
    assert conv.sharding.spec == P(None, None, None, "data") and dense.sharding.spec == P(None, "data")
    assert norm.sharding.spec == P("model") and last.sharding.spec == P(None, "data")
    assert {s.data.shape for s in conv.addressable_shards} == {(3, 3, 3, 2)}
    assert {s.data.shape for s in dense.addressable_shards} == {(128, 4)}
    assert {s.data.shape for s in norm.addressable_shards} == {(8,)}
    assert {s.data.shape for s in last.addressable_shards} == {(16, 1)}
    assert layers[3].bias[...].sharding.is_fully_replicated and len(layers[3].bias[...].sharding.device_set) == 8
    check_fsdp_report(report, drawn)
    assert model.initialized and model.report.params["3.weight"].shape == (16, 128)
    check_gathered(model, x, "kaiming_normal", 3, "fsdp")

    # tensor parallel: nnx.MultiHeadAttention keeps q/k/v as (D, heads, head_dim), out as (heads, head_dim, H)
    model, x = tensor_parallel_case("nnx")
    attn = model.native.layers[0]
    assert {s.data.shape for s in attn.query.kernel[...].addressable_shards} == {(6, 1, 4)}
    assert {s.data.shape for s in attn.out.kernel[...].addressable_shards} == {(1, 4, 16)}
    assert attn.out.bias[...].sharding.is_fully_replicated
    check_gathered(model, x, "xavier_normal", 1, "tensor parallel")

    # nnx.GRUCell fuses its gates (dense_i (in, 3H) in PyTorch's order r, z, n): one variable, so it is cut too
    spec = di.LazyModel([di.GRU(8), di.Dense(4)])
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    model = di.compile(spec, "nnx")
    di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 4}, init="xavier_uniform", key=5)
    state = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model.native))}
    assert {s.data.shape for s in state["layers/0/layers/0/cell/dense_i/kernel"][...].addressable_shards} == {(4, 6)}
    assert {s.data.shape for s in state["layers/0/layers/0/cell/dense_h/kernel"][...].addressable_shards} == {(8, 6)}
    check_gathered(model, x, "xavier_uniform", 5, "GRU")
    print("OK")
""")



def test_sharded_init_over_eight_cpu_devices() -> None:
    proc = run_isolated(CHILD, timeout=600, memory_mib=None, env=ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


REFUSED = textwrap.dedent("""
    import numpy as np, deferinit as di
    spec = di.LazyModel([di.MultiHeadAttention(num_heads=2, num_hiddens=8)])
    model = di.compile(spec, "nnx")
    x = np.zeros((1, 3, 8), np.float32)
    model.apply_init(x, init="xavier_uniform", key=0)
    native, before = model.native, model.export_weights()
    try:  # 2 heads cannot be cut into 4 shards, though the canonical (8, 8) rows could
        di.shard_init(model, x, di.ShardingPlan.tensor_parallel(), {"model": 4})
    except di.UnsupportedShardingError as exc:
        assert "backend nnx" in str(exc) and "'0.q_weight'" in str(exc) and "2 heads of 4" in str(exc), exc
    else:
        raise AssertionError("no error")
    after = model.export_weights()
    assert model.native is native and all(np.array_equal(before[n], after[n]) for n in before)  # as it was
    assert np.asarray(model(x)).shape == (1, 3, 8)
    lstm = di.compile(di.LazyModel([di.LSTM(8)]), "nnx")  # nnx.LSTMCell: one NNX kernel per gate (ii, if_, ...)
    try:
        di.shard_init(lstm, np.zeros((1, 3, 4), np.float32), di.ShardingPlan.fsdp(), {"data": 2})
    except di.UnsupportedShardingError as exc:
        assert "weight_ih_l0" in str(exc) and "layers/0/cell/ii/kernel" in str(exc) and "replicate it" in str(exc), exc
    else:
        raise AssertionError("no error")
    assert not lstm.initialized
    try:
        di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 16})
    except di.SpecError as exc:
        assert "16 devices" in str(exc), exc
    else:
        raise AssertionError("no error")
    print("OK")
""")


def test_layouts_that_cannot_be_sharded_are_refused_and_nothing_changes() -> None:
    proc = run_isolated(REFUSED, timeout=300, memory_mib=None, env=ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_framework_initializers_are_refused() -> None:
    model = di.compile(di.LazyModel([di.Dense(4)]), "nnx")
    with pytest.raises(di.SpecError, match="portable initializer"):
        di.shard_init(model, di.ShapeDtype((1, 3)), di.ShardingPlan.fsdp(), {"data": 1}, init=None)
    assert not model.initialized


def test_a_one_device_mesh_gives_the_unsharded_weights() -> None:
    spec = di.LazyModel([di.Dense(6), di.ReLU(), di.Dense(3)])
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    model = di.compile(spec, "nnx")
    di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 1}, init="xavier_uniform", key=7)
    ref = di.compile(spec, "numpy")
    ref.apply_init(x, init="xavier_uniform", key=7)
    got, want = model.export_weights(), ref.export_weights()
    assert all(np.array_equal(got[n], want[n]) for n in want)
    assert np.allclose(np.asarray(model(x)), ref(x), rtol=1e-5, atol=1e-6)


def _values(model: di.CompiledModel) -> dict:
    out = {}
    for k, v in nnx.to_flat_state(nnx.state(model.native)):
        value = v.get_value()
        is_key = jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
        out[k] = np.asarray(jax.random.key_data(value) if is_key else value)
    return out


def test_every_nnx_variable_is_concrete_and_as_the_unsharded_build_makes_it() -> None:
    # the nnx.Rngs streams Dropout keeps (key, count) and BatchNorm's statistics are not drawn shard by shard: they
    # must still hold what NNX's own concrete build gives them, so training forwards match too
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1, activation="relu"), di.BatchNorm(), di.Flatten(), di.Dense(6),
                         di.Dropout(0.5), di.Dense(3)])
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    model = di.compile(spec, "nnx")
    di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 1}, init="kaiming_uniform", key=9)
    ref = di.compile(spec, "nnx")
    ref.apply_init(x, init="kaiming_uniform", key=9)
    got, want = _values(model), _values(ref)
    assert list(got) == list(want) and any("rngs" in map(str, k) for k in want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert np.array_equal(np.asarray(model(x, training=True)), np.asarray(ref(x, training=True)))
