# mypy: disable-error-code="misc, untyped-decorator"
"""Per-call shortcuts of the jax backend, all behind one switch (``DEFERINIT_FASTPATH=0`` turns them off).

They run on every call: a jitted MLP forward takes 13 us, so each 0.1 us counts. isinstance against the
jax.Array ABC takes 0.11 us, the concrete type test 0.02; the base class's (shape, str(dtype)) signature 5 us
(numpy formats the dtype's name), the array's abstract value (shape, dtype, weak type; hashable) 0.05 us; the
forward reads the variable dict past ``State.variables``'s property when no default draw is pending. With the
switch off, :func:`install` leaves the public path: the base class's signature, ``isinstance(x, jax.Array)``
and the property. ``install`` chooses once, at import, so neither path pays a per-call test of the switch.
"""

from __future__ import annotations

import os
from typing import Any

import jax

ENABLED = os.environ.get("DEFERINIT_FASTPATH", "1") != "0"

_ARRAY_TYPES: set[type] = set()  # concrete jax.Array types seen (jaxlib's ArrayImpl)


def is_native(model: Any, x: Any) -> bool:
    if type(x) in _ARRAY_TYPES:
        return True
    if isinstance(x, jax.Array):
        _ARRAY_TYPES.add(type(x))
        return True
    return False


def signature(model: Any, x: Any) -> Any:
    return x.aval


def forward(model: Any, x: Any, training: bool) -> Any:
    st = model._native._deferinit_state  # __call__ checked there is a model
    if not training:
        fn = st.fns.get("infer") or model._fn("infer")
        return fn(st.variables if st.pending is not None else st._variables, x)  # no property call
    return model._train(st, x)


def install(cls: type, enabled: bool) -> None:
    """Put the shortcuts on the backend class (``enabled``) or its public methods back (not)."""
    fast = {"_is_native": is_native, "_signature": signature, "_forward": forward}
    for name, fn in fast.items():
        setattr(cls, name, fn if enabled else getattr(cls, "_public" + name))
