# mypy: disable-error-code="misc, untyped-decorator"
# (Flax is untyped where the lint session installs no framework: its Module is Any to subclass and decorate)
"""The JAX backend: a spec compiled to a Flax linen module tree (the modules are in ``modules.py``, the
sequence layers' in ``sequence.py``, the canonical <-> Flax variable layouts in ``params.py``).

Shapes come from Flax itself: ``jax.eval_shape(module.init, key, ShapeDtypeStruct)`` runs every module's own
``init`` symbolically (Dense finds its fan-in, Conv its input channels, ...) and allocates nothing: 60-90 ms
and under 1 MiB for 24 x Dense(8192) (1.6e9 parameters). The concrete path then draws each variable with the
initializer its module declares (``kernel_init``, ``bias_init``, ``embedding_init``, or the Flax ``init``
given, for kernels): the same distributions as ``module.init``, other draws. JAX's own initializers (every
Flax default) are drawn on the host in NumPy (``host_init.py``), which compiles nothing; any other initializer
is drawn in ONE jitted function cached on its (initializer, shape) plan, with each variable's key
``fold_in(key, crc32(native name))``. d2l's ResNet-18 on 1x1x96x96, measured side by side on the 2-core
machine under load: un-jitted ``module.init`` 10-15 s (one compilation per operation), ``jax.jit(module.init)``
8-9 s (and again for every new module instance), one jitted draw of every variable 2.8-4.4 s cold, the host
draw 1.1-1.3 s cold for the whole ``apply_init`` and ``export_weights`` in a fresh process. The default draw is
deferred until the values are first read (see ``params.State``): a portable ``init`` or ``load_weights``
overwrites them first. Values go to the device with ``jax.device_put``, never ``jnp.asarray``, which compiles a
conversion for every new shape (ResNet-18: 22 compilations, about 0.3 s of a cold portable ``apply_init``,
measured with cProfile).

Variables live on the native module they belong to, so when the base class swaps models (or restores the
previous one after a failed ``apply_init``) they follow. The steady-state forward is one cached
``jax.jit`` of ``module.apply`` plus about 1.3 us of Python (bench/native_jax.py compares it with a
hand-written ``jax.jit(apply)``); training mode has its own jitted step that returns the updated
``batch_stats`` and advances the dropout key. ``jax.jit`` compiles once per input shape (a language model
meets many sequence lengths); the compiled functions are dropped when the base class drops its cache of
checked input signatures.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...errors import DTypeError, SpecError
from ...layouts import contiguous
from ...shapes import Inference, Node
from ..compiled import CompiledModel, NativeParam
from . import fastpath, structure
from . import leaves as _leaves  # noqa: F401  (registers the built-in builders)
from . import modules as M
from . import params as T
from . import sequence as _sequence  # noqa: F401

__all__ = ["FlaxModel"]


def _check_init(init: Any) -> None:
    if init is not None and not callable(init):
        raise SpecError(f"init: the jax backend expected a portable initializer or a Flax/JAX initializer "
                        f"init(key, shape, dtype) (e.g. flax.linen.initializers.xavier_uniform()), received {init!r}")


class FlaxModel(CompiledModel[nn.Module]):
    """A spec compiled for JAX/Flax linen. ``native`` is the root ``flax.linen.Module``; ``variables`` (and
    ``params``, their ``params`` collection) are what ``native.apply`` takes::

        y = model.native.apply(model.variables, x)            # the same as model(x)
    """

    backend = "jax"
    abstract_tables = True  # PositionalEncoding's table is a numpy constant of the traced function, even under eval_shape
    _swaps_weights = True  # _set_weights builds the whole variable dict, then assigns it

    # ---------------------------------------------------------------- construction and init
    def _new_native(self) -> nn.Module:
        module, built = structure.build(self.root, self.spec.data_format)
        # Flax modules are frozen dataclasses; the state rides on the instance so that the variables travel
        # with their module when the base class swaps models or restores the previous one after a failure
        object.__setattr__(module, "_deferinit_state", T.State(built))
        return module

    @staticmethod
    def _st(native: nn.Module) -> T.State:
        return native._deferinit_state  # type: ignore[attr-defined]

    def _key(self, key: Any) -> Any:
        if key is None:
            key = 0
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            seed = int(key) % 2**64  # PRNGKey takes a C long
            if not jax.config.jax_enable_x64 and jax.config.jax_default_prng_impl == "threefry2x32":
                # PRNGKey(seed) is the raw key [0, seed mod 2**32] here, built on the device by a compiled
                # threefry_seed (69 ms of a fresh process's first apply_init); the same array, put there directly
                return jax.device_put(np.array([0, seed % 2**32], np.uint32))
            return jax.random.PRNGKey(seed - 2**64 if seed >= 2**63 else seed)
        if isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                           or (key.dtype == jnp.uint32 and key.shape == (2,))):
            return key
        raise DTypeError(f"key: the jax backend expected an int seed or a jax PRNG key (jax.random.key(0) or "
                         f"jax.random.PRNGKey(0)), received {type(key).__name__} {key!r}")

    def _native_init(self, native: nn.Module, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        _check_init(init)
        rng = self._key(key)
        shape = tuple(x.shape)
        dtype = jax.dtypes.canonicalize_dtype(np.dtype(x.dtype))
        if any(d is None for d in shape):  # the rules guarantee no parameter depends on such a dim
            shape = jax.export.symbolic_shape(", ".join(f"_d{i}" if d is None else str(d) for i, d in enumerate(shape)))
        # Flax's own deferred init, traced symbolically: every variable's shape, no parameter memory. The same
        # trace records each layer position's output (the containers' recording, as for intermediates) and the
        # model's: the report's layer shapes are Flax's, observed in this one dry run
        def traced(k: Any, a: Any) -> Any:
            record: dict = {}
            token = M.recording(record)
            try:
                y, variables = native.init_with_output(k, a, False)
            finally:
                M._RECORD.reset(token)
            return variables, {**record, "": y}
        found, outputs = jax.eval_shape(traced, rng, jax.ShapeDtypeStruct(shape, dtype))
        st = self._st(native)
        # a symbolic dim (an input's None) stays None; the modules return the spec's layout (channels-last
        # convolutions transpose back inside modules.Conv), so no transposition is needed here
        st.layer_shapes = {path: tuple(d if isinstance(d, int) else None for d in s.shape)
                           for path, s in outputs.items()}
        st.shapes = found
        st.seed_rng(rng)  # the dropout key, fold_in(rng, 0x5EED), made at the first training call
        out = {}
        for name, (path, layout) in st.built.variables.items():
            shapes = [st.shape_of(leaf.keys(path)) for leaf in layout.leaves]
            out[name] = NativeParam(layout.native_name(path), layout.native_shape(shapes),
                                    layout.canonical_shape(shapes))
        if T.count_leaves(found) != len(st.built.leaves):
            raise RuntimeError(f"Flax created {T.count_leaves(found)} variables where the spec's layers hold "
                               f"{len(st.built.leaves)}")
        if not abstract:
            self._fill(st, init, rng)
        return out

    def _native_layer_shapes(self, native: nn.Module, x: Any, inference: Inference,
                             abstract: bool) -> Mapping[str, tuple]:
        return self._st(native).layer_shapes  # observed by _native_init's trace

    def _materialize(self, init: Any, key: Any) -> None:
        _check_init(init)
        self._fill(self._st(self.native), init, self._key(key))

    def _fill(self, st: T.State, init: Any, rng: Any) -> None:
        if init is None:  # Flax's defaults cannot fail: draw them when first read (see params.State)
            st.defer(rng)
            return
        # a user's initializer is run now, so that its errors surface in apply_init; Flax would keep whatever
        # shape or dtype it returns, so both are checked (real dtypes are stored as float32)
        drawn = st.draw(init, rng)
        for name, (path, layout) in st.built.variables.items():
            for leaf in layout.leaves:
                keys = leaf.keys(path)
                value = T.get(drawn, keys)
                real = jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
                error = self._init_value_error(name, st.shape_of(keys), tuple(value.shape), value.dtype, bool(real))
                if error is not None:
                    raise error
                if value.dtype != jnp.float32:
                    T.put(drawn, keys, value.astype(jnp.float32))
        st.variables = drawn

    def _abstract_snapshot(self) -> Callable[[], None]:
        st = self._st(self.native)
        saved = (st._variables, st.pending)

        def undo() -> None:
            st._variables, st.pending = saved
        return undo

    # ---------------------------------------------------------------- data
    def _to_native(self, x: Any) -> Any:
        # device_put, not jnp.asarray: the same array and dtype, no compiled conversion per shape (9 ms each, cold)
        return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)

    # The public forms of the per-call methods; fastpath.py puts its shortcuts over them unless switched off
    def _public_is_native(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def _public_signature(self, x: Any) -> Any:
        return super()._signature(x)

    def _public_call(self, x: Any, training: bool) -> Any:
        return super()._call(x, training)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y)

    # ---------------------------------------------------------------- forward
    def _fn(self, what: str) -> Callable:
        st = self._st(self.native)
        fn = st.fns.get(what)
        if fn is not None:
            return fn
        apply = self.native.apply
        if what == "infer":
            fn = jax.jit(lambda v, x: apply(v, x, False))
        elif what == "train":
            def step(v: Any, x: Any, rng: Any) -> Any:
                rng, sub = jax.random.split(rng)
                y, updates = apply(v, x, True, rngs={"dropout": sub}, mutable=["batch_stats"])
                return y, updates, rng
            fn = jax.jit(step)
        else:
            training = what == "grad_train"

            def grads(v: Any, x: Any, rng: Any) -> Any:
                rng, sub = jax.random.split(rng)

                def total(params: Any) -> Any:
                    y, updates = apply({**v, "params": params}, x, training, rngs={"dropout": sub},
                                       mutable=["batch_stats"] if training else [])
                    return jnp.sum(y), updates
                (_, updates), g = jax.value_and_grad(total, has_aux=True)(v.get("params", {}))
                return g, updates, rng
            fn = jax.jit(grads)
        st.fns[what] = fn
        return fn

    def _check_call(self, x: Any) -> None:
        # runs once per new input signature; jax.jit compiles once per signature too (a language model meets
        # many sequence lengths): when the base class drops its 256 checked signatures, drop the compiled ones
        if len(self._checked) > 256:
            self._st(self.native).fns.clear()
        super()._check_call(x)

    def _public_forward(self, x: Any, training: bool) -> Any:
        st = self._st(self.native)
        if not training:
            return self._fn("infer")(st.variables, x)
        return self._train(st, x)

    def _train(self, st: T.State, x: Any) -> Any:
        y, updates, st.rng = self._fn("train")(st.variables, x, st.rng)
        if updates:
            st.variables = {**st.variables, **updates}
        return y

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        st = self._st(self.native)
        grads, updates, st.rng = self._fn("grad_train" if training else "grad")(st.variables, x, st.rng)
        if training and updates:
            st.variables = {**st.variables, **updates}
        out = {}
        for name, info in self.report.params.items():
            if info.trainable:
                path, layout = st.built.variables[name]
                parts = [np.asarray(T.get(grads, leaf.keys(path)[1:])) for leaf in layout.leaves]  # params only
                out[name] = contiguous(layout.grad(parts))
        return out

    def _intermediates(self, x: Any) -> dict[str, np.ndarray]:
        st = self._st(self.native)
        if "record" not in st.fns:
            apply = self.native.apply

            def run(v: Any, a: Any) -> dict:
                record: dict = {}
                token = M.recording(record)
                try:
                    apply(v, a, False)
                finally:
                    M._RECORD.reset(token)
                return record
            st.fns["record"] = jax.jit(run)
        record = st.fns["record"](st.variables, x)

        def post_order(node: Node) -> list[str]:  # each layer after its children, as the reference records
            return [p for child in node.children for p in post_order(child)] + ([node.path] if node.path else [])
        return {path: np.asarray(record[path]) for path in post_order(self.root)}

    # ---------------------------------------------------------------- weights
    def _get_weights(self) -> dict[str, np.ndarray]:
        st = self._st(self.native)
        variables, out = st.variables, {}
        for name in self.report.params:
            path, layout = st.built.variables[name]
            parts = [np.asarray(T.get(variables, leaf.keys(path))) for leaf in layout.leaves]
            out[name] = contiguous(layout.canonical(parts))
        return out

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        st = self._st(self.native)
        shares: dict[tuple, np.ndarray] = {}  # a variable two canonical parameters share holds their sum
        for name in self.report.params:
            path, layout = st.built.variables[name]
            keys = [leaf.keys(path) for leaf in layout.leaves]
            for k, part in zip(keys, layout.native(np.asarray(weights[name], np.float32),
                                                   [st.shape_of(k) for k in keys])):
                shares[k] = part if k not in shares else shares[k] + part
        variables: dict = {}
        for k, value in shares.items():
            T.put(variables, k, jax.device_put(contiguous(value)))
        st.variables = variables

    # ---------------------------------------------------------------- Flax-side access
    @property
    def variables(self) -> dict:
        """The native variable dict (``{"params": ..., "batch_stats": ...}``) that ``native.apply`` takes."""
        _ = self.report  # raises NotInitializedError
        return self._st(self.native).variables

    @property
    def params(self) -> dict:
        """The ``params`` collection of :attr:`variables` (Flax's name for the trainable variables)."""
        return self.variables.get("params", {})

    def _shard_init(self, x: Any, plan: Any, mesh: Any, init: Any, key: int) -> Any:
        from .sharded import shard_init  # deferinit.shard_init's hook: NamedShardings over a jax Mesh

        return shard_init(self, x, plan, mesh, init, key)


fastpath.install(FlaxModel, fastpath.ENABLED)
