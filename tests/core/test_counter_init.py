"""Counter-based portable initializers: each value is a function of (key, name, flat index) alone."""

from __future__ import annotations

import math
import tracemalloc
import zlib

import numpy as np
import pytest

from deferinit import counter, init
from deferinit.layers_base import ParamSpec
from deferinit.sharding import SCRATCH_BYTES_PER_VALUE


def _lanes(key: int, name: str, n: int) -> np.ndarray:
    """Philox-4x64 lanes 0..n-1 for (key, name), as the module docstring defines them."""
    return np.random.Philox(counter=0, key=(key << 32) | zlib.crc32(name.encode())).random_raw(n)


def test_uniform_is_the_documented_lanes() -> None:
    # XavierUniform on (4, 8): bound = sqrt(6 / (8 + 4)) = sqrt(1/2); value n = (2 * u_n - 1) * bound
    u = (_lanes(7, "0.weight", 32) >> np.uint64(11)).astype(np.float64) / 2.0**53
    want = ((2.0 * u - 1.0) * math.sqrt(0.5)).astype(np.float32).reshape(4, 8)
    got = init.XavierUniform()((4, 8), key=7, name="0.weight")
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_normal_is_box_muller_of_lane_pairs() -> None:
    raw = _lanes(3, "w", 2 * 500)
    u1 = ((raw[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    u2 = (raw[1::2] >> np.uint64(11)).astype(np.float64) / 2.0**53
    r = np.sqrt(-2.0 * np.log(u1))
    want = np.stack([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1).ravel()
    got = init.Normal(std=1.0)((1000,), key=3, name="w")
    # our log/sin/cos are arithmetic-only (the same bits everywhere): within a few float64 ulps of libm's
    assert np.allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert np.mean(got == want.astype(np.float32)) > 0.99


def test_log_and_sincos_are_accurate() -> None:
    u = np.concatenate([np.random.default_rng(0).random(200_000) + 2.0**-53, 2.0 ** -np.arange(54.0)])
    assert np.max(np.abs(counter._log(u) - np.log(u)) / np.spacing(np.abs(np.log(u)) + 1e-300)) <= 4
    v = np.random.default_rng(1).random(200_000)
    c, s = counter._sincos_2pi(v)
    assert np.max(np.abs(c - np.cos(2 * np.pi * v))) < 2e-15 and np.max(np.abs(s - np.sin(2 * np.pi * v))) < 2e-15


@pytest.mark.parametrize("initializer", [init.Normal(1.0), init.XavierUniform(), init.KaimingNormal()])
def test_every_slice_equals_the_same_slice_of_the_whole(initializer: init.Initializer) -> None:
    shape = (7, 5, 3)
    whole = initializer(shape, key=11, name="p", role="kernel")
    for index in [(slice(0, 7),), (slice(3, 4),), (slice(1, 6), slice(2, 5)), (slice(0, 7), slice(0, 5), slice(1, 2)),
                  (slice(2, 5), slice(1, 4), slice(0, 3)), (slice(6, 7), slice(4, 5), slice(2, 3)), (slice(4, 4),)]:
        part = initializer.draw(shape, index, key=11, name="p", role="kernel")
        assert np.array_equal(part, whole[index]), index


def test_chunk_boundaries_do_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = init.KaimingNormal()((9, 13), key=2, name="w")
    monkeypatch.setattr(counter, "CHUNK", 5)  # odd: pairs of normals straddle chunks
    monkeypatch.setattr(init, "chunks", lambda runs: counter.chunks(runs, 5))
    assert np.array_equal(init.KaimingNormal()((9, 13), key=2, name="w"), whole)
    assert np.array_equal(init.KaimingNormal().draw((9, 13), (slice(2, 8), slice(3, 10)), key=2, name="w"),
                          whole[2:8, 3:10])


def test_values_depend_on_key_and_name_only() -> None:
    a = init.XavierNormal()((16, 4), key=1, name="a.weight")
    assert not np.array_equal(a, init.XavierNormal()((16, 4), key=2, name="a.weight"))
    assert not np.array_equal(a, init.XavierNormal()((16, 4), key=1, name="b.weight"))
    # the first 16 of a (16, 4) and a (32, 2) parameter of the same name share their flat draws; the scale
    # differs only by the fans: sqrt(2 / (4 + 16)) vs sqrt(2 / (2 + 32))
    b = init.XavierNormal()((32, 2), key=1, name="a.weight")
    ratio = math.sqrt(2 / 20) / math.sqrt(2 / 34)
    assert np.allclose(a.ravel(), b.ravel() * ratio, rtol=1e-6)


def test_generate_shard_matches_generate() -> None:
    params = {"0.weight": ParamSpec((8, 6)), "0.bias": ParamSpec((8,), role="bias"),
              "1.weight": ParamSpec((4,), role="scale"), "2.gamma": ParamSpec((6, 2), role="fill=0.5")}
    whole = init.generate(params, init.KaimingUniform(), 5)
    index = {"0.weight": (slice(2, 4),), "0.bias": (slice(4, 8),), "2.gamma": (slice(0, 6), slice(1, 2))}
    part = init.generate_shard(params, init.KaimingUniform(), 5, index)
    for name, arr in part.items():
        assert np.array_equal(arr, whole[name][index.get(name, slice(None))]), name
    assert np.all(part["2.gamma"] == np.float32(0.5)) and part["2.gamma"].shape == (6, 1)


def test_moments_of_a_large_draw() -> None:
    z = init.Normal(std=1.0)((1 << 20,), key=0, name="m").astype(np.float64)
    se = 1 / math.sqrt(z.size)
    assert abs(z.mean()) < 5 * se and abs(z.var() - 1) < 5 * math.sqrt(2) * se
    u = init.Uniform(scale=1.0)((1 << 20,), key=0, name="m").astype(np.float64)  # uniform in [-1, 1)
    assert abs(u.mean()) < 5 * se / math.sqrt(3) and abs(u.var() - 1 / 3) < 0.003 and u.min() >= -1 and u.max() < 1


def test_scratch_memory_is_bounded_by_one_chunk() -> None:
    initializer = init.KaimingNormal()
    initializer((4, 4), name="warm")
    tracemalloc.start()
    out = initializer((4 * counter.CHUNK,), key=0, name="big")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak - out.nbytes <= SCRATCH_BYTES_PER_VALUE * counter.CHUNK
