"""deferinit.layouts against layouts written out element by element (the truth is the index arithmetic of each
framework's documented layout, not the module's own transposes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import deferinit as di
from deferinit import layouts as L


def test_dense_kernel_in_out() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # canonical (out=3, in=4)
    native = np.empty((4, 3), np.float32)  # Keras/Flax kernel (in, out)
    for o, i in itertools.product(range(3), range(4)):
        native[i, o] = w[o, i]
    assert np.array_equal(L.to_native("dense", w), native)
    assert np.array_equal(L.to_canonical("dense", native), w)
    assert L.native_shape("dense", (3, 4)) == (4, 3) and L.canonical_shape("dense", (4, 3)) == (3, 4)


@pytest.mark.parametrize("kernel", [(5,), (2, 3)])
def test_conv_kernel_hwio(kernel: tuple) -> None:
    out, inn = 4, 3
    w = np.random.default_rng(0).standard_normal((out, inn, *kernel)).astype(np.float32)  # OIHW / OIW
    native = np.empty((*kernel, inn, out), np.float32)  # HWIO / WIO
    for o, i in itertools.product(range(out), range(inn)):
        for k in itertools.product(*(range(n) for n in kernel)):
            native[(*k, i, o)] = w[(o, i, *k)]
    assert np.array_equal(L.to_native("conv", w), native)
    assert np.array_equal(L.to_canonical("conv", native), w)
    assert L.native_shape("conv", w.shape) == native.shape and L.canonical_shape("conv", native.shape) == w.shape


def test_attention_heads() -> None:
    d, heads, hd = 5, 2, 3
    w = np.random.default_rng(1).standard_normal((heads * hd, d)).astype(np.float32)  # canonical q_weight (H, D)
    native = np.empty((d, heads, hd), np.float32)  # Flax DenseGeneral kernel: head h holds rows h*hd..h*hd+hd
    for j, h, k in itertools.product(range(d), range(heads), range(hd)):
        native[j, h, k] = w[h * hd + k, j]
    assert np.array_equal(L.to_native("heads_in", w, native.shape), native)
    assert np.array_equal(L.to_canonical("heads_in", native), w)
    assert L.native_shape("heads_in", w.shape, heads=heads) == native.shape
    wo = np.random.default_rng(2).standard_normal((d, heads * hd)).astype(np.float32)  # out_weight (H, heads*hd)
    native_o = np.empty((heads, hd, d), np.float32)
    for h, k, j in itertools.product(range(heads), range(hd), range(d)):
        native_o[h, k, j] = wo[j, h * hd + k]
    assert np.array_equal(L.to_native("heads_out", wo, native_o.shape), native_o)
    assert np.array_equal(L.to_canonical("heads_out", native_o), wo)
    b = np.arange(heads * hd, dtype=np.float32)
    assert np.array_equal(L.to_canonical("heads_bias", b.reshape(heads, hd)), b)


def test_gates() -> None:
    h = 2
    blocks = [np.full((h, 3), g, np.float32) for g in range(3)]  # r, z, n
    stacked = L.join_gates(blocks)
    assert [b[0, 0] for b in L.split_gates(stacked, 3)] == [0, 1, 2]
    keras_order = L.regate(stacked, (1, 0, 2))  # Keras GRU holds (z, r, h)
    assert [keras_order[i * h, 0] for i in range(3)] == [1, 0, 2]
    assert np.array_equal(L.regate(keras_order, (1, 0, 2)), stacked)


def test_recurrent_names_match_the_rules() -> None:
    for kind, cls in (("RNN", di.RNN), ("GRU", di.GRU), ("LSTM", di.LSTM)):
        for layers, bidi, bias in itertools.product((1, 2), (False, True), (False, True)):
            spec = di.LazyModel([cls(4, num_layers=layers, bidirectional=bidi, use_bias=bias)])
            names = [n.split(".", 1)[1] for n in di.infer_shapes(spec, (2, 3, 5)).params]
            assert names == L.recurrent_names(kind, layers, bidi, bias)
    assert len(L.RECURRENT_GATES["LSTM"]) == 4


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="layout kind"):
        L.to_native("hwoi", np.zeros((2, 2)))


def test_contiguous_copies_views_into_c_order_float32_with_the_same_values() -> None:
    rng = np.random.default_rng(3)
    big = rng.standard_normal((1100, 1000)).astype(np.float32)  # above the tiled threshold, ragged tiles at the edges
    for view in (big.T, big[:, :7].T, big[::2].T, big.astype(np.float64).T,
                 rng.standard_normal((3, 4, 5)).transpose(2, 0, 1), np.arange(6.0)):
        out = L.contiguous(view)
        assert out.flags.c_contiguous and out.dtype == np.float32 and out.shape == view.shape
        np.testing.assert_array_equal(out, np.asarray(view, np.float32))
        assert not np.shares_memory(out, big)
    assert L.contiguous(big) is big  # already C-ordered float32: no copy, as np.ascontiguousarray


def test_contiguous_in_a_forked_child_uses_a_pool_of_its_own() -> None:
    """A fork copies the thread pool but not its threads: the child's big copy must not wait on the parent's."""
    import os
    import signal

    big = np.random.default_rng(4).standard_normal((1100, 1000)).astype(np.float32)
    parent = L.contiguous(big.T)  # the pool and its threads exist before the fork
    pid = os.fork()
    if pid == 0:  # the child: the same copy within 20 s, or exit 1
        signal.alarm(20)
        try:
            os._exit(0 if np.array_equal(L.contiguous(big.T), parent) else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
