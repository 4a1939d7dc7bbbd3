"""Hand-written Flax linen baselines for bench/run.py: the d2l book's models as an expert writes them in JAX.

Fair both ways: deferinit's jax ``__call__`` is one cached ``jax.jit`` of ``module.apply`` on (variables, x),
so the native forward is ``jax.jit(net.apply)`` on the same two arguments. Both take the same input, the
spec's NCHW images: the native models transpose to Flax's NHWC inside the jitted function (as deferinit's
do; XLA folds the transposes into the convolutions) and flatten in PyTorch's (C, H, W) order, so the same
weights compute the same thing. The native dry run is what an expert writes: ``jax.jit(net.init)(key, x0)``,
which draws every variable (deferinit's ``apply_init`` with Flax's defaults only traces the shapes and draws
the values when they are first read). ``abstract_mlp`` is Flax's own shape-only path: ``jax.eval_shape`` of
``init``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KEY = jax.random.PRNGKey(0)


def _nhwc(x: Any) -> Any:
    return jnp.transpose(x, (0, 2, 3, 1))


def _flatten_chw(x: Any) -> Any:
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _avg_pool(x: Any) -> Any:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Residual(nn.Module):
    """d2l's ResNet block (PyTorch's padding)."""

    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1

    def setup(self) -> None:
        self.conv1 = nn.Conv(self.num_channels, (3, 3), padding=1, strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, (3, 3), padding=1)
        self.conv3 = nn.Conv(self.num_channels, (1, 1), strides=self.strides) if self.use_1x1conv else None
        self.bn1 = nn.BatchNorm(use_running_average=True)
        self.bn2 = nn.BatchNorm(use_running_average=True)

    def __call__(self, X: Any) -> Any:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return nn.relu(Y + X)


class Forward:
    """The native model behind a forward: the module, its variables and ``jax.jit(net.apply)``."""

    def __init__(self, net: nn.Module, x0: np.ndarray, paths: Callable[[str], tuple]) -> None:
        self.net, self.paths = net, paths
        self.variables = jax.jit(net.init)(KEY, jnp.asarray(x0))  # the native dry run: Flax's init, jitted
        self.apply = jax.jit(net.apply)

    def __call__(self, x: Any) -> Any:
        return self.apply(self.variables, x)


def _sequential(layers: list, images: bool) -> nn.Module:
    return nn.Sequential(([_nhwc] if images else []) + layers)


def mlp(x0: np.ndarray) -> Forward:
    net = _sequential([nn.Dense(256), nn.relu, nn.Dense(10)], images=False)
    return Forward(net, x0, lambda layer: (f"layers_{2 * int(layer)}",))


def lenet(x0: np.ndarray) -> Forward:
    net = _sequential([
        nn.Conv(6, (5, 5), padding=2), nn.sigmoid, _avg_pool, nn.Conv(16, (5, 5), padding="VALID"), nn.sigmoid,
        _avg_pool, _flatten_chw, nn.Dense(120), nn.sigmoid, nn.Dense(84), nn.sigmoid, nn.Dense(10)], images=True)
    where = {"0": 1, "2": 4, "5": 8, "6": 10, "7": 12}  # canonical position -> layers_<i> (after the transpose)
    return Forward(net, x0, lambda layer: (f"layers_{where[layer]}",))


_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}


def _resnet_path(layer: str) -> tuple:
    parts = layer.split(".")
    if parts[0] == "0":  # the stem: Conv, BatchNorm
        return ("layers_1", f"layers_{parts[1]}")
    if parts[0] == "6":  # the head's Dense (after the transpose, the stem, 4 stages and the pooling)
        return ("layers_7",)
    return (f"layers_{int(parts[0]) + 1}", f"layers_{parts[1]}", _BODY[".".join(parts[2:])])


def resnet18(x0: np.ndarray) -> Forward:
    stem = nn.Sequential([nn.Conv(64, (7, 7), strides=2, padding=3), nn.BatchNorm(use_running_average=True), nn.relu,
                          lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))])
    stages = [nn.Sequential([Residual(c, use_1x1conv=True, strides=2) if j == 0 and i != 0 else Residual(c)
                             for j in range(n)]) for i, (n, c) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512)))]
    net = _sequential([stem, *stages, lambda x: jnp.mean(x, axis=(1, 2)), nn.Dense(10)], images=True)
    return Forward(net, x0, _resnet_path)


MODELS: dict[str, Callable[[np.ndarray], Callable[[Any], Any]]] = {"mlp": mlp, "lenet": lenet, "resnet18": resnet18}

_LEAF = {"weight": ("params", None), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
         "running_var": ("batch_stats", "var")}


def load(forward: Any, compiled_model: Any) -> None:
    """Copy the compiled model's canonical weights into the hand-written model's variables (Flax's layouts:
    Dense kernel (in, out), Conv HWIO, BatchNorm scale/bias and batch_stats mean/var)."""
    fwd: Forward = forward
    variables = jax.tree_util.tree_map(lambda a: a, fwd.variables)  # a copy of the dict structure
    for name, w in compiled_model.export_weights().items():
        layer, _, pname = name.rpartition(".")
        collection, leaf = _LEAF[pname]
        node = variables[collection]
        for k in fwd.paths(layer):
            node = node[k]
        if leaf is None:  # weight: a kernel, or a BatchNorm's scale
            leaf = "kernel" if "kernel" in node else "scale"
            w = w.T if w.ndim == 2 else (np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w)
        assert node[leaf].shape == w.shape, (name, node[leaf].shape, w.shape)
        node[leaf] = jnp.asarray(w)
    fwd.variables = variables


def to_native(x: np.ndarray) -> Any:
    return jnp.asarray(x)


def sync(y: Any) -> Any:
    return y.block_until_ready()


def abstract_mlp(layers: int, width: int) -> int:
    """Flax's cheapest shape-only path: ``jax.eval_shape`` of ``init``; returns the parameter count."""
    net = nn.Sequential([m for _ in range(layers) for m in (nn.Dense(width), nn.relu)])
    found = jax.eval_shape(net.init, KEY, jax.ShapeDtypeStruct((1, width), jnp.float32))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(found))
