# mypy: disable-error-code="misc"
"""The Flax NNX backend: a spec compiled to native ``flax.nnx`` modules, with every input dim NNX needs supplied.

NNX modules are eager: ``nnx.Linear(in_features, out_features, rngs=...)`` must be told its fan-in, and NNX's
only lazy path is wrapping linen modules. Here ``apply_init`` takes each layer's input shape from the reference
rules, builds NNX's own modules with ``rngs=nnx.Rngs(key)`` (under ``nnx.eval_shape`` when ``abstract``: nothing
allocated; NNX's default initializers drawn on the host in NumPy, ``modules.hosted``: the same distributions as
NNX's, no XLA compilation per initializer and shape), then reads back every variable NNX created and checks its
shape, through the jax backend's layouts, against the rules: a disagreement is a ShapeMismatchError, never trusted
silently. The report's native names are the ``nnx.state`` paths joined by ``/`` (``layers/0/kernel``), its layer
shapes NNX's own, from an ``nnx.eval_shape`` of the forward (asked once per spec and input in a process).
From the third init of an equal spec on an equal input in a process, the model is ``nnx.merge``d from the template
the second kept and its values redrawn in construction order (``template.py``: bit for bit the constructed values,
0.1 ms where construction takes 3-8 ms on the small models); behind ``DEFERINIT_FASTPATH``, as the jax backend's
call shortcut.
``model.native`` is the root ``nnx.Module``: ``nnx.jit``, ``nnx.grad``, ``nnx.split``/``merge``, ``nnx.state`` and
``nnx.Optimizer(model.native, tx, wrt=nnx.Param)`` work on it as on any NNX model, and ``model(x)`` sees what they
change (the forward reads the module's current state).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...errors import ShapeMismatchError, SpecError, fmt_shape
from ...layouts import contiguous
from ...shapes import Inference, Node
from .. import tree
from ..compiled import CompiledModel, NativeParam
from ..jax import FlaxModel
from ..jax import fastpath as _switch
from ..jax.host_init import key_words
from ..jax.modules import activate
from . import leaves as _leaves  # noqa: F401  (registers the built-in builders)
from . import modules as M
from .structure import Built, NnxBuilder, find, write
from .template import Template, snapshot

__all__ = ["NnxModel"]


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


class _Run(tree.Runner[Any]):
    """The tree, position by position, over the built modules (for the report's shapes and intermediates)."""

    def __init__(self, native: nnx.Module, built: Built, cf: bool) -> None:
        self.native, self.built, self.cf = native, built, cf

    def leaf(self, node: Node, x: Any) -> Any:
        return find(self.native, self.built.native[node.path])(x, False)

    def activation(self, name: str, x: Any) -> Any:
        return activate(name, x)

    def concat(self, xs: list, axis: int) -> Any:
        return jnp.concatenate(xs, axis=axis)

    def channel_axis(self, rank: int) -> int:
        return 1 if self.cf or rank == 2 else rank - 1


class NnxModel(CompiledModel[nnx.Module]):
    """A spec compiled for Flax NNX. ``native`` is the root ``nnx.Module`` (``native(x)`` is the forward)."""

    backend = "nnx"
    abstract_tables = True

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._builds: dict[int, tuple[nnx.Module, Built]] = {}
        self._fns: dict[str, Any] = {}

    _cloned: tuple[nnx.Module, Template, list] | None = None  # the last clone of a template, until its init

    def _new_native(self) -> nnx.Module:
        return M.Sequential()  # its children are built by apply_init, once the rules know every input dim

    def _native_for(self, inference: Inference, abstract: bool, values_follow: bool) -> nnx.Module:
        """A model merged from the template an earlier init on an equal input kept (``template.py``), if there is
        one; else a fresh root, whose children ``_native_init`` constructs. Shape-only values do where none is
        read: an abstract init, or portable values written over every variable right after."""
        shape_only = abstract or values_follow
        template = self._template(inference, shape_only) if _switch.ENABLED else None
        if template is not None and template.serves(abstract):
            native, variables = template.clone(shape_only, abstract)
            self._cloned = (native, template, variables)
            return native
        return self._new_native()

    def _built(self, native: nnx.Module | None = None) -> Built:
        native = self.native if native is None else native
        return self._builds[id(native)][1]

    _key = FlaxModel._key

    def _native_init(self, native: nnx.Module, x: Any, inference: Inference, init: Any, key: Any,
                     abstract: bool, *, values_follow: bool = False) -> dict[str, NativeParam]:
        if init is not None and not callable(init):
            raise SpecError(f"init: the nnx backend expected None (NNX's own initializers), a portable initializer "
                            f"(a name such as 'xavier_uniform' or a deferinit.init object) or a Flax/JAX initializer "
                            f"init(key, shape, dtype) (e.g. flax.nnx.initializers.xavier_uniform()), received {init!r}")
        rng = self._key(key)
        cloned, self._cloned = self._cloned, None
        if cloned is not None and cloned[0] is native:
            template, variables = cloned[1], cloned[2]
            if not abstract:
                template.streams(variables, rng)  # a Dropout's key, as NNX forked it
            if not abstract and not values_follow:  # (portable values overwrite every variable right after)
                template.draw(variables, key_words(rng))
            return self._found(native, template.built, inference, init, rng, abstract)
        cf = self.spec.data_format == "channels_first"
        holder: list[NnxBuilder] = []

        def make() -> nnx.Module:
            builder = NnxBuilder(self.root, cf, nnx.Rngs(rng), inference.inputs)
            holder[:] = [builder]
            return tree.build(self.root, builder)[0]
        # NNX draws each variable as its module is constructed, one XLA compile per initializer and shape (1-2 s each
        # on this CPU: 34 s for a 13-layer spec's first apply_init); when portable values overwrite them all right
        # after, the modules are constructed abstractly and nothing is drawn (set_weights gives every variable data)
        records: list | None = None
        shape_only = abstract or values_follow  # constructed under nnx.eval_shape: nothing drawn
        keep = _switch.ENABLED and self._template_turn(inference, shape_only)  # the second init of this input
        if abstract or not values_follow:
            if abstract:
                made = nnx.eval_shape(make)
            else:
                records = [] if keep else None
                with M.host_draws(key_words(rng), records):  # NNX's default initializers, drawn in NumPy (M.hosted)
                    made = make()
        else:
            made = nnx.eval_shape(make)
            rest = nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))  # Rngs streams (Dropout, nnx.RNN): key and count
            if jax.tree_util.tree_leaves(nnx.state(made, rest)):  # made as the concrete build makes them, in one
                nnx.update(made, jax.jit(lambda: nnx.state(make(), rest))())  # jit whose parameters XLA drops
        native.layers = made.layers
        built = holder[0].built
        if keep:  # before an init function of the user's changes any value
            self._keep_template(inference, shape_only, snapshot(native, records, built, rng))
        return self._found(native, built, inference, init, rng, abstract)

    def _found(self, native: nnx.Module, built: Built, inference: Inference, init: Any, rng: Any,
               abstract: bool) -> dict[str, NativeParam]:
        """Every variable NNX holds for a canonical parameter, its shape checked against the rules; then the user's
        Flax initializer, if one was given, and the count of what NNX created."""
        self._builds = {k: v for k, v in self._builds.items() if v[0] is self._native}
        self._builds[id(native)] = (native, built)
        self._fns = {}
        out = {}
        for name, (_, layout) in built.variables.items():
            shapes = [tuple(int(d) for d in find(native, k).shape) for k in built.keys(name)]
            canonical = tuple(layout.canonical_shape(shapes))
            want = tuple(inference.params[name].shape)
            if canonical != want:
                raise ShapeMismatchError(f"{self._who()}: NNX created parameter '{name}' ({_name(built.keys(name)[0])}) "
                                         f"of shape {fmt_shape(shapes[0])}, which is {fmt_shape(canonical)} in the "
                                         f"canonical layout; the reference rules expected {fmt_shape(want)}")
            out[name] = NativeParam(_name(built.keys(name)[0]), tuple(layout.native_shape(shapes)), canonical)
        if init is not None and not abstract:
            self._fill(native, built, inference, init, rng)
        # a whole walk of NNX's graph (0.34 ms of LeNet's apply_init): counted once per spec, input and builders
        created = self._framework_once(inference, "variables", abstract, lambda: len(nnx.to_flat_state(
            nnx.state(native, nnx.Any(nnx.Param, nnx.BatchStat)))))
        held = len({k for name in built.variables for k in built.keys(name)})
        if created != held:
            raise ShapeMismatchError(f"{self._who()}: NNX created {created} variables where the spec's layers hold "
                                     f"{held}")
        return out

    def _fill(self, native: nnx.Module, built: Built, inference: Inference, init: Any, rng: Any) -> None:
        """A Flax/JAX initializer ``init(key, shape, dtype)`` for every kernel and embedding table (NNX's own
        initializers keep biases, scales and statistics), each with its own key; run now so its errors surface
        in apply_init, and what it returns checked (shape, real dtype) before any variable is written."""
        values: dict[tuple, Any] = {}
        for name in built.variables:
            if inference.params[name].role not in ("kernel", "embedding"):
                continue
            for k in built.keys(name):
                want = tuple(find(native, k).shape)
                value = init(jax.random.fold_in(rng, len(values)), want, jnp.float32)
                error = self._init_value_error(name, want, tuple(value.shape), value.dtype,
                                               not jnp.iscomplexobj(value))
                if error is not None:
                    raise error
                values[k] = jnp.asarray(value, jnp.float32)
        write(native, values)

    def _native_layer_shapes(self, native: nnx.Module, x: Any, inference: Inference,
                             abstract: bool) -> Mapping[str, tuple]:
        # NNX builds its modules with every dim given, so nothing else runs the forward: the shapes take a trace of
        # it (1.8 ms of the MLP's 5.3 ms apply_init, 4.7 of LeNet's 13.7), asked once per spec and input
        return self._layer_shapes_once(inference, abstract, lambda: self._traced_shapes(native, x))

    def _traced_shapes(self, native: nnx.Module, x: Any) -> dict[str, tuple]:
        shape = tuple(x.shape)
        dtype = jax.dtypes.canonicalize_dtype(np.dtype(x.dtype))
        if any(d is None for d in shape):  # the rules guarantee no parameter depends on such a dim
            shape = jax.export.symbolic_shape(", ".join(f"_d{i}" if d is None else str(d) for i, d in enumerate(shape)))
        runner = _Run(native, self._built(native), self.spec.data_format == "channels_first")

        def traced(m: nnx.Module, a: Any) -> dict:
            record: dict = {}
            runner.native = m
            y = tree.run(self.root, a, runner, record)
            return {**record, "": y}
        found = nnx.eval_shape(traced, native, jax.ShapeDtypeStruct(shape, dtype))
        return {p: tuple(d if isinstance(d, int) else None for d in s.shape) for p, s in found.items()}

    def _shard_init(self, x: Any, plan: Any, mesh: Any, init: Any, key: int) -> Any:
        from .sharded import shard_init  # deferinit.shard_init's hook: the jax engine, on NNX variables

        return shard_init(self, x, plan, mesh, init, key)

    # ---------------------------------------------------------------- data and forward
    def _to_native(self, x: Any) -> Any:
        return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)  # no compiled conversion (jax's)

    def _is_native(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y)

    def _fn(self, what: str) -> Any:
        # nnx.jit with the module bound by nnx.cached_partial: the graph is traversed once, not on every call
        # (3x less per-call overhead than nnx.jit(f)(module, x) on CPU); the module's variables are still read
        # and written through, so what nnx.Optimizer or nnx.update change is what the next call sees
        fn = self._fns.get(what)
        if fn is None:
            fn = self._fns[what] = nnx.cached_partial(nnx.jit(self._traced(what)), self.native)
        return fn

    def _traced(self, what: str) -> Callable[[Any, Any], Any]:
        """What ``_fn(what)`` compiles: the forward (``infer``/``train``), the gradient of the output's sum
        (``grad``/``grad_train``; the training one moves batch statistics as the eager one does) or every
        layer's output (``record``). Compiled, not eager: eager ``nnx.grad`` dispatched DenseNet-121's backward
        op by op, 77 s against 20 s jitted on the parity session's input."""
        if what in ("infer", "train"):
            train = what == "train"
            return lambda m, a: m(a, train)
        if what in ("grad", "grad_train"):
            train = what == "grad_train"
            return lambda m, a: nnx.grad(lambda mm, aa: jnp.sum(mm(aa, train)))(m, a)
        built, cf = self._built(), self.spec.data_format == "channels_first"

        def record(m: Any, a: Any) -> dict:
            out: dict = {}
            tree.run(self.root, a, _Run(m, built, cf), out)
            return out
        return record

    def _forward(self, x: Any, training: bool) -> Any:
        return self._fn("train" if training else "infer")(x)

    def _gradients(self, x: Any, training: bool) -> dict[str, np.ndarray]:
        grads = self._fn("grad_train" if training else "grad")(x)
        flat = {tuple(p): v for p, v in nnx.to_flat_state(grads)}
        built, out = self._built(), {}
        for name, info in self.report.params.items():
            if info.trainable:
                layout = built.variables[name][1]
                parts = [np.asarray(flat[k][...]) for k in built.keys(name)]
                out[name] = contiguous(layout.grad(parts))
        return out

    def _intermediates(self, x: Any) -> dict[str, np.ndarray]:
        record = self._fn("record")(x)

        def post_order(node: Node) -> list[str]:  # each layer after its children, as the reference records
            return [p for child in node.children for p in post_order(child)] + ([node.path] if node.path else [])
        return {path: np.asarray(record[path]) for path in post_order(self.root)}

    # ---------------------------------------------------------------- weights
    def _get_weights(self) -> dict[str, np.ndarray]:
        native, built, out = self.native, self._built(), {}
        for name in self.report.params:
            layout = built.variables[name][1]
            parts = [np.asarray(find(native, k)[...]) for k in built.keys(name)]
            out[name] = contiguous(layout.canonical(parts))
        return out

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        native, built = self.native, self._built()
        shares: dict[tuple, np.ndarray] = {}  # a variable two canonical parameters share holds their sum
        for name in self.report.params:
            layout, keys = built.variables[name][1], built.keys(name)
            shapes = [tuple(find(native, k).shape) for k in keys]
            for k, part in zip(keys, layout.native(np.asarray(weights[name], np.float32), shapes)):
                shares[k] = part if k not in shares else shares[k] + part
        values = {k: jax.device_put(contiguous(v)) for k, v in shares.items()}
        write(native, values)

