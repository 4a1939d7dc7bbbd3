# mypy: disable-error-code="misc, untyped-decorator"
"""Per-call shortcuts of the jax backend, all behind one switch (``DEFERINIT_FASTPATH=0`` turns them off).

They run on every call: a jitted MLP forward takes 13 us, so each 0.1 us counts. isinstance against the
jax.Array ABC takes 0.11 us, the concrete type test 0.02; the base class's (shape, str(dtype)) signature 5 us
(numpy formats the dtype's name), the array's abstract value (shape, dtype, weak type; hashable) 0.05 us; the
forward reads the variable dict past ``State.variables``'s property when no default draw is pending. With the
switch off, :func:`install` leaves the public path: the base class's signature, ``isinstance(x, jax.Array)``
and the property; ``call``, the steady state of an inference call with those three inlined, leaves the base class's
``_call``. ``install`` chooses once, at import, so neither path pays a per-call test of the switch.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from ...errors import DeferInitError

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


def call(model: Any, x: Any, training: bool) -> Any:
    """The steady state of an inference call, the base class's ``_call`` with the three hooks above inlined: a jax
    array whose abstract value was already checked (``_checked`` is emptied by every init and load and stays empty
    while the model has no values), on a model with no token ids to range-check and a compiled inference function.
    Anything else takes the base class's path. 0.3 us of the MLP's 10 us (XLA on one thread)."""
    if not training and type(x) in _ARRAY_TYPES and x.aval in model._checked and model._index_limit is None:
        st = model._native._deferinit_state
        fn = st.fns.get("infer")
        if fn is not None:
            try:
                return fn(st.variables if st.pending is not None else st._variables, x)
            except (DeferInitError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise model._backend_error("forward", exc) from exc
    return model._public_call(x, training)


def install(cls: type, enabled: bool) -> None:
    """Put the shortcuts on the backend class (``enabled``) or its public methods back (not)."""
    fast = {"_is_native": is_native, "_signature": signature, "_forward": forward, "_call": call}
    for name, fn in fast.items():
        setattr(cls, name, fn if enabled else getattr(cls, "_public" + name))
