"""The persistent compilation cache that nox's test and parity sessions set (noxfile.py) is really in use."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def test_the_sessions_compilation_cache_is_in_use() -> None:
    """nox sets JAX_COMPILATION_CACHE_DIR with a size cap; JAX turns the cache off with only a warning when it cannot
    open it (the cap without the ``filelock`` package did: tests(jax) compiled everything on every run). Outside nox
    nothing is set, and no cache may be in use."""
    from jax._src import compilation_cache as cc

    jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()
    if jax.config.jax_compilation_cache_dir:
        assert cc._cache is not None, "JAX_COMPILATION_CACHE_DIR is set but JAX's compilation cache is off"
    else:
        assert cc._cache is None
