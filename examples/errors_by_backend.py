"""What each framework says for the lazy-initialization chapter's mismatched dimension, next to deferinit.

    python examples/errors_by_backend.py            # the reference, then every framework (or says it is missing)
    python examples/errors_by_backend.py torch jax  # only these

The seed MLP (Dense(256, relu), Dense(10)) is initialized on a (2, 20) batch, then called on (2, 30).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import deferinit as di

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

GOOD, BAD = np.zeros((2, 20), np.float32), np.zeros((2, 30), np.float32)


def native_torch() -> None:
    import torch
    from torch import nn

    net = nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(10))
    net(torch.from_numpy(GOOD))
    net(torch.from_numpy(BAD))


def native_tensorflow() -> None:
    import keras

    net = keras.Sequential([keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    net(GOOD)
    net(BAD)


def native_jax() -> None:
    import jax
    from flax import linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):  # type: ignore[no-untyped-def]
            return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))

    net = MLP()
    params = net.init(jax.random.PRNGKey(0), GOOD)
    net.apply(params, BAD)


def native_nnx() -> None:
    from flax import nnx

    class MLP(nnx.Module):  # NNX is eager: the first layer must be told its 20 input features
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.hidden, self.out = nnx.Linear(20, 256, rngs=rngs), nnx.Linear(256, 10, rngs=rngs)

        def __call__(self, x):  # type: ignore[no-untyped-def]
            return self.out(nnx.relu(self.hidden(x)))

    net = MLP(nnx.Rngs(0))
    net(GOOD)
    net(BAD)


def native_mxnet() -> None:
    import mxnet as mx
    from mxnet.gluon import nn

    net = nn.Sequential()
    net.add(nn.Dense(256, activation="relu"), nn.Dense(10))
    net.initialize()
    net(mx.nd.array(GOOD))
    net(mx.nd.array(BAD)).wait_to_read()


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def deferinit_error(backend: str) -> str:
    model = di.compile(di.LazyModel([di.Dense(256, activation="relu"), di.Dense(10)]), backend)
    model.apply_init(GOOD)
    try:
        model(BAD)
    except di.DeferInitError as exc:
        return first_line(exc)
    return "(no error)"


def main() -> int:
    from deferinit.registry import framework_backends, resolve

    asked = [resolve(b) for b in sys.argv[1:]]  # an unknown name is an UnknownBackendError listing the known ones
    frameworks = [b for b in asked if b != "numpy"] if asked else framework_backends()
    installed = set(di.available_backends())
    print(f"numpy (the reference, no framework)\n  deferinit: {deferinit_error('numpy')}")
    missing = []
    for backend in frameworks:
        if backend not in installed:
            missing.append(backend)
            continue
        try:
            globals()[f"native_{backend}"]()
            native = "(no error)"
        except Exception as exc:  # whatever the framework raises
            native = first_line(exc)
        print(f"{backend}\n  framework: {native}\n  deferinit: {deferinit_error(backend)}")
    for backend in missing:
        print(f"{backend}\n  not installed here: pip install 'deferinit[{backend}]' (or -r backends/{backend}.txt)")
    if missing:
        print(f"(frameworks not installed: {', '.join(missing)}; deferinit's error is the same on every backend)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
