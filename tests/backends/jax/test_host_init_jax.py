"""JAX's initializers drawn on the host (adapters/jax/host_init.py) against JAX's own draws of the same
initializers: the same distribution (moments and bounds of large samples), no compilation, deterministic seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.nn import initializers as I

from deferinit.adapters.jax.host_init import host_draw, key_words

T2 = 2 / 0.87962566103423978  # 2 standard deviations of the underlying normal, in the truncated draw's own units
# (name, initializer, shape, bounds derived by hand from the fans, or None for an unbounded normal)
CASES = [
    ("lecun_normal", I.lecun_normal(), (64, 3000), T2 * (1 / 64) ** 0.5),             # Flax's Dense/Conv default
    ("he_normal", I.he_normal(), (3, 3, 40, 300), T2 * (2 / 360) ** 0.5),              # fan-in 3 * 3 * 40
    ("glorot_uniform", I.glorot_uniform(), (3, 3, 16, 2000), (3 / ((144 + 18000) / 2)) ** 0.5),
    ("embed_default", I.variance_scaling(1.0, "fan_in", "normal", out_axis=0), (5000, 32), None),  # flax.linen.Embed
    ("fan_avg_axes", I.variance_scaling(2.0, "fan_avg", "truncated_normal", in_axis=(0, 1), out_axis=(2,)),
     (8, 4, 20000), T2 * (2 / ((32 + 20000) / 2)) ** 0.5),
    ("fan_geo_avg", I.variance_scaling(0.5, "fan_geo_avg", "uniform"), (300, 600),
     (3 * 0.5 / (300 * 600) ** 0.5) ** 0.5),
    ("normal", I.normal(0.02), (200, 500), None),
    ("uniform", I.uniform(0.1), (200, 500), (0.0, 0.1)),                                # [0, scale)
    ("truncated_normal", I.truncated_normal(0.5, lower=-1.0, upper=1.5), (200, 500), (-0.5, 0.75)),
]


@pytest.mark.parametrize("name, init, shape, bounds", CASES, ids=[c[0] for c in CASES])
def test_host_draw_has_jaxs_distribution(name: str, init, shape: tuple, bounds) -> None:  # type: ignore[no-untyped-def]
    ours = host_draw(init, shape, [1, 2, 3])
    theirs = np.asarray(jax.jit(lambda k: init(k, shape, jnp.float32))(jax.random.key(0)))
    assert ours is not None and ours.dtype == np.float32 and ours.shape == theirs.shape
    n = ours.size
    std = theirs.std()
    assert abs(ours.mean() - theirs.mean()) < 6 * std / np.sqrt(n)
    assert abs(ours.std() / std - 1) < 6 / np.sqrt(2 * n) + 1e-3
    if bounds is not None:  # both draws fill the same interval, and no further
        lo, hi = (-bounds, bounds) if np.isscalar(bounds) else bounds
        for draw in (ours, theirs):
            assert lo - 1e-6 <= draw.min() < lo + 0.02 * (hi - lo) and hi - 0.02 * (hi - lo) < draw.max() <= hi + 1e-6


def test_constants_and_what_is_left_to_jax() -> None:
    np.testing.assert_array_equal(host_draw(I.zeros, (3, 4), [0]), np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(host_draw(I.ones, (2,), [0]), np.ones(2, np.float32))
    np.testing.assert_array_equal(host_draw(I.constant(0.25), (2, 2), [0]), np.full((2, 2), 0.25, np.float32))
    assert host_draw(I.orthogonal(), (4, 4), [0]) is None  # not drawn here: JAX draws it
    assert host_draw(lambda key, shape, dtype: jnp.zeros(shape, dtype), (4,), [0]) is None
    assert host_draw(I.lecun_normal(), (7,), [0]) is None  # JAX refuses the fans of a 1-D kernel: it says so itself


def test_draws_are_deterministic_per_seed() -> None:
    a, b, c = (host_draw(I.lecun_normal(), (16, 32), s) for s in ([5, 6, 1], [5, 6, 1], [5, 6, 2]))
    assert a is not None and b is not None and c is not None
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert key_words(jax.random.key(7)) == key_words(jax.random.key(7)) != key_words(jax.random.key(8))
    assert key_words(jax.random.PRNGKey(7)) == key_words(jax.random.key(7))  # raw and typed keys alike


def test_a_models_default_draw_compiles_nothing() -> None:
    import deferinit as di
    from deferinit import zoo

    model = di.compile(zoo.resnet18(), "jax")
    model.apply_init(np.zeros((1, 1, 96, 96), np.float32), init="xavier_uniform", key=0)  # warm: what any init
    model.export_weights()                                                               # compiles (no draw in JAX)
    seen: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: seen.append(event) if "backend_compile" in event else None)
    try:
        model = di.compile(zoo.resnet18(), "jax")
        model.apply_init(np.zeros((1, 1, 96, 96), np.float32), key=1)
        w = model.export_weights()  # Flax's default initializers, every value drawn
    finally:
        jax.monitoring.clear_event_listeners()
    assert seen == []
    assert abs(w["0.0.weight"].std() - (7 * 7) ** -0.5) < 0.1 * (7 * 7) ** -0.5  # lecun_normal, fan-in 7 x 7 x 1


def test_big_draws_are_drawn_in_chunks_on_every_core_and_stay_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    from concurrent.futures import ThreadPoolExecutor

    from deferinit import _threads
    from deferinit.adapters.jax import host_init

    shape = (3, host_init.CHUNK + 7)  # four chunks, the last one short
    a = host_draw(I.normal(1.0), shape, [9, 1])
    gen_a = host_draw(I.lecun_normal(), shape, np.random.default_rng(4))
    monkeypatch.setattr(_threads, "_POOL", [ThreadPoolExecutor(max_workers=1), os.getpid()])  # one thread
    b = host_draw(I.normal(1.0), shape, [9, 1])
    gen_b = host_draw(I.lecun_normal(), shape, np.random.default_rng(4))
    assert a is not None and b is not None and gen_a is not None and gen_b is not None
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gen_a, gen_b)
    flat = a.reshape(-1)
    chunks = [flat[i * host_init.CHUNK:(i + 1) * host_init.CHUNK] for i in range(4)]
    assert len({c[:16].tobytes() for c in chunks}) == 4  # each chunk its own stream
    for c in chunks[:3]:  # each chunk a standard normal on its own
        assert abs(c.mean()) < 6 / np.sqrt(c.size) and abs(c.std() - 1) < 6 / np.sqrt(2 * c.size)
    assert np.abs(gen_a).max() <= T2 * (3 ** -0.5) + 1e-6  # lecun_normal, fan-in 3


def test_a_forked_child_draws_with_a_pool_of_its_own() -> None:
    """A fork copies the pool but not its threads: the child must make its own, not wait on the parent's."""
    import os
    import signal

    from deferinit.adapters.jax import host_init

    shape = (4, host_init.CHUNK)
    parent = host_draw(I.normal(1.0), shape, [3])  # the parent's pool exists (its threads) before the fork
    assert parent is not None
    pid = os.fork()
    if pid == 0:  # the child: the same draw, within 20 s, or exit 1
        signal.alarm(20)
        try:
            child = host_draw(I.normal(1.0), shape, [3])
            os._exit(0 if child is not None and np.array_equal(child, parent) else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
