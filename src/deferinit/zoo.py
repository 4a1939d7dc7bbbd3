"""The d2l book's model zoo as deferinit specs, with the book's default arguments.

Each function returns a :class:`~deferinit.LazyModel` equal in structure to the book's PyTorch chapter code
(``nn.Lazy*`` layers, biases where the book has them). Written once, every framework gets the same network:
the book's own four implementations disagree on BN-LeNet, DenseNet and RegNetX-32 (see FRAMEWORK-NOTES);
these specs give the PyTorch counts everywhere. ``BOOK_INPUTS`` holds the input each chapter uses.
"""

from __future__ import annotations

from typing import Any, Callable

from .layers import (
    GELU,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
)
from .layers_seq import (
    GRU,
    LSTM,
    RNN,
    ClassToken,
    MultiHeadAttention,
    OneHot,
    Permute,
    PositionalEncoding,
    PositionEmbedding,
    Reshape,
    Scale,
    Take,
)
from .spec import Concat, Layer, LazyModel, Residual, Sequential

__all__ = ["mlp", "lenet", "bn_lenet", "alexnet", "vgg", "vgg11", "nin", "googlenet", "inception", "resnet18",
           "residual_block", "resnext_block", "densenet", "dense_block", "transition_block", "regnetx32", "anynet",
           "rnn_lm", "transformer_encoder", "vit", "gpt2", "bert_base", "transformer", "resnet50", "mobilenet_v2", "efficientnet_b0",
           "densenet121", "vgg16_bn", "convnext_tiny", "unet", "lstm_classifier", "BOOK_INPUTS", "INT_INPUTS", "MODELS",
           "parity_specs"]


def mlp(num_hiddens: int = 256, num_outputs: int = 10) -> LazyModel:
    """The lazy-initialization chapter's seed MLP."""
    return LazyModel([Dense(num_hiddens, activation="relu"), Dense(num_outputs)], name="mlp")


def lenet(num_classes: int = 10) -> LazyModel:
    return LazyModel([
        Conv2D(6, 5, padding=2, activation="sigmoid"), AvgPool2D(2, stride=2),
        Conv2D(16, 5, activation="sigmoid"), AvgPool2D(2, stride=2), Flatten(),
        Dense(120, activation="sigmoid"), Dense(84, activation="sigmoid"), Dense(num_classes)], name="lenet")


def bn_lenet(num_classes: int = 10) -> LazyModel:
    """LeNet with batch normalization (the BatchNorm chapter): 44,878 trainable parameters."""
    return LazyModel([
        Conv2D(6, 5), BatchNorm(), Sigmoid(), AvgPool2D(2, stride=2),
        Conv2D(16, 5), BatchNorm(), Sigmoid(), AvgPool2D(2, stride=2), Flatten(),
        Dense(120), BatchNorm(), Sigmoid(), Dense(84), BatchNorm(), Sigmoid(), Dense(num_classes)], name="bn_lenet")


def alexnet(num_classes: int = 10) -> LazyModel:
    return LazyModel([
        Conv2D(96, 11, stride=4, padding=1, activation="relu"), MaxPool2D(3, stride=2),
        Conv2D(256, 5, padding=2, activation="relu"), MaxPool2D(3, stride=2),
        Conv2D(384, 3, padding=1, activation="relu"), Conv2D(384, 3, padding=1, activation="relu"),
        Conv2D(256, 3, padding=1, activation="relu"), MaxPool2D(3, stride=2), Flatten(),
        Dense(4096, activation="relu"), Dropout(0.5), Dense(4096, activation="relu"), Dropout(0.5),
        Dense(num_classes)], name="alexnet")


def vgg_block(num_convs: int, out_channels: int) -> Sequential:
    return Sequential([Conv2D(out_channels, 3, padding=1, activation="relu") for _ in range(num_convs)]
                      + [MaxPool2D(2, stride=2)])


def vgg(arch: tuple[Any, ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)), num_classes: int = 10) -> LazyModel:
    return LazyModel([vgg_block(n, c) for n, c in arch] + [
        Flatten(), Dense(4096, activation="relu"), Dropout(0.5), Dense(4096, activation="relu"), Dropout(0.5),
        Dense(num_classes)], name="vgg")


def vgg11(num_classes: int = 10) -> LazyModel:
    return vgg(((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)), num_classes)


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> Sequential:
    return Sequential([Conv2D(out_channels, kernel_size, stride=strides, padding=padding, activation="relu"),
                       Conv2D(out_channels, 1, activation="relu"), Conv2D(out_channels, 1, activation="relu")])


def nin(num_classes: int = 10) -> LazyModel:
    return LazyModel([
        nin_block(96, 11, 4, 0), MaxPool2D(3, stride=2), nin_block(256, 5, 1, 2), MaxPool2D(3, stride=2),
        nin_block(384, 3, 1, 1), MaxPool2D(3, stride=2), Dropout(0.5), nin_block(num_classes, 3, 1, 1),
        GlobalAvgPool2D()], name="nin")


def inception(c1: int, c2: tuple[Any, ...], c3: tuple[Any, ...], c4: int) -> Concat:
    """Four parallel paths concatenated on the channel axis."""
    return Concat([
        Conv2D(c1, 1, activation="relu"),
        Sequential([Conv2D(c2[0], 1, activation="relu"), Conv2D(c2[1], 3, padding=1, activation="relu")]),
        Sequential([Conv2D(c3[0], 1, activation="relu"), Conv2D(c3[1], 5, padding=2, activation="relu")]),
        Sequential([MaxPool2D(3, stride=1, padding=1), Conv2D(c4, 1, activation="relu")])])


def googlenet(num_classes: int = 10) -> LazyModel:
    b1 = Sequential([Conv2D(64, 7, stride=2, padding=3, activation="relu"), MaxPool2D(3, stride=2, padding=1)])
    b2 = Sequential([Conv2D(64, 1, activation="relu"), Conv2D(192, 3, padding=1, activation="relu"),
                     MaxPool2D(3, stride=2, padding=1)])
    b3 = Sequential([inception(64, (96, 128), (16, 32), 32), inception(128, (128, 192), (32, 96), 64),
                     MaxPool2D(3, stride=2, padding=1)])
    b4 = Sequential([inception(192, (96, 208), (16, 48), 64), inception(160, (112, 224), (24, 64), 64),
                     inception(128, (128, 256), (24, 64), 64), inception(112, (144, 288), (32, 64), 64),
                     inception(256, (160, 320), (32, 128), 128), MaxPool2D(3, stride=2, padding=1)])
    b5 = Sequential([inception(256, (160, 320), (32, 128), 128), inception(384, (192, 384), (48, 128), 128),
                     GlobalAvgPool2D()])
    return LazyModel([b1, b2, b3, b4, b5, Dense(num_classes)], name="googlenet")


def residual_block(num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> Residual:
    body = Sequential([Conv2D(num_channels, 3, padding=1, stride=strides), BatchNorm(), ReLU(),
                       Conv2D(num_channels, 3, padding=1), BatchNorm()])
    shortcut = Conv2D(num_channels, 1, stride=strides) if use_1x1conv else None
    return Residual(body, shortcut=shortcut, activation="relu")


def _stem(channels: int = 64) -> Sequential:
    return Sequential([Conv2D(channels, 7, stride=2, padding=3), BatchNorm(), ReLU(), MaxPool2D(3, stride=2, padding=1)])


def resnet18(num_classes: int = 10, arch: tuple[Any, ...] = ((2, 64), (2, 128), (2, 256), (2, 512))) -> LazyModel:
    stages: list[Layer] = []
    for i, (num_residuals, channels) in enumerate(arch):
        blocks = [residual_block(channels, use_1x1conv=(j == 0 and i != 0), strides=2 if (j == 0 and i != 0) else 1)
                  for j in range(num_residuals)]
        stages.append(Sequential(blocks))
    return LazyModel([_stem(), *stages, GlobalAvgPool2D(), Dense(num_classes)], name="resnet18")


def resnext_block(num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                  strides: int = 1) -> Residual:
    """d2l's ResNeXt block: ``groups`` is the width of each group, as in the book."""
    bot = int(round(num_channels * bot_mul))
    body = Sequential([Conv2D(bot, 1), BatchNorm(), ReLU(),
                       Conv2D(bot, 3, stride=strides, padding=1, groups=bot // groups), BatchNorm(), ReLU(),
                       Conv2D(num_channels, 1), BatchNorm()])
    shortcut = Sequential([Conv2D(num_channels, 1, stride=strides), BatchNorm()]) if use_1x1conv else None
    return Residual(body, shortcut=shortcut, activation="relu")


def dense_block(num_convs: int, num_channels: int) -> Sequential:
    """Each step concatenates its input with a BN-ReLU-Conv of it (``torch.cat((X, Y), dim=1)``)."""
    def conv() -> Sequential:
        return Sequential([BatchNorm(), ReLU(), Conv2D(num_channels, 3, padding=1)])

    return Sequential([Concat([Identity(), conv()]) for _ in range(num_convs)])


def transition_block(num_channels: int) -> Sequential:
    return Sequential([BatchNorm(), ReLU(), Conv2D(num_channels, 1), AvgPool2D(2, stride=2)])


def densenet(num_channels: int = 64, growth_rate: int = 32, arch: tuple[Any, ...] = (4, 4, 4, 4),
             num_classes: int = 10) -> LazyModel:
    """758,226 trainable parameters with the defaults (the transition channels accumulate, as in PyTorch)."""
    layers: list[Layer] = [_stem(64)]
    for i, num_convs in enumerate(arch):
        layers.append(dense_block(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            layers.append(transition_block(num_channels))
    layers += [BatchNorm(), ReLU(), GlobalAvgPool2D(), Dense(num_classes)]
    return LazyModel(layers, name="densenet")


def anynet(arch: tuple[Any, ...], stem_channels: int, num_classes: int = 10) -> LazyModel:
    """d2l's AnyNet: a stride-2 stem, stages of ResNeXt blocks (the first of each halves the resolution)."""
    stem = Sequential([Conv2D(stem_channels, 3, stride=2, padding=1), BatchNorm(), ReLU()])
    stages = [Sequential([resnext_block(c, g, b, use_1x1conv=True, strides=2)]
                         + [resnext_block(c, g, b) for _ in range(depth - 1)])
              for depth, c, g, b in arch]
    return LazyModel([stem, *stages, GlobalAvgPool2D(), Dense(num_classes)], name="anynet")


def regnetx32(num_classes: int = 10) -> LazyModel:
    """RegNetX-32 as in the book: 179,290 trainable parameters (groups 16, bottleneck 1, depths 4 and 6)."""
    stem_channels, groups, bot_mul = 32, 16, 1
    depths, channels = (4, 6), (32, 80)
    return anynet(((depths[0], channels[0], groups, bot_mul), (depths[1], channels[1], groups, bot_mul)),
                  stem_channels, num_classes)


def rnn_lm(kind: str = "gru", vocab_size: int = 28, num_hiddens: int = 32, num_layers: int = 1,
           bidirectional: bool = False) -> LazyModel:
    """d2l's RNN language model: one-hot tokens, a recurrent layer (``rnn``, ``gru`` or ``lstm``; deep with
    ``num_layers``, bidirectional with ``bidirectional``) and a Dense output over the vocabulary."""
    cls = {"rnn": RNN, "gru": GRU, "lstm": LSTM}[kind]
    return LazyModel([OneHot(vocab_size), cls(num_hiddens, num_layers=num_layers, bidirectional=bidirectional),
                      Dense(vocab_size)], name=f"{kind}_lm")


def transformer_encoder(vocab_size: int = 200, num_hiddens: int = 24, ffn_num_hiddens: int = 48, num_heads: int = 8,
                        num_blks: int = 2, dropout: float = 0.5, use_bias: bool = False) -> LazyModel:
    """d2l's Transformer encoder: scaled embedding plus sinusoidal positions, then blocks of
    add-and-norm around multi-head self-attention and a position-wise FFN."""
    blocks: list[Layer] = []
    for _ in range(num_blks):
        blocks.append(Sequential([
            Residual(Sequential([MultiHeadAttention(num_hiddens, num_heads, use_bias=use_bias, dropout=dropout),
                                 Dropout(dropout)])), LayerNorm(),
            Residual(Sequential([Dense(ffn_num_hiddens, activation="relu"), Dense(num_hiddens), Dropout(dropout)])),
            LayerNorm()]))
    return LazyModel([Embedding(vocab_size, num_hiddens), Scale(float(num_hiddens) ** 0.5), PositionalEncoding(),
                      Dropout(dropout), *blocks], name="transformer_encoder")


def vit(patch_size: int = 16, num_hiddens: int = 512, mlp_num_hiddens: int = 2048, num_heads: int = 8,
        num_blks: int = 2, emb_dropout: float = 0.1, blk_dropout: float = 0.1, use_bias: bool = False,
        num_classes: int = 10) -> LazyModel:
    """d2l's Vision Transformer: conv patch embedding, class token, learned position embedding, pre-norm
    blocks, and a head on the class token. The number of patches is deferred, like every other dim."""
    patches = Sequential([Conv2D(num_hiddens, patch_size, stride=patch_size), Reshape((num_hiddens, -1)),
                          Permute((2, 1))])
    blocks = [Sequential([
        Residual(Sequential([LayerNorm(), MultiHeadAttention(num_hiddens, num_heads, use_bias=use_bias,
                                                             dropout=blk_dropout)])),
        Residual(Sequential([LayerNorm(), Dense(mlp_num_hiddens), GELU(), Dropout(blk_dropout), Dense(num_hiddens),
                             Dropout(blk_dropout)]))]) for _ in range(num_blks)]
    return LazyModel([patches, ClassToken(), PositionEmbedding(), Dropout(emb_dropout), *blocks, Take(0),
                      LayerNorm(), Dense(num_classes)], name="vit")


#: the input each chapter feeds its model (batch 1, one grey channel)
BOOK_INPUTS = {
    "mlp": (2, 20), "lenet": (1, 1, 28, 28), "bn_lenet": (1, 1, 28, 28), "alexnet": (1, 1, 224, 224),
    "vgg11": (1, 1, 224, 224), "nin": (1, 1, 96, 96), "googlenet": (1, 1, 96, 96), "resnet18": (1, 1, 96, 96),
    "densenet": (1, 1, 96, 96), "regnetx32": (1, 1, 96, 96), "rnn_lm": (2, 35), "gru_lm": (2, 35),
    "lstm_lm": (2, 35), "deep_gru_lm": (2, 35), "bi_lstm_lm": (2, 35), "transformer_encoder": (2, 100),
    "vit": (1, 3, 96, 96),
}
#: inputs that are token ids rather than floats
INT_INPUTS = {"rnn_lm", "gru_lm", "lstm_lm", "deep_gru_lm", "bi_lstm_lm", "transformer_encoder"}

MODELS: dict[str, Callable[[], LazyModel]] = {
    "mlp": mlp, "lenet": lenet, "bn_lenet": bn_lenet, "alexnet": alexnet, "vgg11": vgg11, "nin": nin,
    "googlenet": googlenet, "resnet18": resnet18, "densenet": densenet, "regnetx32": regnetx32,
    "rnn_lm": lambda: rnn_lm("rnn"), "gru_lm": lambda: rnn_lm("gru"), "lstm_lm": lambda: rnn_lm("lstm"),
    "deep_gru_lm": lambda: rnn_lm("gru", num_layers=2), "bi_lstm_lm": lambda: rnn_lm("lstm", bidirectional=True),
    "transformer_encoder": transformer_encoder, "vit": vit}


def parity_specs(*, vision: bool = True) -> dict[str, Any]:
    """Zoo models at inputs small enough for the cross-framework parity session (name -> spec, shape, dtype):
    the book's models at their book input with batch 2, then (``vision``) the vision zoo's at
    ``zoo_vision.PARITY_INPUTS``."""
    out = {}
    for name, make in MODELS.items():
        shape = (2,) + BOOK_INPUTS[name][1:]  # batch 2: BatchNorm's training step needs more than one value
        out[f"zoo_{name}"] = (make(), shape, "int64" if name in INT_INPUTS else "float32")
    if vision:
        from .zoo_vision import parity_specs as vision_specs

        out.update(vision_specs())
    return out


from .zoo_text import bert_base, gpt2, transformer  # noqa: E402  (graph specs: deferinit.graph imports the layers above)
from .zoo_vision import (  # noqa: E402
    convnext_tiny,
    densenet121,
    efficientnet_b0,
    lstm_classifier,
    mobilenet_v2,
    resnet50,
    unet,
    vgg16_bn,
)
