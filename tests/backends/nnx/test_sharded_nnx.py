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
    from deferinit import init as init_mod
    assert len(jax.devices()) == 8
    drawn = []
    original = init_mod.Initializer.draw
    def counted(self, shape, index=None, **kw):
        out = original(self, shape, index, **kw)
        drawn.append((kw.get("name"), out.shape))
        return out
    init_mod.Initializer.draw = counted

    spec = di.LazyModel([di.Conv2D(8, 3), di.ReLU(), di.Flatten(), di.Dense(16), di.LayerNorm(), di.Dense(4)])
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    plan = di.ShardingPlan((di.ShardRule("*.weight", 0, "data", role="kernel"), di.ShardRule("4.weight", 0, "model")))
    model = di.compile(spec, "nnx")
    report = di.shard_init(model, x, plan, {"data": 4, "model": 2}, init="kaiming_normal", key=3)
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
    # each device's callback drew only its slice: 8 draws of (2, 3, 3, 3) for the conv kernel, never the whole
    assert sorted(s for n, s in drawn if n == "0.weight") == [(2, 3, 3, 3)] * 8, drawn
    assert report.params["3.weight"].local_shape == (4, 128) and report.bytes_per_device == 4 * (
        2 * 27 + 8 + 4 * 128 + 16 + 8 + 16 + 16 + 4)
    assert model.initialized and model.report.params["3.weight"].shape == (16, 128)

    ref = di.compile(spec, "nnx")
    ref.apply_init(x, init="kaiming_normal", key=3)
    a, b = ref.export_weights(), model.export_weights()
    assert list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a), "gathered != unsharded"
    numpy_ref = di.compile(spec, "numpy")
    numpy_ref.load_weights(b, input_shape=x.shape)
    assert np.allclose(np.asarray(model(x)), numpy_ref(x), rtol=1e-4, atol=1e-5)

    # tensor parallel: nnx.MultiHeadAttention keeps q/k/v as (D, heads, head_dim), out as (heads, head_dim, H)
    spec = di.LazyModel([di.MultiHeadAttention(num_heads=4, num_hiddens=16, use_bias=True), di.Dense(8)])
    x = np.random.default_rng(1).standard_normal((2, 5, 6)).astype(np.float32)
    model = di.compile(spec, "nnx")
    di.shard_init(model, x, di.ShardingPlan.tensor_parallel(), {"model": 4}, init="xavier_normal", key=1)
    attn = model.native.layers[0]
    assert {s.data.shape for s in attn.query.kernel[...].addressable_shards} == {(6, 1, 4)}
    assert {s.data.shape for s in attn.out.kernel[...].addressable_shards} == {(1, 4, 16)}
    assert attn.out.bias[...].sharding.is_fully_replicated
    ref = di.compile(spec, "nnx")
    ref.apply_init(x, init="xavier_normal", key=1)
    a, b = ref.export_weights(), model.export_weights()
    assert all(np.array_equal(a[n], b[n]) for n in a), "tensor parallel: gathered != unsharded"
    numpy_ref = di.compile(spec, "numpy")
    numpy_ref.load_weights(b, input_shape=x.shape)
    assert np.allclose(np.asarray(model(x)), numpy_ref(x), rtol=1e-4, atol=1e-5)

    # nnx.GRUCell fuses its gates (dense_i (in, 3H) in PyTorch's order r, z, n): one variable, so it is cut too
    spec = di.LazyModel([di.GRU(8), di.Dense(4)])
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    model = di.compile(spec, "nnx")
    di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": 4}, init="xavier_uniform", key=5)
    state = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model.native))}
    assert {s.data.shape for s in state["layers/0/layers/0/cell/dense_i/kernel"][...].addressable_shards} == {(4, 6)}
    assert {s.data.shape for s in state["layers/0/layers/0/cell/dense_h/kernel"][...].addressable_shards} == {(8, 6)}
    ref = di.compile(spec, "nnx")
    ref.apply_init(x, init="xavier_uniform", key=5)
    a, b = ref.export_weights(), model.export_weights()
    assert all(np.array_equal(a[n], b[n]) for n in a), "GRU: gathered != unsharded"
    numpy_ref = di.compile(spec, "numpy")
    numpy_ref.load_weights(b, input_shape=x.shape)
    assert np.allclose(np.asarray(model(x)), numpy_ref(x), rtol=1e-4, atol=1e-5)
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
