"""Hand-written Keras 3 (TensorFlow) models for bench/run.py: what an expert writes for the d2l models.

Each model is a ``keras.Sequential`` of stock layers built on its first call (the book's lazy
initialization), channels-first like the spec's data where TensorFlow runs NCHW convolutions (its oneDNN kernels
on x86), else permuted once to channels-last at the input (TensorFlow's own CPU kernels are NHWC-only).
The forward is the fast path deferinit itself uses and Keras uses inside
``predict_on_batch``/``fit``: one ``tf.function`` over the model call in inference mode, with relaxed shapes.
Both sides run the same ops, so the comparison is of the glue around them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers as L  # noqa: E402
from keras.src.backend.common import global_state  # noqa: E402


def _nchw_runs() -> bool:
    """Whether this TensorFlow runs NCHW convolutions on the CPU (its oneDNN kernels do; its own take NHWC only)."""
    try:
        tf.nn.conv2d(tf.zeros((1, 1, 1, 1)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
        return True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return False


# where NCHW does not run, an expert's model takes the NCHW data, permutes it once to NHWC and runs channels-last
NCHW = _nchw_runs()
CF = "channels_first" if NCHW else "channels_last"


def _to_layout() -> list:
    return [] if NCHW else [L.Permute((2, 3, 1))]


def _to_chw() -> list:  # before a Flatten: PyTorch's (C, H, W) order, as the spec's weights expect
    return [] if NCHW else [L.Permute((3, 1, 2))]


def _bn() -> Any:
    return L.BatchNormalization(axis=1 if NCHW else -1, momentum=0.9, epsilon=1e-5)


class Residual(keras.Model):
    """d2l's residual block; a stride-2 conv pads one pixel each side (PyTorch's padding=1) explicitly."""

    def __init__(self, channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = (L.Conv2D(channels, 3, padding="same", data_format=CF) if strides == 1 else
                      keras.Sequential([L.ZeroPadding2D(1, data_format=CF),
                                        L.Conv2D(channels, 3, strides=strides, data_format=CF)]))
        self.bn1, self.bn2 = _bn(), _bn()
        self.conv2 = L.Conv2D(channels, 3, padding="same", data_format=CF)
        self.conv3 = L.Conv2D(channels, 1, strides=strides, data_format=CF) if use_1x1conv else None

    def call(self, x: Any, training: Any = None) -> Any:
        y = keras.activations.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return keras.activations.relu(y + (self.conv3(x) if self.conv3 is not None else x))

    def spec_order(self) -> list:
        return [self.conv1, self.bn1, self.conv2, self.bn2] + ([self.conv3] if self.conv3 is not None else [])


def _mlp() -> Any:
    return keras.Sequential([L.Dense(256, activation="relu"), L.Dense(10)])


def _lenet() -> Any:
    return keras.Sequential([*_to_layout(),
        L.Conv2D(6, 5, padding="same", activation="sigmoid", data_format=CF), L.AveragePooling2D(2, 2, data_format=CF),
        L.Conv2D(16, 5, activation="sigmoid", data_format=CF), L.AveragePooling2D(2, 2, data_format=CF), *_to_chw(),
        L.Flatten(), L.Dense(120, activation="sigmoid"), L.Dense(84, activation="sigmoid"), L.Dense(10)])


def _resnet18() -> Any:
    # the stem pads 3 (conv) and 1 (pool, after a ReLU: zeros never win) on each side, as PyTorch does
    net = keras.Sequential([*_to_layout(), L.ZeroPadding2D(3, data_format=CF), L.Conv2D(64, 7, strides=2, data_format=CF), _bn(),
                            L.ReLU(), L.ZeroPadding2D(1, data_format=CF), L.MaxPooling2D(3, 2, data_format=CF)])
    for i, channels in enumerate((64, 128, 256, 512)):
        net.add(keras.Sequential([Residual(channels, use_1x1conv=i > 0, strides=2 if i > 0 else 1),
                                  Residual(channels)]))
    net.add(L.GlobalAveragePooling2D(data_format=CF))
    net.add(L.Dense(10))
    return net


def _native(make: Callable[[], Any]) -> Callable[[np.ndarray], Any]:
    def build(x0: np.ndarray) -> Any:
        net = make()
        net(x0, training=False)  # Keras's build on first call: the native dry run
        forward = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
        forward.net = net  # type: ignore[attr-defined]
        return forward
    return build


MODELS = {"mlp": _native(_mlp), "lenet": _native(_lenet), "resnet18": _native(_resnet18)}


def _leaves(layer: Any) -> list:
    if hasattr(layer, "spec_order"):
        return [leaf for sub in layer.spec_order() for leaf in _leaves(sub)]
    if isinstance(layer, keras.Sequential):
        return [leaf for sub in layer.layers for leaf in _leaves(sub)]
    return [layer] if layer.weights else []


def _variables(layer: Any) -> list[tuple[Any, Callable[[np.ndarray], np.ndarray]]]:
    if isinstance(layer, L.BatchNormalization):
        return [(v, lambda w: w) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
    to_native = (lambda w: w.T) if isinstance(layer, L.Dense) else (lambda w: np.transpose(w, (2, 3, 1, 0)))
    return [(layer.kernel, to_native), (layer.bias, lambda w: w)]


def load(forward: Any, compiled_model: Any) -> None:
    """Canonical weights (Dense (out, in), conv OIHW, BatchNorm) into the hand-written Keras model."""
    weights = list(compiled_model.export_weights().values())  # the spec's order
    slots = [slot for leaf in _leaves(forward.net) for slot in _variables(leaf)]
    assert len(slots) == len(weights)
    for (var, to_native), w in zip(slots, weights):
        var.assign(to_native(w))


def to_native(x: np.ndarray) -> Any:
    return tf.constant(x)


def sync(y: Any) -> Any:
    return y  # TensorFlow's eager runtime returns from a tf.function call after the CPU work is done


def abstract_mlp(layers: int, width: int) -> int:
    """Keras's own shape-only build: shaped variables with no values (no parameter memory)."""
    net = keras.Sequential([L.Dense(width, activation="relu") for _ in range(layers)])
    with keras.StatelessScope(initialize_variables=False):
        net.build((1, width))
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    ours = {id(v) for v in net.variables}  # else the next symbolic Keras call anywhere would allocate them
    global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])
    return sum(int(np.prod(v.shape)) for v in net.weights)
