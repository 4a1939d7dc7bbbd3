"""Hand-written Flax NNX baselines for bench/run.py: the d2l book's models as an expert writes them in NNX.

NNX modules are eager, so the hand-written models state every input dim (``nnx.Linear(400, 120)``,
``nnx.Conv(64, 128, ...)``) that the deferinit spec leaves out; constructing them is the native dry run (NNX
draws every parameter then). The forward is NNX's documented idiom, ``nnx.jit`` of a function of the module
and the input, called as ``forward(model, x)``; deferinit's nnx ``__call__`` is ``nnx.jit`` with the module bound
by ``nnx.cached_partial`` (so the module graph is not traversed on every call). Both take the spec's NCHW images
and transpose to NNX's NHWC inside the jitted function, and flatten in PyTorch's (C, H, W) order, so the same
weights compute the same thing. ``abstract_mlp`` is NNX's own shape-only path: ``nnx.eval_shape`` of the
constructor.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx


def _nhwc(x: Any) -> Any:
    return jnp.transpose(x, (0, 2, 3, 1))


def _flatten_chw(x: Any) -> Any:
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _avg_pool(x: Any) -> Any:
    return nnx.avg_pool(x, (2, 2), strides=(2, 2))


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l0, self.l1 = nnx.Linear(20, 256, rngs=rngs), nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.l1(nnx.relu(self.l0(x)))


class LeNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.c0 = nnx.Conv(1, 6, (5, 5), padding=2, rngs=rngs)
        self.c2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.d5, self.d6 = nnx.Linear(400, 120, rngs=rngs), nnx.Linear(120, 84, rngs=rngs)
        self.d7 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = _avg_pool(nnx.sigmoid(self.c0(_nhwc(x))))
        x = _flatten_chw(_avg_pool(nnx.sigmoid(self.c2(x))))
        return self.d7(nnx.sigmoid(self.d6(nnx.sigmoid(self.d5(x)))))


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, use_running_average=True, rngs=rngs)


class Residual(nnx.Module):
    """d2l's ResNet block (PyTorch's padding); input channels written by hand, as NNX needs."""

    def __init__(self, cin: int, c: int, use_1x1conv: bool, strides: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(cin, c, (3, 3), padding=1, strides=strides, rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), padding=1, rngs=rngs)
        self.conv3 = nnx.Conv(cin, c, (1, 1), strides=strides, rngs=rngs) if use_1x1conv else None
        self.bn1, self.bn2 = _bn(c, rngs), _bn(c, rngs)

    def __call__(self, X: Any) -> Any:
        Y = nnx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return nnx.relu(Y + X)


class ResNet18(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv, self.bn = nnx.Conv(1, 64, (7, 7), strides=2, padding=3, rngs=rngs), _bn(64, rngs)
        blocks, cin = [], 64
        for i, c in enumerate((64, 128, 256, 512)):
            blocks.append(nnx.List([Residual(cin, c, i != 0, 1 if i == 0 else 2, rngs), Residual(c, c, False, 1, rngs)]))
            cin = c
        self.stages = nnx.List(blocks)
        self.head = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = nnx.relu(self.bn(self.conv(_nhwc(x))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


@nnx.jit
def _forward(model: nnx.Module, x: Any) -> Any:
    return model(x)


class Forward:
    """A hand-written NNX model and its forward, ``nnx.jit`` of ``model(x)``; ``at(layer)`` is the module at a
    canonical layer path (for loading the same weights)."""

    def __init__(self, model: nnx.Module, at: Callable[[str], Any]) -> None:
        self.model, self.at = model, at

    def __call__(self, x: Any) -> Any:
        return _forward(self.model, x)


def mlp(x0: np.ndarray) -> Forward:
    m = MLP(nnx.Rngs(0))
    return Forward(m, lambda layer: {"0": m.l0, "1": m.l1}[layer])


def lenet(x0: np.ndarray) -> Forward:
    m = LeNet(nnx.Rngs(0))
    return Forward(m, lambda layer: getattr(m, {"0": "c0", "2": "c2", "5": "d5", "6": "d6", "7": "d7"}[layer]))


_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}


def resnet18(x0: np.ndarray) -> Forward:
    m = ResNet18(nnx.Rngs(0))

    def at(layer: str) -> Any:
        parts = layer.split(".")
        if parts[0] == "0":  # the stem: Conv, BatchNorm
            return m.conv if parts[1] == "0" else m.bn
        if parts[0] == "6":  # the head's Dense
            return m.head
        return getattr(m.stages[int(parts[0]) - 1][int(parts[1])], _BODY[".".join(parts[2:])])
    return Forward(m, at)


MODELS: dict[str, Callable[[np.ndarray], Callable[[Any], Any]]] = {"mlp": mlp, "lenet": lenet, "resnet18": resnet18}

_LEAF = {"bias": "bias", "running_mean": "mean", "running_var": "var"}


def load(forward: Any, compiled_model: Any) -> None:
    """Copy the compiled model's canonical weights into the hand-written model (NNX's layouts: Linear kernel
    (in, out), Conv HWIO, BatchNorm scale/bias/mean/var)."""
    fwd: Forward = forward
    for name, w in compiled_model.export_weights().items():
        layer, _, pname = name.rpartition(".")
        module = fwd.at(layer)
        if pname == "weight":
            leaf = "scale" if isinstance(module, nnx.BatchNorm) else "kernel"
            w = w.T if w.ndim == 2 else (np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w)
        else:
            leaf = _LEAF[pname]
        var = getattr(module, leaf)
        assert var.shape == w.shape, (name, var.shape, w.shape)
        var[...] = jnp.asarray(w)


def to_native(x: np.ndarray) -> Any:
    return jnp.asarray(x)


def sync(y: Any) -> Any:
    return y.block_until_ready()


class _BigMLP(nnx.Module):
    def __init__(self, layers: int, width: int, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])


def abstract_mlp(layers: int, width: int) -> int:
    """NNX's shape-only path: ``nnx.eval_shape`` of the constructor; returns the parameter count."""
    found = nnx.eval_shape(lambda: _BigMLP(layers, width, nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(found, nnx.Param)))


__all__ = ["MODELS", "load", "to_native", "sync", "abstract_mlp"]
