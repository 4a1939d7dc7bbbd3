"""deferinit.layers_up on jax against an independent truth: a transposed convolution IS the gradient of a
convolution with respect to its input (PyTorch's definition), so ``jax.vjp`` of ``lax.conv_general_dilated``
(weight ``(in, out, *k)`` read as the OIHW kernel of the conv from ``out`` to ``in`` channels) with the same
stride, padding and dilation, at an input of the transposed conv's output size, gives the expected output."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax import lax

import deferinit as di

BACKEND = "jax"


def _by_gradient(x: np.ndarray, w: np.ndarray, b: np.ndarray, out_spatial: tuple, s: tuple, p: tuple,
                 d: tuple) -> np.ndarray:
    n = x.ndim - 2
    dims = ("NCH", "OIH", "NCH") if n == 1 else ("NCHW", "OIHW", "NCHW")

    def conv(z):  # type: ignore[no-untyped-def]
        return lax.conv_general_dilated(z, w, s, [(q, q) for q in p], rhs_dilation=d, dimension_numbers=dims)

    z = np.zeros((x.shape[0], w.shape[1]) + tuple(out_spatial), np.float32)
    y, vjp = jax.vjp(conv, z)
    # the conv maps the output size back to the input's, or (output_padding >= stride, with a dilation) to more:
    # positions no input pixel stands for, whose cotangent is zero
    assert y.shape[:2] == x.shape[:2] and all(a >= b for a, b in zip(y.shape[2:], x.shape[2:]))
    ct = np.zeros(y.shape, np.float32)
    ct[(slice(None), slice(None)) + tuple(slice(0, m) for m in x.shape[2:])] = x
    return np.asarray(vjp(ct)[0]) + b.reshape((1, -1) + (1,) * n)


@pytest.mark.parametrize("fields", [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=3, padding=2, output_padding=2, dilation=2),
                                    dict(dilation=3, padding=2, output_padding=2), dict(stride=(2, 1), padding=(0, 1))])
@pytest.mark.parametrize("ndim", [1, 2])
def test_conv_transpose_is_the_gradient_of_a_conv(fields: dict, ndim: int) -> None:
    if ndim == 1:
        fields = {k: v[0] if isinstance(v, tuple) else v for k, v in fields.items()}
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)[:ndim + 2]).astype(np.float32)
    layer = (di.Conv1DTranspose if ndim == 1 else di.Conv2DTranspose)(3, 3, **fields)
    model = di.compile(di.LazyModel([layer]), "jax")
    model.apply_init(x, init="xavier_uniform", key=2)
    w = model.export_weights()
    y = np.asarray(model(x))
    tup = lambda v: (v,) * ndim if isinstance(v, int) else v  # noqa: E731
    want = _by_gradient(x, w["0.weight"], w["0.bias"], y.shape[2:], tup(fields.get("stride", 1)),
                        tup(fields.get("padding", 0)), tup(fields.get("dilation", 1)))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_the_module_is_flax_conv_transpose_with_a_transposed_kernel() -> None:
    x = np.zeros((1, 2, 3, 3), np.float32)
    model = di.compile(di.LazyModel([di.Conv2DTranspose(5, (3, 2))]), "jax")
    model.apply_init(x)
    kernels = [v for path, v in jax.tree_util.tree_flatten_with_path(model.variables)[0]
               if "kernel" in jax.tree_util.keystr(path)]
    assert [k.shape for k in kernels] == [(3, 2, 5, 2)]  # (*k, out, in): flax's layout with transpose_kernel=True
    from deferinit.adapters.jax.up import ConvTranspose
    assert issubclass(ConvTranspose, nn.ConvTranspose)


def test_upsample_by_hand() -> None:
    # half-pixel centres (PyTorch's align_corners=False): along a row 0..3 doubled, output o samples
    # (o + 0.5) / 2 - 0.5, clamped at 0 and at the last pixel; nearest repeats
    x = np.tile(np.arange(4, dtype=np.float32), (1, 2, 3, 1))  # (1, 2, 3, 4), every row 0 1 2 3
    for fmt in ("channels_first", "channels_last"):
        xi = x if fmt == "channels_first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for mode, row in (("bilinear", [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]),
                          ("nearest", [0, 0, 1, 1, 2, 2, 3, 3])):
            model = di.compile(di.LazyModel([di.Upsample2D((2, 2), mode=mode)], data_format=fmt), BACKEND)
            model.apply_init(xi)
            y = model(xi)
            y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
            y = y if fmt == "channels_first" else y.transpose(0, 3, 1, 2)
            assert y.shape == (1, 2, 6, 8)
            np.testing.assert_allclose(y, np.broadcast_to(np.array(row, np.float32), (1, 2, 6, 8)), atol=1e-6)
