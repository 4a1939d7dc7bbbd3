"""Gluon blocks the MXNet adapter needs beyond ``gluon.nn``: containers, padding, a channels-last wrapper, and a
BatchNorm whose running statistics follow PyTorch's rule.

Why a BatchNorm of our own: MXNet's ``BatchNorm`` operator (1.9.1, CPU) averages the BIASED batch variance into
``running_var`` and does so only in the BACKWARD pass, so a training-mode forward alone changes nothing. The spec
says PyTorch's rule: on every training-mode forward, ``new = (1 - m) * old + m * batch`` with the UNBIASED batch
variance. :class:`BatchNorm` keeps Gluon's ``nn.BatchNorm`` (its parameters, names, deferred shapes and the fused
operator for the normalization itself) and only replaces the averaging:

* the operator's own averaging is switched off by calling it with ``momentum=1.0`` (``old * 1 + batch * 0``);
* in training mode the operator also returns the batch mean and ``1 / sqrt(var + eps)``, from which the new running
  statistics are computed (all ``(C,)``-sized, in float64) and written back. Imperatively they are written at once;
  in a hybridized graph a parameter cannot be assigned, so the statistics become extra outputs of the cached graph
  and :class:`_Graph` writes them after each call (two small copies per BatchNorm).

Gluon traces a hybridized block once and reuses that graph whatever the mode, so :class:`_Graph` keeps one cached
graph per mode (training adds the statistics outputs) and, where TensorFlow-style ``"same"`` padding with a stride
depends on the input size, per input shape. Once Gluon has built the inference graph, :func:`call_inference` calls
its ``CachedOp`` directly (see :class:`_Direct`). It touches Gluon 1.9's private cache attributes; MXNet 1.9.1 is the
last 1.x release, so they will not move.

Two more MXNet 1.9.1 (oneDNN, CPU) faults are worked around here, each measured against finite differences or a
float64 PyTorch gradient: a BatchNorm on 3-D data breaks the backward of a Conv1D before it (see
``BatchNorm._as_4d``), and the gradient through a max pool is wrong after an inference-mode forward (see
:func:`inference_layers`).
"""

from __future__ import annotations

import operator
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from mxnet import autograd, gluon, symbol
from mxnet.gluon import nn

from . import _mxnet_nan as nan

__all__ = ["BatchNorm", "Dropout", "Sequential", "Residual", "Concat", "Pad", "ChannelsFirst", "activate",
           "activation_block", "identity", "tracing", "inference_layers", "infer_parameter_shapes", "call_inference"]

# ------------------------------------------------------------------------------------------ tracing context
_LOCAL = threading.local()


class _Trace:
    """What one symbolic trace knows: the concrete input shapes, and the BatchNorm statistics to output."""

    def __init__(self, inputs: dict[str, tuple]) -> None:
        self.inputs = inputs
        self.stats: dict[BatchNorm, tuple[Any, Any]] = {}  # insertion-ordered; a tied BN chains its updates


@contextmanager
def tracing(inputs: dict[str, tuple]) -> Iterator[_Trace]:
    stack = _LOCAL.__dict__.setdefault("stack", [])
    trace = _Trace(inputs)
    stack.append(trace)
    try:
        yield trace
    finally:
        stack.pop()


def _current() -> _Trace | None:
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


def _frozen() -> bool:
    return getattr(_LOCAL, "frozen", False)


@contextmanager
def inference_layers() -> Iterator[None]:
    """BatchNorm and Dropout behave as in inference while MXNet runs in training mode. Gradients of the inference
    model need it: after an inference-mode forward, MXNet 1.9.1's oneDNN max pooling has no workspace and its
    backward routes the gradient wrongly (measured against finite differences), so such gradients are taken in a
    training-mode pass with these two layers held at their inference behaviour (a graph of its own)."""
    before = _frozen()
    _LOCAL.frozen = True
    try:
        yield
    finally:
        _LOCAL.frozen = before


def _traced_rank(x: Any) -> int | None:
    """The rank of symbol ``x`` in the current trace (None outside one)."""
    trace = _current()
    if trace is None:
        return None
    shape = x.infer_shape_partial(**trace.inputs)[1][0]
    return len(shape) if shape else None


def infer_parameter_shapes(net: gluon.HybridBlock, shape: tuple) -> None:
    """Gluon's own shape inference without allocating: trace ``net`` symbolically, run ``infer_shape`` and set each
    Parameter's shape (what ``HybridBlock.infer_shape`` does, minus its need for an input NDArray). ``shape`` is
    concrete: a varying dim gets a stand-in size (``_standin.py``), since MXNet reads its unknown-dim marker 0 as
    "unknown" everywhere downstream and leaves a Flatten's output, a recurrent layer's or attention's input size,
    and the weights behind them, unknown (measured: GRU weight_ih (96, 0) for a (2, None) token input)."""
    shape = tuple(int(d) for d in shape)
    with tracing({"data": shape}), autograd.predict_mode():
        out = net(symbol.var("data"))
    arg_shapes, _, aux_shapes = out.infer_shape_partial(data=shape)
    found = dict(zip(out.list_arguments(), arg_shapes))
    found.update(zip(out.list_auxiliary_states(), aux_shapes))
    for param in net.collect_params().values():
        param.shape = tuple(found[param.name])


# ------------------------------------------------------------------------------------------ activations
def activate(F: Any, name: str | None, x: Any) -> Any:
    """An activation by name inside a ``hybrid_forward`` (Residual's)."""
    if name is None:
        return x
    if name in ("sigmoid", "tanh"):
        return F.Activation(x, act_type=name)
    if name == "gelu":
        return F.LeakyReLU(x, act_type="gelu")  # MXNet's gelu is the exact erf form
    if name == "silu":
        return x * F.sigmoid(x)
    if name in ("relu", "softmax"):  # the Activation and softmax operators drop NaN
        return getattr(nan, name)(F, x)
    raise ValueError(name)  # pragma: no cover - names are validated by the spec


def activation_block(name: str) -> gluon.HybridBlock:
    """The ``gluon.nn`` block for an activation layer."""
    if name in ("sigmoid", "tanh"):
        return nn.Activation(name)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.Swish(beta=1.0)
    if name in ("relu", "softmax"):  # the Activation and softmax operators drop NaN
        return nan.ReLU() if name == "relu" else nn.HybridLambda(nan.softmax)
    raise ValueError(name)  # pragma: no cover


class Dropout(nn.Dropout):
    """``nn.Dropout``, the identity under :func:`inference_layers`."""

    def _alias(self) -> str:
        return "dropout"

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.identity(x) if _frozen() else super().hybrid_forward(F, x)


def identity() -> gluon.HybridBlock:
    return nn.HybridLambda(lambda F, x: F.identity(x))


# ------------------------------------------------------------------------------------------ BatchNorm
class BatchNorm(nn.BatchNorm):
    """``gluon.nn.BatchNorm`` with PyTorch's running-statistics rule (see the module docstring).

    ``momentum`` is the spec's (PyTorch's) weight of the new batch; the Gluon-convention value ``1 - momentum`` is
    what ``_kwargs['momentum']`` shows, as in a hand-built ``nn.BatchNorm``.
    """

    _warned = False

    def __init__(self, axis: int, momentum: float, epsilon: float) -> None:
        super().__init__(axis=axis, momentum=1.0 - momentum, epsilon=epsilon, in_channels=0)
        self._torch_momentum = float(momentum)

    def _alias(self) -> str:
        return "batchnorm"

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):  # type: ignore[no-untyped-def]
        kwargs = dict(self._kwargs, momentum=1.0)  # the operator's own (biased, backward-time) averaging: off
        data = self._as_4d(F, x)
        back = (lambda y: y) if data is None else (lambda y: F.reshape_like(y, x))  # noqa: E731
        data = x if data is None else data
        if not autograd.is_training() or _frozen():  # running statistics, also in the backward's formula
            return back(F.BatchNorm(data, gamma, beta, running_mean, running_var, name="fwd",
                                    **dict(kwargs, use_global_stats=True)))
        trace = _current() if F is symbol else None
        if F is symbol and trace is None:  # traced by a foreign hybridized block: nowhere to return the stats
            if not BatchNorm._warned:
                BatchNorm._warned = True
                warnings.warn("deferinit BatchNorm traced in training mode inside a hybridized block that deferinit "
                              "did not build: its running statistics follow MXNet's own rule there (biased "
                              "variance, updated in backward)", RuntimeWarning, stacklevel=2)
            return back(F.BatchNorm(data, gamma, beta, running_mean, running_var, name="fwd", **self._kwargs))
        y, mean, invstd = F.BatchNorm(data, gamma, beta, running_mean, running_var, name="fwd", output_mean_var=True,
                                      **kwargs)
        y = back(y)
        if F is symbol:
            old = trace.stats.get(self, (running_mean, running_var))  # type: ignore[union-attr]
            trace.stats[self] = self._torch_rule(F, x, mean, invstd, *old)  # type: ignore[union-attr]
            return y
        with autograd.pause():
            new_mean, new_var = self._torch_rule(F, x, mean, invstd, running_mean, running_var)
            running_mean[:] = new_mean
            running_var[:] = new_var
        return y

    def _as_4d(self, F, x):  # type: ignore[no-untyped-def]
        """3-D data as 4-D with the channel axis kept. MXNet 1.9.1's oneDNN BatchNorm on 3-D data breaks the backward
        of a Conv1D before it (its weight gradient fails ``Check failed: !is_view``, in a hand-built Gluon model
        too); the same values laid out as (N, C, L, 1) do not. Only 3-D: a reshape makes oneDNN reorder 4-D
        activations out of its blocked layout, which costs about as much as the BatchNorm itself."""
        rank = x.ndim if F is not symbol else _traced_rank(x)
        if rank != 3:
            return None
        if self._kwargs["axis"] == 1:
            return F.reshape(x, shape=(0, 0, -1, 1))
        return F.reshape(x, shape=(-1, 1, 1, 0), reverse=True)  # channels last: (N * L, 1, 1, C)

    def _torch_rule(self, F, x, mean, invstd, old_mean, old_var):  # type: ignore[no-untyped-def]
        m, eps = self._torch_momentum, self._kwargs["eps"]
        f64 = lambda a: F.cast(a, dtype="float64")  # noqa: E731
        count = f64(F.size_array(x)) / f64(F.size_array(mean))  # values per channel, shape (1,)
        var = F.reciprocal(F.square(f64(invstd))) - eps  # the biased batch variance the operator normalized with
        unbiased = F.broadcast_mul(var, count / F.maximum(count - 1, 1))
        new_mean = F.cast((1 - m) * f64(old_mean) + m * f64(mean), dtype="float32")
        new_var = F.cast((1 - m) * f64(old_var) + m * unbiased, dtype="float32")
        return F.BlockGrad(new_mean), F.BlockGrad(new_var)


# ------------------------------------------------------------------------------------------ graph cache
_GLUON_CACHE = ("_cached_graph", "_cached_op", "_cached_op_args", "_in_format", "_out_format")
_MAX_GRAPHS = 8


def _descendants(block: gluon.Block) -> Iterator[gluon.Block]:
    for child in block._children.values():
        yield child
        yield from _descendants(child)


class _Graph:
    """Mixin for a HybridBlock: one Gluon cache per key (mode, and input shape where padding depends on it), and the
    BatchNorm statistics outputs of training-mode graphs written back after each call."""

    def _graph_key(self, args: tuple) -> tuple:
        d = self.__dict__
        if "_di_shaped" not in d:
            blocks = _descendants(self)  # type: ignore[arg-type]
            d["_di_shaped"] = any(getattr(b, "shape_dependent", False) for b in blocks)
        mode = (bool(autograd.is_training()), _frozen())
        return mode + (tuple(args[0].shape[1:]),) if d["_di_shaped"] else mode

    def _get_graph(self, *args):  # type: ignore[no-untyped-def]
        if not self._cached_graph:  # type: ignore[attr-defined]
            with tracing({"data": tuple(args[0].shape)}) as trace:
                inputs, out = super()._get_graph(*args)  # type: ignore[misc]
            d = self.__dict__
            d["_di_key"] = self._graph_key(args)
            d["_di_stats"] = [(bn.running_mean, bn.running_var) for bn in trace.stats]
            if trace.stats:
                extra = [s for pair in trace.stats.values() for s in pair]
                self._cached_graph = inputs, symbol.Group([out] + extra)
                self._out_format = [self._out_format, [0] * len(extra)]
        return self._cached_graph  # type: ignore[attr-defined]

    def _call_cached_op(self, *args):  # type: ignore[no-untyped-def]
        key = self._graph_key(args)
        d = self.__dict__
        if d.get("_di_key") != key:
            store = d.setdefault("_di_store", OrderedDict())
            if self._cached_graph and d.get("_di_key") is not None:  # type: ignore[attr-defined]
                store[d["_di_key"]] = tuple(getattr(self, a) for a in _GLUON_CACHE) + (d.get("_di_stats", []),)
                while len(store) > _MAX_GRAPHS:
                    store.popitem(last=False)
            saved = store.pop(key, None) or ((), None, [], None, None, [])
            for name, value in zip(_GLUON_CACHE + ("_di_stats",), saved):
                object.__setattr__(self, name, value)
            d["_di_key"] = key
        out = super()._call_cached_op(*args)  # type: ignore[misc]
        stats = d.get("_di_stats")
        if stats:
            out, new = out
            with autograd.pause():
                for i, (mean, var) in enumerate(stats):
                    new[2 * i].copyto(mean.data())
                    new[2 * i + 1].copyto(var.data())
        elif key == _INFERENCE and d.get("_di_fast") is None:
            d["_di_fast"] = _Direct.of(self)
        return out

    def _clear_cached_op(self) -> None:
        super()._clear_cached_op()  # type: ignore[misc]
        for name in ("_di_store", "_di_key", "_di_stats", "_di_shaped", "_di_fast"):
            self.__dict__.pop(name, None)


# ------------------------------------------------------------------------------------------ direct inference call
_INFERENCE = (False, False)  # the graph key of inference mode (not training, layers not frozen), shape-independent
_DATA = operator.attrgetter("_data")


class _Direct:
    """The inference graph's ``CachedOp`` called directly, without Gluon's per-call Python glue.

    Gluon's hybridized ``__call__`` spends about 10 to 30 us in Python on every call (hooks, context checks and
    ``with ctx``, flattening the arguments, one ``Parameter.data()`` per parameter, regrouping the outputs) before
    and after the C++ ``CachedOp`` it calls: as much as the whole forward of a small MLP. Once Gluon has built the
    inference graph, this calls the same ``CachedOp`` with the same arguments itself. It stays valid while every
    Parameter holds the same list of arrays (any re-initialization, ``cast`` or ``reset_ctx`` makes a new list;
    ``set_data`` and optimizers write in place), and it is dropped with Gluon's cache (``hybridize``, ``cast``).
    Only for one input, one output and one context, with no hooks on the block: anything else takes Gluon's path.
    """

    __slots__ = ("op", "position", "params", "datas", "arrays")

    @classmethod
    def of(cls, block: gluon.HybridBlock) -> "_Direct | None":
        args = block._cached_op_args
        inputs = [i for i, (is_arg, _) in enumerate(args) if is_arg]
        params = [p for is_arg, p in args if not is_arg]
        if (block._in_format != [0] or block._out_format != 0 or len(inputs) != 1 or block._callback
                or any(p._data is None or len(p._data) != 1 for p in params)):
            return None
        direct = cls()
        direct.op, direct.position, direct.params = block._cached_op, inputs[0], params
        direct.datas = [p._data for p in params]
        direct.arrays = [data[0] for data in direct.datas]
        return direct

    def __call__(self, x: Any) -> Any:
        args = self.arrays.copy()
        args.insert(self.position, x)
        return self.op(*args)

    def valid(self) -> bool:
        return all(map(operator.is_, map(_DATA, self.params), self.datas))


def call_inference(block: gluon.HybridBlock, x: Any) -> Any:
    """``block(x)`` in inference mode through :class:`_Direct` where it applies; None where Gluon must do it."""
    direct = block.__dict__.get("_di_fast")
    if direct is None or block._forward_pre_hooks or block._forward_hooks or not block._active:
        return None
    if not direct.valid():
        block.__dict__["_di_fast"] = None  # made again after Gluon's next inference call
        return None
    return direct(x)


# ------------------------------------------------------------------------------------------ containers
class Sequential(_Graph, nn.HybridSequential):
    """``nn.HybridSequential`` (a LazyModel or Sequential of the spec)."""

    def _alias(self) -> str:
        return "hybridsequential"


class Residual(_Graph, gluon.HybridBlock):
    """``activation(body(x) + shortcut(x))``, the shortcut being the identity when absent."""

    def __init__(self, activation: str | None) -> None:
        super().__init__()
        self._activation = activation
        self.shortcut = None

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        short = x if self.shortcut is None else self.shortcut(x)
        return activate(F, self._activation, self.body(x) + short)


class Concat(_Graph, nn.HybridSequential):
    """Every child on the same input, concatenated along ``axis``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self._axis = axis

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.concat(*[branch(x) for branch in self._children.values()], dim=self._axis)


class ChannelsFirst(_Graph, gluon.HybridBlock):
    """Runs a channels-first block on channels-last data. MXNet's CPU convolution takes NCW/NCHW only (an NHWC
    convolution fails inside oneDNN), so channels-last convolutions cost two transposes (a copy of the input and
    of the output each); pooling takes ``layout='NHWC'`` natively and needs none."""

    def __init__(self, block: gluon.HybridBlock, ndim: int) -> None:
        super().__init__()
        self.block = block
        self._to_first = (0, ndim + 1) + tuple(range(1, ndim + 1))
        self._to_last = (0,) + tuple(range(2, ndim + 2)) + (1,)

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.transpose(self.block(F.transpose(x, axes=self._to_first)), axes=self._to_last)


class Pad(gluon.HybridBlock):
    """Zero padding of the spatial dims of channels-first data: ``pads`` is ``((before, after), ...)`` or, for
    TensorFlow's ``"same"`` with a stride (where the pads depend on the input size), a function of the spatial
    sizes. A symbolic trace reads the sizes from the concrete input shape the trace was started with."""

    def __init__(self, pads: tuple | Callable[[tuple], tuple], ndim: int) -> None:
        super().__init__()
        self._pads, self._ndim = pads, ndim
        self.shape_dependent = callable(pads)

    def _resolve(self, F: Any, x: Any) -> tuple:
        if not callable(self._pads):
            return self._pads
        if F is not symbol:
            return self._pads(tuple(x.shape[2:]))
        trace = _current()
        if trace is None:
            raise RuntimeError("padding='same' with a stride needs the input's spatial sizes: call the outermost "
                               "deferinit block with data, or trace it with deferinit's tracing(shapes)")
        shape = x.infer_shape_partial(**trace.inputs)[1][0]
        sizes = tuple(d or None for d in shape[2:]) if len(shape) == self._ndim + 2 else (None,) * self._ndim
        return self._pads(sizes)  # unknown sizes (abstract shapes only): any pads, parameters do not depend on them

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        pads = self._resolve(F, x)
        if not any(b or a for b, a in pads):
            return x
        flat = tuple(p for pair in pads for p in pair)
        if self._ndim == 1:  # F.pad takes 4-D or 5-D data only
            y = F.pad(F.expand_dims(x, axis=2), mode="constant", pad_width=(0, 0) * 3 + flat, constant_value=0)
            return F.reshape(y, shape=(0, 0, -1))
        return F.pad(x, mode="constant", pad_width=(0, 0) * 2 + flat, constant_value=0)
