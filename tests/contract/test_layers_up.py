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


# (fields, refused on: {backend: what the message names})
GEOMETRIES = [
    (dict(), {}),
    (dict(stride=2), {}),
    (dict(stride=2, padding=1, output_padding=1), {}),
    (dict(stride=3, padding=2, output_padding=2), {}),
    (dict(stride=2, padding=0, output_padding=1, use_bias=False), {}),
    (dict(stride=(2, 1), padding=(1, 0), kernel_size=(3, 2)), {}),
    (dict(dilation=2, padding=1), {}),
    (dict(stride=1, padding=2, dilation=3, output_padding=2), {"mxnet": "output_padding smaller than stride"}),
    (dict(stride=3, padding=2, output_padding=2, dilation=2), {"tensorflow": "stride 1 or dilation 1"}),
    (dict(stride=2, output_padding=1, padding=0, dilation=3), {"tensorflow": "stride 1 or dilation 1"}),
    (dict(groups=2, stride=2, in_channels=4), {}),
    (dict(groups=2), {}),  # MXNet: its Deconvolution cannot defer a grouped weight; the adapter infers it
    (dict(groups=2, stride=2, output_padding=1, use_bias=False), {}),
]


@pytest.mark.parametrize("fields, refused", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_conv_transpose_matches_the_reference(backend: str, fields: dict, refused: dict, ndim: int, fmt: str) -> None:
    fields = dict(fields)
    if ndim == 1 and isinstance(fields.get("kernel_size"), tuple):
        fields = {k: v[0] if isinstance(v, tuple) else v for k, v in fields.items()}
    kernel = fields.pop("kernel_size", 3)
    layer = (di.Conv1DTranspose if ndim == 1 else di.Conv2DTranspose)(6, kernel, activation="relu", name="up",
                                                                       **fields)
    x = _image(fmt, (2, 5, 3, 4), seed=4)
    if ndim == 1:
        x = x[:, :, 0] if fmt == "channels_first" else x[:, :, 0, :]
    spec = di.LazyModel([layer], data_format=fmt)
    if backend in refused:  # refused by name when its builder runs (compile or init), before the framework does
        with pytest.raises(di.UnsupportedLayerError, match=rf"layer 'up' \({type(layer).__name__}\) on backend "
                                                           rf"{backend}: expected {refused[backend]}"):
            di.compile(spec, backend).apply_init(x)
        return
    model = di.compile(spec, backend)
    report = model.apply_init(x, init="xavier_uniform", key=5)
    rules = di.infer_shapes(spec, x.shape)
    assert report.output_shape == rules.output_shape
    assert {n: p.shape for n, p in report.params.items()} == {n: p.shape for n, p in rules.params.items()}
    weights = model.export_weights()
    ref = di.compile(spec, "numpy")
    ref.apply_init(x, init="xavier_uniform", key=5)  # portable init: the same canonical weights everywhere
    for name, value in ref.export_weights().items():
        np.testing.assert_array_equal(weights[name], value)
    y = _np(model, model(x))
    np.testing.assert_allclose(y, np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    # canonical -> native -> canonical: other weights loaded come back exactly and change the output alike
    rng = np.random.default_rng(9)
    other = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in weights.items()}
    model.load_weights(other)
    ref.load_weights(other)
    for name, value in model.export_weights().items():
        np.testing.assert_array_equal(value, other[name])
    np.testing.assert_allclose(_np(model, model(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("scale", [2, (3, 2), 1, (1, 4)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_upsample_matches_the_reference(backend: str, scale, mode: str, fmt: str) -> None:  # type: ignore[no-untyped-def]
    x = _image(fmt, (2, 5, 4, 3), seed=6)
    spec = di.LazyModel([di.Upsample2D(scale, mode=mode)], data_format=fmt)
    model = di.compile(spec, backend)
    report = model.apply_init(x)
    assert report.output_shape == di.infer_shapes(spec, x.shape).output_shape
    assert report.params == {}
    ref = di.compile(spec, "numpy")
    ref.apply_init(x)
    np.testing.assert_allclose(_np(model, model(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_nan_stays_where_its_taps_reach(backend: str, mode: str) -> None:
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    spec = di.LazyModel([di.Upsample2D(2, mode=mode)])
    model = di.compile(spec, backend)
    model.apply_init(x)
    y = _np(model, model(x))
    ref = di.compile(spec, "numpy")
    ref.apply_init(x)
    want = np.asarray(ref(x))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    assert np.isnan(want).sum() == (4 if mode == "nearest" else 16)  # 2x2 copies; 4x4 outputs interpolate it
