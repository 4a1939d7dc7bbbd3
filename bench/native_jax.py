"""Hand-written Flax linen baselines for bench/run.py: the d2l book's models as an expert writes them in JAX.

Fair both ways: deferinit's jax ``__call__`` is one cached ``jax.jit`` of ``module.apply`` on (variables, x),
so the native forward is ``jax.jit(net.apply)`` on the same two arguments. Both take the same input, the
spec's NCHW images: the native models transpose to Flax's NHWC inside the jitted function (as deferinit's
do; XLA folds the transposes into the convolutions) and flatten in PyTorch's (C, H, W) order, so the same
weights compute the same thing. The native dry run is what an expert writes: ``jax.jit(net.init)(key, x0)``,
which draws every variable (deferinit's ``apply_init`` with Flax's defaults only traces the shapes and draws
the values when they are first read). ``abstract_mlp`` is Flax's own shape-only path: ``jax.eval_shape`` of
``init``.

The zoo's large models (``ZOO``, ``ZOO_ABSTRACT``) are written the same way in Flax linen: torchvision's
ResNet-50 and MobileNetV2 (NHWC inside, the NCHW input transposed once), GPT-2 (12 layers, the head
``Embed.attend``, the tied projection) and BERT-base on Flax's ``MultiHeadDotProductAttention`` (a causal mask
from ``nn.make_causal_mask``; BERT's padding mask from the valid lengths). Their abstract path is
``jax.eval_shape(net.init, ...)``.
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
    return jax.block_until_ready(y)  # one array, or a tuple of them (BERT's two outputs)


def abstract_mlp(layers: int, width: int) -> int:
    """Flax's cheapest shape-only path: ``jax.eval_shape`` of ``init``; returns the parameter count."""
    net = nn.Sequential([m for _ in range(layers) for m in (nn.Dense(width), nn.relu)])
    found = jax.eval_shape(net.init, KEY, jax.ShapeDtypeStruct((1, width), jnp.float32))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(found))


# ------------------------------------------------------------------------------------------------ the zoo
def _bn() -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)


def _cbn(x: Any, channels: int, k: int, stride: int = 1, groups: int = 1, act: Callable | None = nn.relu) -> Any:
    """torchvision's Conv2dNormActivation: a bias-free convolution padded (k-1)//2, BatchNorm, activation."""
    x = _bn()(nn.Conv(channels, (k, k), strides=stride, padding=(k - 1) // 2, feature_group_count=groups,
                      use_bias=False)(x))
    return x if act is None else act(x)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (the stride on the 3x3 convolution)."""

    planes: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: Any) -> Any:
        y = _cbn(_cbn(x, self.planes, 1), self.planes, 3, self.stride)
        y = _cbn(y, self.planes * 4, 1, act=None)
        return nn.relu(y + (_cbn(x, self.planes * 4, 1, self.stride, act=None) if self.downsample else x))


class ResNet50(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = _cbn(_nhwc(x), 64, 7, 2)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for b in range(blocks):
                x = Bottleneck(planes, (1 if i == 0 else 2) if b == 0 else 1, b == 0)(x)
        return nn.Dense(1000)(jnp.mean(x, axis=(1, 2)))


class InvertedResidual(nn.Module):
    inp: int
    oup: int
    stride: int
    t: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
        hidden = self.inp * self.t
        y = _cbn(x, hidden, 1, act=nn.relu6) if self.t != 1 else x
        y = _cbn(_cbn(y, hidden, 3, self.stride, groups=hidden, act=nn.relu6), self.oup, 1, act=None)
        return x + y if self.stride == 1 and self.inp == self.oup else y


class MobileNetV2(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = _cbn(_nhwc(x), 32, 3, 2, act=nn.relu6)
        inp = 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                           (6, 320, 1, 1)):
            for i in range(n):
                x = InvertedResidual(inp, c, s if i == 0 else 1, t)(x)
                inp = c
        x = jnp.mean(_cbn(x, 1280, 1, act=nn.relu6), axis=(1, 2))
        return nn.Dense(1000)(nn.Dropout(0.2, deterministic=True)(x))


def _attention(heads: int, d: int) -> nn.MultiHeadDotProductAttention:
    return nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=d, out_features=d)


class GPT2(nn.Module):
    """GPT-2 small (12 layers): pre-LayerNorm blocks, causal attention, tanh-GELU, the head tied to ``wte``."""

    @nn.compact
    def __call__(self, ids: Any) -> Any:
        d = 768
        wte = nn.Embed(50257, d)
        wpe = self.param("wpe", nn.initializers.normal(0.02), (1024, d))
        h = wte(ids) + wpe[None, : ids.shape[1]]
        mask = nn.make_causal_mask(ids)
        for _ in range(12):
            x = nn.LayerNorm(epsilon=1e-5)(h)
            h = h + _attention(12, d)(x, x, mask=mask)
            x = nn.gelu(nn.Dense(4 * d)(nn.LayerNorm(epsilon=1e-5)(h)), approximate=True)
            h = h + nn.Dense(d)(x)
        return wte.attend(nn.LayerNorm(epsilon=1e-5)(h))


class Bert(nn.Module):
    """BERT-base: post-LayerNorm encoder layers, exact GELU, the pooler on the first token."""

    @nn.compact
    def __call__(self, ids: Any, types: Any, lens: Any) -> tuple[Any, Any]:
        d, eps = 768, 1e-12
        positions = self.param("position_embeddings", nn.initializers.normal(0.02), (512, d))
        h = nn.Embed(30522, d)(ids) + nn.Embed(2, d)(types) + positions[None, : ids.shape[1]]
        h = nn.LayerNorm(epsilon=eps)(h)
        valid = jnp.arange(ids.shape[1])[None] < lens[:, None]  # (N, T): the keys within each length
        mask = nn.make_attention_mask(jnp.ones_like(valid), valid)
        for _ in range(12):
            h = nn.LayerNorm(epsilon=eps)(h + _attention(12, d)(h, h, mask=mask))
            x = nn.gelu(nn.Dense(3072)(h), approximate=False)
            h = nn.LayerNorm(epsilon=eps)(h + nn.Dense(d)(x))
        return h, nn.tanh(nn.Dense(d)(h[:, 0]))


_ZOO_MAKE: dict[str, Callable[[], nn.Module]] = {"resnet50": ResNet50, "mobilenet_v2": MobileNetV2, "gpt2": GPT2,
                                                 "bert_base": Bert}


def _count(variables: Any) -> int:
    """Every variable (params and BatchNorm's batch_stats), as deferinit counts them."""
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables))


class ZooForward:
    """A zoo model's variables (``jax.jit(net.init)``, the native dry run) and ``jax.jit(net.apply)``."""

    def __init__(self, net: nn.Module, inputs: list[np.ndarray]) -> None:
        self.variables = jax.jit(net.init)(KEY, *(jnp.asarray(x) for x in inputs))
        self.apply = jax.jit(net.apply)

    def __call__(self, *xs: Any) -> Any:
        return self.apply(self.variables, *xs)


def _zoo(name: str) -> Callable[[list[np.ndarray]], tuple[ZooForward, int]]:
    def build(inputs: list[np.ndarray]) -> tuple[ZooForward, int]:
        forward = ZooForward(_ZOO_MAKE[name](), inputs)
        return forward, _count(forward.variables)
    return build


def _zoo_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        structs = [jax.ShapeDtypeStruct(s, jnp.float32 if d == "float32" else jnp.int32) for s, d in inputs]
        return _count(jax.eval_shape(_ZOO_MAKE[name]().init, KEY, *structs))
    return build


ZOO = {name: _zoo(name) for name in _ZOO_MAKE}
ZOO_ABSTRACT = {name: _zoo_abstract(name) for name in _ZOO_MAKE}
