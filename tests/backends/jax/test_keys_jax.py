"""The jax and nnx backends' int keys, made without compiling JAX's ``threefry_seed`` (issue 17: a fresh process's
first apply_init compiled it, 69 ms, and ``fold_in`` for the dropout key, 51 ms). Truth: JAX's own
``jax.random.PRNGKey`` and ``jax.random.fold_in``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import deferinit as di
from deferinit.adapters.jax import FlaxModel

SEEDS = [None, 0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 5, 2**62 + 3, 2**63 - 1, -1, -(2**31), -(2**63),
         np.int64(3), np.uint32(2**32 - 2), np.int8(-5)]


@pytest.mark.parametrize("seed", SEEDS, ids=repr)
def test_an_int_key_is_jaxs_own_prngkey(seed: object) -> None:
    model = di.compile(di.LazyModel([di.Dense(2)]), "jax")
    got = model._key(seed)  # type: ignore[attr-defined]
    s = 0 if seed is None else int(seed) % 2**64  # type: ignore[call-overload]
    want = jax.random.PRNGKey(s - 2**64 if s >= 2**63 else s)
    assert isinstance(got, jax.Array) and got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_dropout_key_is_made_at_the_first_training_call_and_is_fold_in_of_the_init_key() -> None:
    spec = di.LazyModel([di.Dense(8), di.Dropout(0.5), di.Dense(2)])
    x = np.ones((4, 3), np.float32)
    model = di.compile(spec, "jax")
    model.apply_init(x, key=11)
    st = model._st(model.native)  # type: ignore[attr-defined]
    assert st._rng is None  # not made by the init
    want = jax.random.fold_in(jax.random.PRNGKey(11), 0x5EED)
    np.testing.assert_array_equal(np.asarray(st.rng), np.asarray(want))
    first = np.asarray(model(x, training=True))
    assert not np.array_equal(np.asarray(st.rng), np.asarray(want))  # advanced by the training call
    again = di.compile(spec, "jax")
    again.apply_init(x, key=11)
    np.testing.assert_array_equal(np.asarray(again(x, training=True)), first)  # same key, same dropout mask


def test_an_explicit_jax_key_is_taken_as_given() -> None:
    model = di.compile(di.LazyModel([di.Dense(2)]), "jax")
    for key in (jax.random.PRNGKey(5), jax.random.key(5)):
        assert model._key(key) is key  # type: ignore[attr-defined]
    assert FlaxModel._key is type(model)._key


def test_an_int_key_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def compiled(*args: object, **kwargs: object) -> None:
        raise AssertionError("jax.random.PRNGKey was called")

    model = di.compile(di.LazyModel([di.Dense(2)]), "jax")
    monkeypatch.setattr(jax.random, "PRNGKey", compiled)
    model.apply_init(np.ones((1, 3), np.float32), key=4)  # the key, and no dropout key until a training call
    assert model._st(model.native)._rng is None  # type: ignore[attr-defined]
