"""What every leaf layer builds on: the parameter and buffer records, the context a shape rule gets, the
``Leaf`` base class and the window arithmetic shared by convolutions and pooling. The layers themselves are in
``layers.py`` (dense, convolution, pooling) and ``layers_norm.py`` (normalization, activations, reshaping,
embedding), all importable from :mod:`deferinit.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .errors import DTypeError, ShapeMismatchError, SpecError, fmt_shape, where
from .spec import Layer, Shape, show

__all__ = ["ParamSpec", "Buffer", "RuleContext", "Leaf", "conv_pads", "check_kind"]


class ParamSpec(NamedTuple):
    """A parameter as the rules see it. ``role`` tells initializers what it is."""

    shape: tuple[int, ...]
    trainable: bool = True
    role: str = "kernel"  # kernel | bias | scale | shift | mean | var | embedding


class Buffer(NamedTuple):
    """A tensor a layer holds besides its parameters, input and output, for the memory estimate
    (:mod:`deferinit.resources`): ``resident`` tables live as long as the model, workspace while the layer runs."""

    what: str
    shape: tuple[int, ...]
    resident: bool = False
    itemsize: int = 4


class RuleContext:
    """What a rule needs besides its input shape: where it is (for errors) and the data format."""

    __slots__ = ("path", "layer", "data_format", "backend")

    def __init__(self, path: str, layer: Layer, data_format: str, backend: str | None = None) -> None:
        self.path, self.layer, self.data_format, self.backend = path, layer, data_format, backend

    def mismatch(self, expected: str, received: str, hint: str = "") -> ShapeMismatchError:
        msg = f"{where(self.path, self.layer, self.backend)} expected {expected}, received {received}"
        return ShapeMismatchError(msg + (f"; {hint}" if hint else ""))

    def channel_axis(self, rank: int) -> int:
        return 1 if (self.data_format == "channels_first" or rank == 2) else rank - 1

    def spatial_axes(self, rank: int) -> tuple[int, ...]:
        return tuple(range(2, rank)) if self.data_format == "channels_first" else tuple(range(1, rank - 1))

    def need_rank(self, shape: Shape, ranks: tuple[int, ...], what: str) -> None:
        if len(shape) not in ranks:
            names = " or ".join(str(r) for r in ranks)
            raise self.mismatch(f"a rank-{names} input {what}", f"shape {fmt_shape(shape)} (rank {len(shape)})")

    def known(self, shape: Shape, axis: int, what: str) -> int:
        """A dim that a parameter depends on: it must be concrete."""
        dim: int = shape[axis]
        if dim is None:
            raise self.mismatch(f"a known size for {what} (axis {axis % len(shape)}), since parameters depend on it",
                                f"shape {fmt_shape(shape)} with that dim None",
                                "give that dim a concrete size")
        return dim

    def check_declared(self, field: str, declared: int | None, actual: int) -> None:
        if declared is not None and declared != actual:
            raise self.mismatch(f"{field}={declared} (declared in the spec)", f"{actual}")


def conv_pads(size: int | None, kernel: int, stride: int, dilation: int, padding: Any) -> tuple[int, int]:
    """(before, after) padding of one spatial dim. ``"same"`` follows TensorFlow: ``out = ceil(size / stride)``,
    the odd pixel going after; for stride 1 that is PyTorch's ``padding='same'`` too."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        eff = dilation * (kernel - 1) + 1
        if size is None:
            total = eff - 1 if stride == 1 else None
            if total is None:  # depends on the size; the output dim is None anyway
                return 0, 0
        else:
            out = -(-size // stride)
            total = max((out - 1) * stride + eff - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def _window_out(ctx: RuleContext, shape: Shape, axis: int, kernel: int, stride: int, dilation: int,
                padding: Any) -> int | None:
    size: int | None = shape[axis]
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    before, after = conv_pads(size, kernel, stride, dilation, padding)
    eff = dilation * (kernel - 1) + 1
    if size + before + after < eff:
        raise ctx.mismatch(f"spatial size >= {eff} on axis {axis} (the {'dilated ' if dilation > 1 else ''}window, "
                           f"after padding {before}+{after})", f"shape {fmt_shape(shape)}",
                           "use a larger input or a smaller kernel/stride")
    return (size + before + after - eff) // stride + 1


def _bool_error(layer: str, value: Any) -> SpecError:
    return SpecError(f"{layer}: use_bias must be True or False. Received: use_bias={show(value)}")


def _layer_name(layer: Layer) -> str:
    return type(layer).__name__


# --------------------------------------------------------------------------------------------- leaf layers
@dataclass(frozen=True, eq=False, repr=False)
class Leaf(Layer):
    accepts: ClassVar[str] = "float"  # float | int | any: the input dtype kind the layer takes
    fan_name: ClassVar[str] = "input features"  # what the input dim its parameters depend on is called

    def infer(self, shape: Shape, ctx: RuleContext) -> tuple[Shape, dict[str, ParamSpec]]:
        raise NotImplementedError

    def buffers(self, shape: Shape, out: Shape, data_format: str) -> tuple[Buffer, ...]:
        """What the layer allocates beyond its output for an input of ``shape`` (concrete dims): none for most."""
        return ()


def _spatial_axes(rank: int, data_format: str) -> tuple[int, ...]:
    return tuple(range(2, rank)) if data_format == "channels_first" else tuple(range(1, rank - 1))


def _padded(shape: Shape, axes: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> tuple[Buffer, ...]:
    """The zero-padded copy of the input that explicit padding costs (TensorFlow pads in a layer of its own)."""
    if not any(a or b for a, b in pads):
        return ()
    full = list(shape)
    for axis, (a, b) in zip(axes, pads):
        full[axis] += a + b
    return (Buffer("zero-padded copy of the input", tuple(full)),)



def check_kind(ctx: RuleContext, layer: Leaf, kind: str) -> None:
    """The dtype kind flowing into ``layer`` (``float`` or ``int``) must be one it accepts."""
    if layer.accepts not in ("any", kind):
        need = "integer indices" if layer.accepts == "int" else "floating-point data"
        raise DTypeError(f"{where(ctx.path, layer, ctx.backend)} expected {need}, received {kind} data")
