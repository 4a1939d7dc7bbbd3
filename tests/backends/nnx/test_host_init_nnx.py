"""NNX's default initializers drawn on the host (issue 17): ``modules.hosted`` wraps each ``*_init`` argument of
the NNX modules the adapter builds. Truth: NNX's and JAX's own initializers (their distributions' moments and the
bounds derived from the fans by hand), JAX's compilation events, and NNX's own values where the host does not draw."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import deferinit as di
from deferinit import layers as L
from deferinit.adapters.nnx import modules as M


def _params(model: di.CompiledModel) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model.native, nnx.Param))}


def test_default_init_has_nnxs_distributions() -> None:
    model = di.compile(di.LazyModel([L.Dense(300), L.Dense(7, use_bias=False)]), "nnx")
    model.apply_init(np.zeros((2, 500), np.float32), key=0)
    p = _params(model)
    k0, b0, k1 = p["layers/0/kernel"], p["layers/0/bias"], p["layers/1/kernel"]
    assert k0.shape == (500, 300) and b0.shape == (300,) and k1.shape == (300, 7) and len(p) == 3
    # lecun_normal: variance 1 / fan_in, a normal truncated to two standard deviations of the untruncated one
    std0 = 500 ** -0.5
    assert abs(k0.std() - std0) < 0.02 * std0 and abs(k0.mean()) < 0.01 * std0
    assert np.abs(k0).max() <= 2 * std0 / 0.87962566103423978 + 1e-6
    assert np.abs(k1).max() <= 2 * 300 ** -0.5 / 0.87962566103423978 + 1e-6
    np.testing.assert_array_equal(b0, 0.0)
    # NNX's own draw of the same shape, for the same moments (not the same values)
    theirs = np.asarray(nnx.Linear(500, 300, rngs=nnx.Rngs(0)).kernel.get_value())
    assert abs(k0.std() - theirs.std()) < 0.02 * std0


def test_default_init_is_deterministic_per_key() -> None:
    def draw(key: int) -> dict[str, np.ndarray]:
        model = di.compile(di.LazyModel([L.Conv2D(4, 3), L.BatchNorm(), L.Flatten(), L.Dense(5)]), "nnx")
        model.apply_init(np.zeros((1, 2, 6, 6), np.float32), key=key)
        return _params(model)

    a, b, c = draw(3), draw(3), draw(4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["layers/0/kernel"], c["layers/0/kernel"])
    assert not np.array_equal(a["layers/0/kernel"].ravel()[:20], a["layers/3/kernel"].ravel()[:20])
    np.testing.assert_array_equal(a["layers/1/scale"], 1.0)  # BatchNorm: ones and zeros, as NNX's


def test_a_default_draw_compiles_nothing() -> None:
    warm = di.compile(di.LazyModel([L.Dense(3), L.Dense(2)]), "nnx")
    warm.apply_init(np.zeros((1, 4), np.float32), key=0)  # NNX's key handling compiles once per process
    x = jax.device_put(np.zeros((1, 23), np.float32))  # (jnp.asarray of numpy data compiles once per shape)
    seen: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: seen.append(event) if "backend_compile" in event else None)
    try:
        model = di.compile(di.LazyModel([L.Dense(37), L.Dense(11), L.Dense(5)]), "nnx")  # shapes new to JAX
        model.apply_init(x, key=1)
    finally:
        jax.monitoring.clear_event_listeners()
    assert seen == []
    assert _params(model)["layers/1/kernel"].shape == (37, 11)


def test_what_the_host_does_not_draw_is_nnxs_own() -> None:
    key = jax.random.key(5)
    ortho = nnx.initializers.orthogonal()
    np.testing.assert_array_equal(np.asarray(M.hosted(ortho)(key, (4, 4), jnp.float32)),
                                  np.asarray(ortho(key, (4, 4), jnp.float32)))
    lecun = nnx.initializers.lecun_normal()
    # under a trace (a jitted init, nnx.eval_shape) JAX draws: the same values as the function itself
    traced = jax.jit(lambda k: M.hosted(lecun)(k, (6, 3), jnp.float32))(key)
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(jax.jit(lambda k: lecun(k, (6, 3), jnp.float32))(key)))
    # another dtype: JAX draws
    half = M.hosted(lecun)(key, (6, 3), jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(half, np.float32), np.asarray(lecun(key, (6, 3), jnp.bfloat16), np.float32))


@pytest.mark.parametrize("init", ["xavier_uniform", None])
def test_abstract_then_materialize_draws_the_same_as_a_concrete_init(init: str | None) -> None:
    spec = di.LazyModel([L.Dense(6), L.Dense(2)])
    concrete = di.compile(spec, "nnx")
    concrete.apply_init(np.zeros((1, 3), np.float32), init=init, key=9)
    lazy = di.compile(spec, "nnx")
    lazy.apply_init(di.ShapeDtype((1, 3), "float32"), abstract=True)
    lazy.materialize(init=init, key=9)
    a, b = concrete.export_weights(), lazy.export_weights()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_the_host_threefry_fold_in_is_jaxs() -> None:
    from deferinit.adapters.jax.host_init import threefry_fold_in

    rng = np.random.default_rng(7)
    for _ in range(64):
        words = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
        data = int(rng.integers(0, 2**32))
        want = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(words)), np.uint32(data)))
        assert threefry_fold_in(words, data) == tuple(int(w) for w in np.asarray(want))


def _streams(module: nnx.Module) -> list[tuple[str, np.ndarray]]:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.RngKey, nnx.RngCount)))
    return [("/".join(map(str, p)), np.asarray(jax.random.key_data(v.get_value()) if isinstance(v, nnx.RngKey)
                                               else v.get_value())) for p, v in flat]


def test_streams_and_statistics_built_on_the_host_are_nnxs_own() -> None:
    """Inside host_draws every stream call (a key for each module's initializers, a Dropout's fork) and every
    BatchNorm statistic is made on the host: the same keys, counts and values as NNX's own construction outside."""
    def build(rngs: nnx.Rngs) -> nnx.Module:
        return nnx.List([M.Linear(5, 8, rngs=rngs), M.BatchNorm(8, rngs=rngs), M.Dropout(0.5, rngs=rngs),
                         M.Conv(8, 4, kernel_size=(3,), rngs=rngs), M.Dropout(0.25, rngs=rngs)])

    key = jax.device_put(np.array([0, 11], np.uint32))  # what the adapter's int key is (tests/backends/jax)
    theirs = build(nnx.Rngs(key))
    with M.host_draws([0, 11]):
        ours = build(nnx.Rngs(key))
    assert [p for p, _ in _streams(ours)] == [p for p, _ in _streams(theirs)] and len(_streams(ours)) == 4
    for (path, a), (_, b) in zip(_streams(ours), _streams(theirs)):
        np.testing.assert_array_equal(a, b, err_msg=path)
    for stat in ("mean", "var"):
        a, b = getattr(ours[1], stat).get_value(), getattr(theirs[1], stat).get_value()
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # flax's own again outside host_draws: the patches are gone
    from flax.nnx import rnglib
    from flax.nnx.nn import normalization
    assert normalization.jnp is jnp and rnglib.jnp is jnp and nnx.RngStream.__call__ is M._STREAM_CALL


def test_a_build_with_batch_norm_and_dropout_compiles_nothing() -> None:
    def spec(c: int) -> di.LazyModel:
        return di.LazyModel([L.Conv2D(c, 3), L.BatchNorm(), L.ReLU(), L.Flatten(), L.Dropout(0.5), L.Dense(3)])

    warm = di.compile(spec(4), "nnx")
    warm.apply_init(np.zeros((1, 2, 6, 6), np.float32), key=0)
    x = jax.device_put(np.zeros((1, 2, 7, 7), np.float32))
    seen: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: seen.append(event) if "backend_compile" in event else None)
    try:
        model = di.compile(spec(13), "nnx")  # statistics of a size new to JAX, a key and a count per module
        model.apply_init(x, key=5)
    finally:
        jax.monitoring.clear_event_listeners()
    assert seen == []
    assert np.asarray(model.native.layers[1].var.get_value()).tolist() == [1.0] * 13
