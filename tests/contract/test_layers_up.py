"""GlobalAvgPool2D(keepdims=True), and the layers of deferinit.layers_up, on every selected backend against the
reference kernels (each checked against hand-derived numbers in tests/core/test_layers_up_core.py and against
torch's own functions in tests/backends/torch/test_up_torch.py). The shared cases (tests/cases.py, block
"layers-b") go through the parity check in test_layers_up_frameworks.py."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di


def _np(model, y) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)


def _image(fmt: str, shape_cl: tuple, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape_cl).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if fmt == "channels_first" else x


@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_global_avg_pool_keepdims_keeps_unit_spatial_dims(backend: str, fmt: str) -> None:
    x = _image(fmt, (2, 5, 4, 3))
    model = di.compile(di.LazyModel([di.GlobalAvgPool2D(keepdims=True)], data_format=fmt), backend)
    report = model.apply_init(x)
    axes = (2, 3) if fmt == "channels_first" else (1, 2)
    want = x.astype(np.float64).mean(axis=axes, keepdims=True)  # by hand, not through the reference kernel
    assert report.output_shape == want.shape == ((2, 3, 1, 1) if fmt == "channels_first" else (2, 1, 1, 3))
    np.testing.assert_allclose(_np(model, model(x)), want, rtol=1e-5, atol=1e-6)


def _squeeze_excite(fmt: str) -> di.LazyModel:
    x = di.Input(name="image")
    s = di.GlobalAvgPool2D(keepdims=True)(x)
    s = di.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = di.Conv2D(4, 1, activation="sigmoid", name="expand")(s)
    return di.LazyModel(inputs=x, outputs=di.multiply(x, s), data_format=fmt)


@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_squeeze_excite_with_keepdims_and_multiply(backend: str, fmt: str) -> None:
    x = _image(fmt, (2, 6, 5, 4), seed=1)
    model = di.compile(_squeeze_excite(fmt), backend)
    model.apply_init(x, key=2)
    w = model.export_weights()
    assert w["reduce.weight"].shape == (2, 4, 1, 1) and w["expand.weight"].shape == (4, 2, 1, 1)
    # by hand: the per-sample channel means, two 1x1 convs (matrix products), the gate broadcast over H, W
    cf = x if fmt == "channels_first" else x.transpose(0, 3, 1, 2)
    m = cf.astype(np.float64).mean(axis=(2, 3))
    h = np.maximum(m @ w["reduce.weight"][:, :, 0, 0].T + w["reduce.bias"], 0)
    g = 1 / (1 + np.exp(-(h @ w["expand.weight"][:, :, 0, 0].T + w["expand.bias"])))
    want = cf * g[:, :, None, None]
    if fmt == "channels_last":
        want = want.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(_np(model, model(x)), want, rtol=1e-5, atol=1e-6)
