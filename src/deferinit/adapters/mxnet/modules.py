# mypy: allow-subclassing-any
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
  and ``graph.Graph`` writes them after each call (two small copies per BatchNorm).

The graph cache of the containers (one graph per mode) is ``graph.Graph``; the direct inference call is
``fastpath``.

Two more MXNet 1.9.1 (oneDNN, CPU) faults are worked around here, each measured against finite differences or a
float64 PyTorch gradient: a BatchNorm on 3-D data breaks the backward of a Conv1D before it (see
``BatchNorm._as_4d``), and the gradient through a max pool is wrong after an inference-mode forward (see
``graph.inference_layers``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from mxnet import autograd, gluon, symbol
from mxnet.gluon import nn

from ...merges import combine
from . import nan
from .graph import Graph, current, frozen, known_inputs, traced_rank

__all__ = ["BatchNorm", "Dropout", "Sequential", "Residual", "Concat", "Merge", "Pad", "ChannelsFirst", "activate",
           "activation_block", "identity"]


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
    from .activations import activate_extra

    return activate_extra(F, name, x)  # pragma: no cover - names are validated by the spec


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
    from .activations import extra_block

    return extra_block(name)  # pragma: no cover


class Dropout(nn.Dropout):
    """``nn.Dropout``, the identity under ``graph.inference_layers``."""

    def _alias(self) -> str:
        return "dropout"

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.identity(x) if frozen() else super().hybrid_forward(F, x)


def identity() -> gluon.HybridBlock:
    return nn.HybridLambda(lambda F, x: F.identity(x))


# ------------------------------------------------------------------------------------------ BatchNorm
class BatchNorm(nn.BatchNorm):
    """``gluon.nn.BatchNorm`` with PyTorch's running-statistics rule (see the module docstring).

    ``momentum`` is the spec's (PyTorch's) weight of the new batch; the Gluon-convention value ``1 - momentum`` is
    what ``_kwargs['momentum']`` shows, as in a hand-built ``nn.BatchNorm``.
    """

    _warned = False
    #: the input's rank, from the reference rules (set at init: ``MXNetModel._native_init``); None: asked of MXNet's
    #: symbolic shape inference in each trace, which walks the graph up to this block (quadratic in depth)
    rank: int | None = None

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
        if not autograd.is_training() or frozen():  # running statistics, also in the backward's formula
            return back(F.BatchNorm(data, gamma, beta, running_mean, running_var, name="fwd",
                                    **dict(kwargs, use_global_stats=True)))
        trace = current() if F is symbol else None
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
        rank = x.ndim if F is not symbol else (self.rank or traced_rank(x))
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



# ------------------------------------------------------------------------------------------ containers
class Sequential(Graph, nn.HybridSequential):
    """``nn.HybridSequential`` (a LazyModel or Sequential of the spec)."""

    def _alias(self) -> str:
        return "hybridsequential"


class Residual(Graph, gluon.HybridBlock):
    """``activation(body(x) + shortcut(x))``, the shortcut being the identity when absent."""

    def __init__(self, activation: str | None) -> None:
        super().__init__()
        self._activation = activation
        self.shortcut = None

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        short = x if self.shortcut is None else self.shortcut(x)
        return activate(F, self._activation, self.body(x) + short)


class Concat(Graph, nn.HybridSequential):
    """Every child on the same input, concatenated along ``axis``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self._axis = axis

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.concat(*[branch(x) for branch in self._children.values()], dim=self._axis)


class Merge(Graph, nn.HybridSequential):
    """``Add`` / ``Multiply``: every child on the same input, summed or multiplied with MXNet's broadcasting
    operators (plain ``+``/``*`` do not broadcast on symbols)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self._op = op

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return combine(self._op, [branch(x) for branch in self._children.values()], F.broadcast_add, F.broadcast_mul)


class ChannelsFirst(Graph, gluon.HybridBlock):
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
        trace = current()
        if trace is None:
            raise RuntimeError("padding='same' with a stride needs the input's spatial sizes: call the outermost "
                               "deferinit block with data, or trace it with deferinit's tracing(shapes)")
        shape = x.infer_shape_partial(**known_inputs(trace, x))[1][0]
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
