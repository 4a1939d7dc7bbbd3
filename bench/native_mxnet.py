"""Hand-written MXNet Gluon baselines for bench/run.py: the d2l book's models as an expert writes them.

Each model is a ``gluon.nn.HybridSequential`` of stock layers with no input dims (the book's deferred
initialization: ``initialize()``, then the first call infers every shape), hybridized before that first call
with ``static_alloc=True, static_shape=True``, the fastest inference setting Gluon offers (memory planned once,
the whole graph one cached operator). Fair both ways: deferinit's mxnet ``__call__`` runs the same kind of graph
(one hybridized ``static_alloc``/``static_shape`` graph of the whole model, inference mode, outside
``autograd.record``), both sides get the same NCHW input and the same oneDNN kernels, and neither dry run waits
for MXNet's asynchronous engine; so the comparison is of the glue around the graph. That glue differs: this is
Gluon's own hybridized ``__call__``, which an expert calls; deferinit calls the same ``CachedOp`` directly, without
the 10-30 us of Python Gluon spends per call, which is why its small-model ratios come out below 1. ``sync`` is
``wait_to_read`` (MXNet's engine is asynchronous). ``abstract_mlp`` is Gluon's own shape-only path:
``HybridBlock.infer_shape``, a symbolic trace whose ``infer_shape`` fills every Parameter's shape and
allocates nothing.

The zoo's large models (``ZOO``, ``ZOO_ABSTRACT``): torchvision's ResNet-50 (v1.5) and MobileNetV2 written as
Gluon blocks. Gluon's own model zoo has neither exactly: its ``resnet50_v1`` strides the first 1x1 convolution
and gives the 1x1 convolutions biases (25,629,032 values with the statistics, the spec 25,610,152), its
``mobilenetv2_1.0`` expands the first block and ends on a bias-free 1x1 convolution (3,539,136 against
3,538,984); the same network on both sides keeps the forward comparison one of the same arithmetic. MXNet 1.9
has no GPT-2 or BERT in Gluon (GluonNLP is not installed): those two have no native model here.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

with warnings.catch_warnings():  # MXNet 1.9 touches numpy aliases deprecated since numpy 1.20 at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import nd
    from mxnet.gluon import nn


class Residual(nn.HybridBlock):
    """d2l's ResNet block."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        with self.name_scope():
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
            self.bn1 = nn.BatchNorm()
            self.bn2 = nn.BatchNorm()

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def _dry_run(net: nn.HybridBlock, x0: np.ndarray) -> nn.HybridBlock:
    net.initialize()
    net.hybridize(static_alloc=True, static_shape=True)
    net(nd.array(x0))  # Gluon's deferred initialization: infer_shape, allocation, the graph
    return net  # the bench waits for MXNet's engine after each side's init (settle)


def _seq(*blocks: nn.HybridBlock) -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(*blocks)
    return net


def mlp(x0: np.ndarray) -> nn.HybridBlock:
    return _dry_run(_seq(nn.Dense(256, activation="relu"), nn.Dense(10)), x0)


def lenet(x0: np.ndarray) -> nn.HybridBlock:
    return _dry_run(_seq(
        nn.Conv2D(6, kernel_size=5, padding=2, activation="sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
        nn.Conv2D(16, kernel_size=5, activation="sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
        nn.Dense(120, activation="sigmoid"), nn.Dense(84, activation="sigmoid"), nn.Dense(10)), x0)


def resnet18(x0: np.ndarray) -> nn.HybridBlock:
    net = _seq(_seq(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
                    nn.MaxPool2D(pool_size=3, strides=2, padding=1)))
    for i, (num_residuals, channels) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        net.add(_seq(*[Residual(channels, use_1x1conv=True, strides=2) if j == 0 and i != 0 else Residual(channels)
                       for j in range(num_residuals)]))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return _dry_run(net, x0)


MODELS: dict[str, Callable[[np.ndarray], Callable[[Any], Any]]] = {"mlp": mlp, "lenet": lenet, "resnet18": resnet18}

_BODY = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut": "conv3"}
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def _params(block: nn.Block, prefix: str = "") -> dict[str, Any]:
    """Attribute paths (``1.0.conv1.weight``) -> Parameter, in registration order."""
    out = {prefix + key: p for key, p in block._reg_params.items()}
    for name, child in block._children.items():
        out.update(_params(child, f"{prefix}{name}."))
    return out


def _resnet_name(name: str, bn: bool) -> str:
    """Canonical ResNet-18 name -> the hand-written model's (the stem and the head sit where the spec has them)."""
    parts = name.split(".")
    attr = _BN[parts[-1]] if bn else parts[-1]
    if len(parts) <= 3:
        return ".".join(parts[:-1] + [attr])
    return f"{parts[0]}.{parts[1]}.{_BODY['.'.join(parts[2:-1])]}.{attr}"


def load(forward: Any, compiled_model: Any) -> None:
    """Copy the compiled model's canonical weights into the hand-written model (Gluon's layouts are the
    canonical ones; BatchNorm holds gamma/beta)."""
    net: nn.HybridBlock = forward
    params = _params(net)
    weights = compiled_model.export_weights()
    layers = compiled_model.report.layers
    if any(".conv1." in n for n in params):  # ResNet-18: by name
        pairs = {_resnet_name(n, layers[n.rpartition(".")[0]].type == "BatchNorm"): w for n, w in weights.items()}
    else:  # one HybridSequential in the spec's order
        assert [p.shape for p in params.values()] == [w.shape for w in weights.values()]
        pairs = dict(zip(params, weights.values()))
    assert set(pairs) == set(params)
    for name, w in pairs.items():  # a re-initialization: oneDNN may hold a conv weight in a layout set_data refuses
        p = params[name]
        p.initialize(mx.init.Constant(nd.array(w)), ctx=p.list_ctx(), force_reinit=True)


def to_native(x: np.ndarray) -> Any:
    return nd.array(x, dtype=x.dtype)


def sync(y: Any) -> Any:
    y.wait_to_read()
    return y


def settle(made: Any) -> None:
    """Wait for everything MXNet's engine has queued: the bench calls it at the end of each timed init, on both
    sides (``made``: the hand-written model or deferinit's compiled one), so that neither is charged for work the
    other left queued (the engine runs ops in order)."""
    nd.waitall()


def abstract_mlp(layers: int, width: int) -> int:
    """Gluon's shape-only path: ``HybridBlock.infer_shape`` (symbolic); returns the parameter count."""
    net = nn.HybridSequential()
    for _ in range(layers):
        net.add(nn.Dense(width, activation="relu"))
    net.infer_shape(nd.zeros((1, width)))
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values())


# ------------------------------------------------------------------------------------------------ the zoo
def _cbn(channels: int, k: int, stride: int = 1, groups: int = 1, act: str | None = "relu") -> list[nn.HybridBlock]:
    """torchvision's Conv2dNormActivation: a bias-free convolution padded (k-1)//2, BatchNorm, activation."""
    from mxnet.gluon.model_zoo.vision.mobilenet import RELU6

    layers = [nn.Conv2D(channels, k, stride, (k - 1) // 2, groups=groups, use_bias=False), nn.BatchNorm()]
    return layers + ([] if act is None else [RELU6() if act == "relu6" else nn.Activation(act)])


class Bottleneck(nn.HybridBlock):
    """torchvision's ResNet v1.5 bottleneck (the stride on the 3x3 convolution)."""

    def __init__(self, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        with self.name_scope():
            self.body = _seq(*_cbn(planes, 1), *_cbn(planes, 3, stride), *_cbn(planes * 4, 1, act=None))
            self.downsample = _seq(*_cbn(planes * 4, 1, stride, act=None)) if downsample else None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.relu(self.body(x) + (x if self.downsample is None else self.downsample(x)))


class InvertedResidual(nn.HybridBlock):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        with self.name_scope():
            self.conv = _seq(*(_cbn(inp * t, 1, act="relu6") if t != 1 else []),
                             *_cbn(inp * t, 3, stride, groups=inp * t, act="relu6"), *_cbn(oup, 1, act=None))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _resnet50() -> nn.HybridBlock:
    net = _seq(*_cbn(64, 7, 2), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        net.add(_seq(*[Bottleneck(planes, (1 if i == 0 else 2) if b == 0 else 1, b == 0) for b in range(blocks)]))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(1000))
    return net


def _mobilenet_v2() -> nn.HybridBlock:
    features = _seq(*_cbn(32, 3, 2, act="relu6"))
    inp = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            features.add(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    features.add(*_cbn(1280, 1, act="relu6"))
    return _seq(features, nn.GlobalAvgPool2D(), nn.Dropout(0.2), nn.Dense(1000))


_ZOO_MAKE: dict[str, Callable[[], nn.HybridBlock]] = {"resnet50": _resnet50, "mobilenet_v2": _mobilenet_v2}


def _count(net: nn.HybridBlock) -> int:
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values())  # BatchNorm's statistics included


def _zoo(name: str) -> Callable[[list[np.ndarray]], tuple[nn.HybridBlock, int]]:
    def build(inputs: list[np.ndarray]) -> tuple[nn.HybridBlock, int]:
        net = _dry_run(_ZOO_MAKE[name](), inputs[0])
        return net, _count(net)
    return build


def _zoo_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        net = _ZOO_MAKE[name]()
        net.infer_shape(nd.zeros(inputs[0][0]))  # symbolic: every Parameter's shape, nothing allocated
        return _count(net)
    return build


ZOO = {name: _zoo(name) for name in _ZOO_MAKE}
ZOO_ABSTRACT = {name: _zoo_abstract(name) for name in _ZOO_MAKE}
ZOO_NOTES = {name: "MXNet 1.9's Gluon has no GPT-2 or BERT (GluonNLP is not installed): no native model"
             for name in ("gpt2", "bert_base")}
