"""deferinit.layers_up on torch, and the NumPy reference kernel, against torch's own ConvTranspose modules and
``F.conv_transpose1d/2d`` built here by hand with the same weights (an independent truth for both)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deferinit as di

GEOMETRIES = [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(stride=3, padding=2),
              dict(stride=3, padding=1, output_padding=2, dilation=2), dict(dilation=3, padding=2, output_padding=2),
              dict(groups=3, stride=2), dict(groups=3, stride=(1, 2), padding=(0, 1), kernel_size=(2, 3))]


def _kernel(fields: dict, ndim: int) -> tuple:
    k = fields.pop("kernel_size", 3)
    if ndim == 1:
        fields.update({n: v[0] for n, v in fields.items() if isinstance(v, tuple)})
        k = k[0] if isinstance(k, tuple) else k
    return k, fields


@pytest.mark.parametrize("fields", GEOMETRIES)
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("target", ["torch", "numpy"])
def test_conv_transpose_equals_torch_functional(fields: dict, ndim: int, target: str) -> None:
    k, fields = _kernel(dict(fields), ndim)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 4)[:ndim + 2]).astype(np.float32)
    layer = (di.Conv1DTranspose if ndim == 1 else di.Conv2DTranspose)(9, k, **fields)
    model = di.compile(di.LazyModel([layer]), target)
    model.apply_init(x)
    w = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in model.export_weights().items()}
    model.load_weights(w)
    y = model(x)
    y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
    fn = F.conv_transpose1d if ndim == 1 else F.conv_transpose2d
    want = fn(torch.from_numpy(x), torch.from_numpy(w["0.weight"]), torch.from_numpy(w["0.bias"]),
              stride=fields.get("stride", 1), padding=fields.get("padding", 0),
              output_padding=fields.get("output_padding", 0), groups=fields.get("groups", 1),
              dilation=fields.get("dilation", 1)).numpy()
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_conv_transpose_native_module_and_names() -> None:
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 5)).astype(np.float32)
    spec = di.LazyModel([di.Conv2DTranspose(6, 3, stride=2, padding=1, output_padding=1, name="up")])
    model = di.compile(spec, "torch")
    model.apply_init(x, key=3)
    w = model.export_weights()
    assert set(w) == {"up.weight", "up.bias"} and w["up.weight"].shape == (4, 6, 3, 3)
    ref = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
    ref.load_state_dict({"weight": torch.from_numpy(w["up.weight"]), "bias": torch.from_numpy(w["up.bias"])})
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x).detach()), want, rtol=1e-6, atol=1e-6)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.native.modules())  # torch's own module


def test_conv_transpose_torch_init_function_reaches_the_kernel() -> None:
    x = np.ones((1, 2, 3, 3), np.float32)
    model = di.compile(di.LazyModel([di.Conv2DTranspose(3, 2)]), "torch")
    model.apply_init(x, init=functools.partial(nn.init.constant_, val=0.25))  # a torch.nn.init function: kernels
    w = model.export_weights()
    np.testing.assert_array_equal(w["0.weight"], np.full((2, 3, 2, 2), 0.25, np.float32))
    assert not np.all(w["0.bias"] == 0.25)


@pytest.mark.parametrize("scale", [2, (3, 2), (1, 4)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("target", ["torch", "numpy"])
def test_upsample_equals_torch_interpolate(scale, mode: str, target: str) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32)
    model = di.compile(di.LazyModel([di.Upsample2D(scale, mode=mode)]), target)
    model.apply_init(x)
    y = model(x)
    y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
    sf = (float(scale), float(scale)) if isinstance(scale, int) else tuple(float(s) for s in scale)
    want = F.interpolate(torch.from_numpy(x), scale_factor=sf, mode=mode,
                         align_corners=False if mode == "bilinear" else None).numpy()
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
