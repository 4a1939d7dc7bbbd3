"""Where each canonical parameter lives in a built Keras model, and how its layout translates.

A canonical parameter is held by one Keras variable, or by part of one: Keras's GRU keeps its input and
recurrent biases as the two rows of one ``(2, 3H)`` variable, and Keras's SimpleRNN and LSTM keep ONE bias per
gate, which holds ``bias_ih + bias_hh`` (exported as ``bias_ih`` with ``bias_hh`` zero: the same function and
the same gradients, see ``deferinit.layers_seq``). Each piece is a :class:`Layout` that reads the canonical
array out of the variable's value, says which part of the variable's value it contributes, and reads its
gradient. Everything is found from the layers the adapter built (structure), never from names.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ... import layouts
from ...layers import BatchNorm, Conv1D, Conv2D, Dense, Embedding, LayerNorm
from ...layers_seq import GRU, LSTM, RNN, ClassToken, MultiHeadAttention, PositionEmbedding

__all__ = ["Layout", "PARAMS", "variable_slots", "initializer_slots", "custom_params"]


class Layout:
    """One canonical parameter held in (part of) one Keras variable, translated by a kind of
    :mod:`deferinit.layouts` (``same``: the identity)."""

    def __init__(self, kind: str = "same") -> None:
        self.kind = kind

    def canonical(self, a: np.ndarray) -> np.ndarray:
        """The variable's value (native layout) -> this canonical parameter."""
        return layouts.to_canonical(self.kind, a)

    def canonical_shape(self, shape: tuple) -> tuple:
        return layouts.canonical_shape(self.kind, shape)

    def native(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        """This parameter's contribution to the variable's value (zeros where other parameters live); the value
        is the sum of the contributions of every parameter the variable holds."""
        return layouts.to_native(self.kind, w, shape)

    def grad(self, g: np.ndarray) -> np.ndarray:
        """The gradient of the variable (native layout) -> the gradient of this canonical parameter."""
        return self.canonical(g)


class Gates(Layout):
    """Gates stacked along Keras's last axis in Keras's order <-> stacked along canonical axis 0 in PyTorch's
    order. ``order[i]`` is the Keras position of canonical gate ``i``. A kernel ``(in, G*H)`` is transposed to
    ``(G*H, in)``; a bias ``(G*H,)`` only reordered."""

    def __init__(self, order: tuple, kernel: bool) -> None:
        super().__init__("dense" if kernel else "same")
        self.order = order
        self.inverse = tuple(order.index(j) for j in range(len(order)))

    def canonical(self, a: np.ndarray) -> np.ndarray:
        return layouts.regate(layouts.to_canonical(self.kind, a), self.order)

    def native(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        return layouts.to_native(self.kind, layouts.regate(w, self.inverse))


class Row(Layout):
    """Row ``row`` of the variable, laid out by ``inner`` (Keras GRU bias: row 0 input, row 1 recurrent)."""

    def __init__(self, row: int, inner: Layout) -> None:
        self.row, self.inner = row, inner

    def canonical(self, a: np.ndarray) -> np.ndarray:
        return self.inner.canonical(a[self.row])

    def canonical_shape(self, shape: tuple) -> tuple:
        return self.inner.canonical_shape(shape[1:])

    def native(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[self.row] = self.inner.native(w, shape[1:])
        return out


class Folded(Layout):
    """One of two canonical biases folded into one Keras bias (their sum): ``held`` reads the whole value
    (``bias_ih``), the other reads zeros (``bias_hh``); both get the variable's gradient, as each would alone."""

    def __init__(self, inner: Layout, held: bool) -> None:
        self.inner, self.held = inner, held

    def canonical(self, a: np.ndarray) -> np.ndarray:
        value = self.inner.canonical(a)
        return value if self.held else np.zeros_like(value)

    def canonical_shape(self, shape: tuple) -> tuple:
        return self.inner.canonical_shape(shape)

    def native(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        return self.inner.native(w, shape)

    def grad(self, g: np.ndarray) -> np.ndarray:
        return self.inner.canonical(g)


SAME, DENSE, CONV = Layout(), Layout("dense"), Layout("conv")

#: spec class -> (canonical name, Keras attribute, layout) per parameter, for the one-variable-each layers
PARAMS: dict[type, tuple[tuple[str, str, Layout], ...]] = {
    Dense: (("weight", "kernel", DENSE), ("bias", "bias", SAME)),
    Conv1D: (("weight", "kernel", CONV), ("bias", "bias", SAME)),
    Conv2D: (("weight", "kernel", CONV), ("bias", "bias", SAME)),
    BatchNorm: (("weight", "gamma", SAME), ("bias", "beta", SAME), ("running_mean", "moving_mean", SAME),
                ("running_var", "moving_variance", SAME)),
    LayerNorm: (("weight", "gamma", SAME), ("bias", "beta", SAME)),
    Embedding: (("weight", "embeddings", SAME),),
    ClassToken: (("weight", "token", SAME),),
    PositionEmbedding: (("weight", "embeddings", SAME),),
}
_INIT_ATTR = {"kernel": "kernel_initializer", "embeddings": "embeddings_initializer"}
#: canonical gate i is Keras gate ORDER[i]: GRU canonical (r, z, n), Keras (z, r, h); LSTM both (i, f, g, o)
_ORDER = {RNN: (0,), GRU: (1, 0, 2), LSTM: (0, 1, 2, 3)}
_PROJ = (("q", "query"), ("k", "key"), ("v", "value"), ("out", "output"))


def _variable(layer: Any, attr: str) -> Any:
    # Dense/Conv/Embedding expose `kernel`/`embeddings` as properties that may wrap the variable (LoRA,
    # quantization); the variable itself is the underscored attribute.
    import keras

    found = getattr(layer, "_" + attr, None)
    return found if isinstance(found, keras.Variable) else getattr(layer, attr)


def custom_params(layer: Any) -> dict[str, tuple[str, str]]:
    """``{canonical name: (attribute holding the Keras variable, layout kind)}`` of a Keras layer built for a layer
    type registered from outside: its class attribute ``deferinit_params`` (see ``leaves.py``); none if absent."""
    return dict(getattr(type(layer), "deferinit_params", {}))


def recurrent_cells(spec: Any, layer: Any) -> Iterator[tuple[str, Any]]:
    """``(canonical suffix "l{i}" or "l{i}_reverse", Keras cell)`` of a recurrent spec layer's Keras layer: one
    RNN layer, a Bidirectional, or a Sequential of them (with Dropout between) for ``num_layers > 1``."""
    per_layer = [layer] if spec.num_layers == 1 else [k for k in layer.layers if hasattr(k, "cell")
                                                      or hasattr(k, "forward_layer")]
    for i, k in enumerate(per_layer):
        if spec.bidirectional:
            yield f"l{i}", k.forward_layer.cell
            yield f"l{i}_reverse", k.backward_layer.cell
        else:
            yield f"l{i}", k.cell


def variable_slots(spec: Any, layer: Any) -> Iterator[tuple[str, Any, Layout]]:
    """``(parameter name, Keras variable, layout)`` of every canonical parameter of a built leaf layer."""
    use_bias = getattr(spec, "use_bias", True)
    if type(spec) in PARAMS:
        for pname, attr, layout in PARAMS[type(spec)]:
            if attr != "bias" or use_bias:
                yield pname, _variable(layer, attr), layout
    elif type(spec) in _ORDER:
        order = _ORDER[type(spec)]
        kernel, bias = Gates(order, kernel=True), Gates(order, kernel=False)
        for sfx, cell in recurrent_cells(spec, layer):
            yield f"weight_ih_{sfx}", cell.kernel, kernel
            yield f"weight_hh_{sfx}", cell.recurrent_kernel, kernel
            if not use_bias:
                continue
            if isinstance(spec, GRU):  # reset_after=True: two bias rows, input then recurrent
                yield f"bias_ih_{sfx}", cell.bias, Row(0, bias)
                yield f"bias_hh_{sfx}", cell.bias, Row(1, bias)
            else:  # one bias per gate
                yield f"bias_ih_{sfx}", cell.bias, Folded(bias, held=True)
                yield f"bias_hh_{sfx}", cell.bias, Folded(bias, held=False)
    elif isinstance(spec, MultiHeadAttention):
        for proj, sub in _PROJ:
            dense = getattr(layer, sub + "_dense")
            yield f"{proj}_weight", _variable(dense, "kernel"), Layout("heads_out" if proj == "out" else "heads_in")
            if use_bias:
                yield f"{proj}_bias", dense.bias, SAME if proj == "out" else Layout("heads_bias")
    else:  # a layer registered from outside: its Keras layer says where its parameters are (leaves.py)
        for pname, (attr, kind) in custom_params(layer).items():
            yield pname, _variable(layer, attr), Layout(kind)


def _same_initializer(initializer: Any) -> Any:
    return initializer


def _einsum_fans(input_axes: list, output_axes: list) -> Any:
    """What Keras's EinsumDense does to a VarianceScaling initializer (Glorot, He...) at build: fans over the
    kernel's input and output axes, so a ``(D, heads, head_dim)`` kernel has fans D and H like a Dense."""
    import keras

    def adapt(initializer: Any) -> Any:
        if isinstance(initializer, keras.initializers.VarianceScaling) and (
                initializer.input_axes is None or initializer.output_axes is None):
            config = {**initializer.get_config(), "input_axes": input_axes, "output_axes": output_axes}
            return type(initializer).from_config(config)
        return initializer
    return adapt


_EINSUM_AXES = {"q": ([0], [1, 2]), "k": ([0], [1, 2]), "v": ([0], [1, 2]), "out": ([0, 1], [2])}


def initializer_slots(spec: Any, layer: Any) -> Iterator[tuple[str, Any, str | None, Any]]:
    """``(parameter name, object, its initializer attribute, adapt)`` of every weight a kernel initializer
    fills, set before Keras builds the layer. The attribute is None where the variable's layer is only made
    while Keras builds (MultiHeadAttention's four projections, each given a copy of the attention layer's one
    ``_kernel_initializer``): such kernels get their initializer after the build, through ``adapt``, which
    does to it what Keras would have done."""
    if type(spec) in PARAMS:
        for pname, attr, _ in PARAMS[type(spec)]:
            if attr in _INIT_ATTR:
                yield pname, layer, _INIT_ATTR[attr], _same_initializer
    elif type(spec) in _ORDER:
        for sfx, cell in recurrent_cells(spec, layer):
            yield f"weight_ih_{sfx}", cell, "kernel_initializer", _same_initializer
            yield f"weight_hh_{sfx}", cell, "recurrent_initializer", _same_initializer
    elif isinstance(spec, MultiHeadAttention):
        for proj, _ in _PROJ:
            yield f"{proj}_weight", layer, None, _einsum_fans(*_EINSUM_AXES[proj])
    else:
        for pname, (attr, _) in custom_params(layer).items():
            if hasattr(layer, attr + "_initializer"):
                yield pname, layer, attr + "_initializer", _same_initializer
