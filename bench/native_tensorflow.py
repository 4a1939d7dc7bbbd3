"""Hand-written Keras 3 (TensorFlow) models for bench/run.py: what an expert writes for the d2l models.

Each model is a ``keras.Sequential`` of stock layers built on its first call (the book's lazy
initialization), on a CPU permuted once to channels-last at the input, as Keras's own models run there
(TensorFlow's own CPU kernels are NHWC-only, and oneDNN's NCHW kernels ran these models 2-3x slower than
channels-last on the CI machine's AMD EPYC, see ``adapters/tensorflow/modules.transpose_channels_first``),
channels-first like the spec's data with a GPU that runs NCHW convolutions.
The forward is the fast path deferinit itself uses and Keras uses inside
``predict_on_batch``/``fit``: one ``tf.function`` over the model call in inference mode, with relaxed shapes.
Both sides run the same ops, so the comparison is of the glue around them.

The zoo's large models (``ZOO``, ``ZOO_ABSTRACT``): ``keras.applications``' ResNet50 and MobileNetV2 (``weights=
None``, channels-last, the NCHW data permuted once at the input) and GPT-2 / BERT-base written as functional
Keras models of stock layers (``MultiHeadAttention``, ``LayerNormalization``, ``Embedding``, ``Dense``), as
keras_hub's backbones are. Their abstract path is the functional construction under
``keras.StatelessScope(initialize_variables=False)`` (shaped variables, no values), as ``abstract_mlp``'s.
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
    """Whether an expert's model runs NCHW: with a GPU that runs NCHW convolutions (on a CPU channels-last is
    faster where oneDNN runs NCHW at all, see the module docstring)."""
    if not tf.config.list_logical_devices("GPU"):
        return False
    try:
        tf.nn.conv2d(tf.zeros((1, 1, 1, 1)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
        return True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return False


# elsewhere an expert's model takes the NCHW data, permutes it once to NHWC and runs channels-last
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


# ------------------------------------------------------------------------------------------------ the zoo
class PositionEmbedding(L.Layer):
    """Learned positions: a (max_len, D) table whose first T rows are added (GPT-2's wpe, BERT's positions)."""

    def __init__(self, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_len = max_len

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(shape=(self.max_len, input_shape[-1]), initializer="random_normal")

    def call(self, x: Any) -> Any:
        return x + self.table[None, : keras.ops.shape(x)[1]]


class TiedHead(L.Layer):
    """GPT-2's LM head: the logits against the token embedding's own table (no weights of its own)."""

    def __init__(self, embedding: L.Embedding, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._table = [embedding]  # in a list: Keras does not track it as a sublayer (its weights stay the embedding's)

    def call(self, x: Any) -> Any:
        return keras.ops.matmul(x, keras.ops.transpose(self._table[0].embeddings))


class KeyMask(L.Layer):
    """(N, 1, T) true on the valid keys, from the ids and the valid lengths (an attention mask of ones then zeros)."""

    def call(self, ids: Any, lens: Any) -> Any:
        return keras.ops.arange(keras.ops.shape(ids)[1])[None, None, :] < keras.ops.cast(lens, "int32")[:, None, None]


def _gpt2(image: tuple[int, ...]) -> Any:
    d, heads = 768, 12
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    wte = L.Embedding(50257, d)
    h = PositionEmbedding(1024)(wte(ids))
    for _ in range(12):
        x = L.LayerNormalization(epsilon=1e-5)(h)
        h = h + L.MultiHeadAttention(heads, d // heads)(x, x, use_causal_mask=True)
        x = L.LayerNormalization(epsilon=1e-5)(h)
        x = L.Dense(4 * d, activation=lambda t: keras.activations.gelu(t, approximate=True))(x)
        h = h + L.Dense(d)(x)
    return keras.Model(ids, TiedHead(wte)(L.LayerNormalization(epsilon=1e-5)(h)))


def _bert(image: tuple[int, ...]) -> Any:
    d, heads, eps = 768, 12, 1e-12
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    types = keras.Input((None,), dtype="int64", name="token_type_ids")
    lens = keras.Input((), dtype="int64", name="valid_lens")
    keys = KeyMask()(ids, lens)
    h = L.Embedding(30522, d)(ids) + L.Embedding(2, d)(types)
    h = L.LayerNormalization(epsilon=eps)(PositionEmbedding(512)(h))
    for _ in range(12):
        h = L.LayerNormalization(epsilon=eps)(h + L.MultiHeadAttention(heads, d // heads)(h, h, attention_mask=keys))
        x = L.Dense(3072, activation=lambda t: keras.activations.gelu(t, approximate=False))(h)
        h = L.LayerNormalization(epsilon=eps)(h + L.Dense(d)(x))
    pooled = L.Dense(d, activation="tanh")(h[:, 0])
    return keras.Model([ids, types, lens], [h, pooled])


def _applications(name: str) -> Callable[[tuple[int, ...]], Any]:
    from keras import applications

    def make(image: tuple[int, ...]) -> Any:  # the NCHW input's shape; the Keras model's is (H, W, C)
        return getattr(applications, name)(weights=None, classifier_activation=None, input_shape=(*image[2:], image[1]))
    return make


_ZOO_MAKE: dict[str, Callable[[tuple[int, ...]], Any]] = {"resnet50": _applications("ResNet50"),
                                          "mobilenet_v2": _applications("MobileNetV2"), "gpt2": _gpt2, "bert_base": _bert}
_IMAGES = ("resnet50", "mobilenet_v2")


def _count(net: Any) -> int:
    """Every variable once (trainable and BatchNorm's moving statistics), as deferinit counts them."""
    return sum(int(np.prod(v.shape)) for v in {id(v): v for v in net.weights}.values())


def _zoo(name: str) -> Callable[[list[np.ndarray]], tuple[Any, int]]:
    def build(inputs: list[np.ndarray]) -> tuple[Any, int]:
        net = _ZOO_MAKE[name](inputs[0].shape)
        if name in _IMAGES:  # Keras's applications are channels-last: the NCHW data permuted once at the input
            call = tf.function(lambda x: net(tf.transpose(x, (0, 2, 3, 1)), training=False), reduce_retracing=True)
        else:
            call = tf.function(lambda *xs: net(xs[0] if len(xs) == 1 else list(xs), training=False), reduce_retracing=True)
        call(*inputs)  # the dry run (the functional construction already made every variable)
        return call, _count(net)
    return build


def _zoo_abstract(name: str) -> Callable[[list[tuple[tuple[int, ...], str]]], int]:
    def build(inputs: list[tuple[tuple[int, ...], str]]) -> int:
        with keras.StatelessScope(initialize_variables=False):
            net = _ZOO_MAKE[name](inputs[0][0])
        pending = global_state.get_global_attribute("uninitialized_variables") or []
        ours = {id(v) for v in net.weights}  # else the next symbolic Keras call anywhere would allocate them
        global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])
        return _count(net)
    return build


ZOO = {name: _zoo(name) for name in _ZOO_MAKE}
ZOO_ABSTRACT = {name: _zoo_abstract(name) for name in _ZOO_MAKE}
ZOO_COUNT_DIFFERS = {"resnet50": "Keras's ResNet50 gives every convolution a bias (torchvision's, and the zoo's, "
                                 "have none): 53,120 more parameters, one per BatchNorm channel"}
