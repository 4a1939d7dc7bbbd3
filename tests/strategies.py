"""Hypothesis strategies: random valid specs (layers and combinators in sensible orders) and broken ones."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import strategies as st

import deferinit as di

ACTS = st.sampled_from([None, "relu", "tanh", "sigmoid", "gelu", "silu"])


@st.composite
def conv_block(draw, depth: int = 0):  # type: ignore[no-untyped-def]
    """A layer that maps (N, C, H, W) to (N, C', H', W') with H', W' >= 1 for H, W >= 8."""
    kind = draw(st.sampled_from(["conv", "conv", "bn", "pool", "act", "residual", "concat", "merge"] if depth < 2
                                else ["conv", "bn", "act"]))
    if kind == "conv":
        groups = draw(st.sampled_from([1, 1, 2]))
        channels = draw(st.integers(1, 4)) * groups
        k = draw(st.integers(1, 3))
        pad = draw(st.sampled_from([0, 1, "same"]))
        stride = draw(st.sampled_from([1, 1, 2])) if pad != 0 else 1
        conv = di.Conv2D(channels, k, stride=stride, padding=pad, groups=groups, activation=draw(ACTS),
                         use_bias=draw(st.booleans()))
        if groups == 1:
            return conv
        # a grouped conv needs input channels divisible by its groups: feed it from a 1x1 conv
        return di.Sequential([di.Conv2D(groups * draw(st.integers(1, 2)), 1), conv])
    if kind == "bn":
        return di.BatchNorm(momentum=draw(st.sampled_from([0.1, 0.3])))
    if kind == "pool":
        cls = draw(st.sampled_from([di.MaxPool2D, di.AvgPool2D]))
        return cls(3, stride=1, padding=1)
    if kind == "act":
        return di.Activation(draw(st.sampled_from(["relu", "tanh", "sigmoid"])))
    if kind == "residual":
        c = draw(st.integers(2, 6))
        body = di.Sequential([di.Conv2D(c, 3, padding=1), draw(conv_block(depth + 1).filter(
            lambda layer: isinstance(layer, (di.BatchNorm, di.Activation))))])
        return di.Residual(body, shortcut=di.Conv2D(c, 1), activation=draw(st.sampled_from([None, "relu"])))
    if kind == "merge":  # Add / Multiply: branches of one channel count, or squeeze-and-excitation's broadcast
        c = draw(st.integers(1, 4))
        gate = di.Sequential([di.AdaptiveAvgPool2D(1), di.Conv2D(c, 1, activation="sigmoid")])
        branches = [di.Conv2D(c, draw(st.sampled_from([1, 3])), padding="same"),
                    gate if draw(st.booleans()) else di.Conv2D(c, 1, activation=draw(ACTS))]
        return draw(st.sampled_from([di.Add, di.Multiply]))(branches)
    branches = [di.Conv2D(draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])), padding="same")
                for _ in range(draw(st.integers(2, 3)))]
    return di.Concat(branches)


@st.composite
def dense_block(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["dense", "dense", "ln", "act", "residual", "bn"]))
    if kind == "dense":
        return di.Dense(draw(st.integers(1, 12)), activation=draw(ACTS), use_bias=draw(st.booleans()))
    if kind == "ln":
        return di.LayerNorm()
    if kind == "bn":
        return di.BatchNorm()
    if kind == "act":
        return di.Activation(draw(st.sampled_from(["relu", "tanh", "gelu", "softmax"])))
    # two features at least: a LayerNorm or BatchNorm after a width-1 block normalizes a constant (its output is
    # exactly 0, and its gradients are float32 noise that no finite difference can check)
    width = draw(st.integers(2, 3))
    return di.Residual(di.Sequential([di.Dense(draw(st.integers(2, 8)), activation="relu"), di.Dense(width)]),
                       shortcut=di.Dense(width))


@st.composite
def valid_specs(draw, allow_conv: bool = True):  # type: ignore[no-untyped-def]
    """(spec, input_shape): an image net (conv blocks, then pooling/flatten, then dense) or an MLP."""
    fmt = draw(st.sampled_from(["channels_first", "channels_last"]))
    if allow_conv and draw(st.booleans()):
        layers = draw(st.lists(conv_block(), min_size=1, max_size=4))
        layers.append(draw(st.sampled_from([di.GlobalAvgPool2D(), di.Flatten()])))
        layers += draw(st.lists(dense_block(), min_size=0, max_size=2))
        layers.append(di.Dense(draw(st.integers(1, 5))))
        c, h, w = draw(st.integers(1, 3)), draw(st.integers(8, 11)), draw(st.integers(8, 11))
        shape = (2, c, h, w) if fmt == "channels_first" else (2, h, w, c)
    else:
        layers = draw(st.lists(dense_block(), min_size=1, max_size=5)) + [di.Dense(draw(st.integers(1, 5)))]
        # batch >= 4: after a BatchNorm over a batch of 2 every feature is +-1, and a LayerNorm over two such
        # features can see zero variance and amplify rounding noise by 1/sqrt(eps): ill-conditioned, not a bug
        # and two features at least: a LayerNorm over one feature normalizes a constant (see dense_block)
        shape = (draw(st.integers(4, 6)), draw(st.integers(2, 9)))
    return di.LazyModel(layers, data_format=fmt), shape


def replay(spec: di.LazyModel) -> str:
    """The spec as JSON, printed on failure so the case can be replayed with LazyModel.from_dict."""
    return json.dumps(spec.to_dict())


def data(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
