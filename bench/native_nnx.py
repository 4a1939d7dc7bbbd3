"""Hand-written Flax NNX baselines for bench/run.py: the d2l book's models as an expert writes them in NNX.

NNX modules are eager, so the hand-written models state every input dim (``nnx.Linear(400, 120)``,
``nnx.Conv(64, 128, ...)``) that the deferinit spec leaves out; constructing them is the native dry run (NNX
draws every parameter then). The forward is NNX's documented idiom, ``nnx.jit`` of a function of the module
and the input, called as ``forward(model, x)``; deferinit's nnx ``__call__`` is ``nnx.jit`` with the module bound
by ``nnx.cached_partial`` (so the module graph is not traversed on every call). Both take the spec's NCHW images
and transpose to NNX's NHWC inside the jitted function, and flatten in PyTorch's (C, H, W) order, so the same
weights compute the same thing. ``abstract_mlp`` is NNX's own shape-only path: ``nnx.eval_shape`` of the
constructor.

The zoo's large models (``ZOO``, ``ZOO_ABSTRACT``) are written the same way: torchvision's ResNet-50 and
MobileNetV2, GPT-2 (12 layers, the head ``Embed.attend``, the tied projection) and BERT-base on NNX's
``MultiHeadAttention``; construction is the native init, ``nnx.eval_shape`` of the constructor the abstract one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
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


def settle(made: Any) -> None:
    """Wait for every variable an init made (``made``: the hand-written model's Forward or ZooForward, or
    deferinit's compiled model): the bench calls it at the end of each timed init, on both sides, so that neither
    is charged for draws the other left in JAX's queue."""
    module = made.native if hasattr(made, "native") else made.model
    jax.block_until_ready(nnx.state(module))


def sync(y: Any) -> Any:
    return jax.block_until_ready(y)  # one array, or a tuple of them (BERT's two outputs)


class _BigMLP(nnx.Module):
    def __init__(self, layers: int, width: int, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])


def abstract_mlp(layers: int, width: int) -> int:
    """NNX's shape-only path: ``nnx.eval_shape`` of the constructor; returns the parameter count."""
    found = nnx.eval_shape(lambda: _BigMLP(layers, width, nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(found, nnx.Param)))


# ------------------------------------------------------------------------------------------------ the zoo
class ConvBN(nnx.Module):
    """torchvision's Conv2dNormActivation: a bias-free convolution padded (k-1)//2, BatchNorm, activation."""

    def __init__(self, cin: int, c: int, k: int, stride: int = 1, groups: int = 1, act: Callable | None = nnx.relu,
                 *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(cin, c, (k, k), strides=stride, padding=(k - 1) // 2, feature_group_count=groups,
                             use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(c, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.act = act

    def __call__(self, x: Any) -> Any:
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


class Bottleneck(nnx.Module):
    """torchvision's ResNet v1.5 bottleneck (the stride on the 3x3 convolution)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: bool, rngs: nnx.Rngs) -> None:
        self.body = nnx.Sequential(ConvBN(cin, planes, 1, rngs=rngs), ConvBN(planes, planes, 3, stride, rngs=rngs),
                                   ConvBN(planes, planes * 4, 1, act=None, rngs=rngs))
        self.downsample = ConvBN(cin, planes * 4, 1, stride, act=None, rngs=rngs) if downsample else None

    def __call__(self, x: Any) -> Any:
        return nnx.relu(self.body(x) + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = ConvBN(3, 64, 7, 2, rngs=rngs)
        blocks, cin = [], 64
        for i, (planes, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for b in range(n):
                blocks.append(Bottleneck(cin, planes, (1 if i == 0 else 2) if b == 0 else 1, b == 0, rngs))
                cin = planes * 4
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(2048, 1000, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = nnx.max_pool(self.stem(_nhwc(x)), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


class InvertedResidual(nnx.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int, rngs: nnx.Rngs) -> None:
        hidden = inp * t
        layers = [ConvBN(inp, hidden, 1, act=nnx.relu6, rngs=rngs)] if t != 1 else []
        layers += [ConvBN(hidden, hidden, 3, stride, groups=hidden, act=nnx.relu6, rngs=rngs),
                   ConvBN(hidden, oup, 1, act=None, rngs=rngs)]
        self.conv = nnx.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == oup

    def __call__(self, x: Any) -> Any:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        features: list[nnx.Module] = [ConvBN(3, 32, 3, 2, act=nnx.relu6, rngs=rngs)]
        inp = 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                           (6, 320, 1, 1)):
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t, rngs))
                inp = c
        features.append(ConvBN(320, 1280, 1, act=nnx.relu6, rngs=rngs))
        self.features = nnx.Sequential(*features)
        self.classifier = nnx.Linear(1280, 1000, rngs=rngs)  # after Dropout(0.2): the identity in inference

    def __call__(self, x: Any) -> Any:
        return self.classifier(jnp.mean(self.features(_nhwc(x)), axis=(1, 2)))


def _attention(heads: int, d: int, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    return nnx.MultiHeadAttention(heads, d, d, d, decode=False, rngs=rngs)


class GPT2Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs) -> None:
        self.ln_1, self.ln_2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs), nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.attn = _attention(12, d, rngs)
        self.c_fc, self.c_proj = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, h: Any, mask: Any) -> Any:
        x = self.ln_1(h)
        h = h + self.attn(x, x, x, mask=mask)
        return h + self.c_proj(nnx.gelu(self.c_fc(self.ln_2(h)), approximate=True))


class GPT2(nnx.Module):
    """GPT-2 small (12 layers): pre-LayerNorm blocks, causal attention, tanh-GELU, the head tied to ``wte``."""

    def __init__(self, rngs: nnx.Rngs, d: int = 768) -> None:
        self.wte = nnx.Embed(50257, d, rngs=rngs)
        self.wpe = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1024, d)))
        self.h = nnx.List([GPT2Block(d, rngs) for _ in range(12)])
        self.ln_f = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, ids: Any) -> Any:
        h = self.wte(ids) + self.wpe[None, : ids.shape[1]]
        mask = nnx.make_causal_mask(ids)
        for block in self.h:
            h = block(h, mask)
        return self.wte.attend(self.ln_f(h))


class BertLayer(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs) -> None:
        self.attention = _attention(12, d, rngs)
        self.attention_ln = nnx.LayerNorm(d, epsilon=1e-12, rngs=rngs)
        self.intermediate, self.output = nnx.Linear(d, 3072, rngs=rngs), nnx.Linear(3072, d, rngs=rngs)
        self.output_ln = nnx.LayerNorm(d, epsilon=1e-12, rngs=rngs)

    def __call__(self, h: Any, mask: Any) -> Any:
        h = self.attention_ln(h + self.attention(h, h, h, mask=mask))
        return self.output_ln(h + self.output(nnx.gelu(self.intermediate(h), approximate=False)))


class Bert(nnx.Module):
    """BERT-base: post-LayerNorm encoder layers, exact GELU, the pooler on the first token."""

    def __init__(self, rngs: nnx.Rngs, d: int = 768) -> None:
        self.word, self.types = nnx.Embed(30522, d, rngs=rngs), nnx.Embed(2, d, rngs=rngs)
        self.positions = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (512, d)))
        self.ln = nnx.LayerNorm(d, epsilon=1e-12, rngs=rngs)
        self.layers = nnx.List([BertLayer(d, rngs) for _ in range(12)])
        self.pooler = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, ids: Any, types: Any, lens: Any) -> tuple[Any, Any]:
        h = self.ln(self.word(ids) + self.types(types) + self.positions[None, : ids.shape[1]])
        valid = jnp.arange(ids.shape[1])[None] < lens[:, None]  # (N, T): the keys within each length
        mask = nnx.make_attention_mask(jnp.ones_like(valid), valid)
        for layer in self.layers:
            h = layer(h, mask)
        return h, nnx.tanh(self.pooler(h[:, 0]))


_ZOO_MAKE: dict[str, Callable[[nnx.Rngs], nnx.Module]] = {"resnet50": ResNet50, "mobilenet_v2": MobileNetV2,
                                                          "gpt2": GPT2, "bert_base": Bert}


def _count(model: nnx.Module) -> int:
    """Parameters and BatchNorm's statistics, as deferinit counts them."""
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))))


@nnx.jit
def _zoo_forward(model: nnx.Module, *xs: Any) -> Any:
    return model(*xs)


class ZooForward:
    def __init__(self, model: nnx.Module) -> None:
        self.model = model

    def __call__(self, *xs: Any) -> Any:
        return _zoo_forward(self.model, *xs)


def _zoo(name: str) -> Callable[[list[np.ndarray]], tuple[ZooForward, int]]:
    def build(inputs: list[np.ndarray]) -> tuple[ZooForward, int]:
        model = _ZOO_MAKE[name](nnx.Rngs(0))  # NNX draws every parameter here: the native init
        return ZooForward(model), _count(model)
    return build


def _zoo_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        return _count(nnx.eval_shape(lambda: _ZOO_MAKE[name](nnx.Rngs(0))))
    return build


ZOO = {name: _zoo(name) for name in _ZOO_MAKE}
ZOO_ABSTRACT = {name: _zoo_abstract(name) for name in _ZOO_MAKE}

__all__ = ["MODELS", "load", "to_native", "sync", "abstract_mlp", "ZOO", "ZOO_ABSTRACT"]
