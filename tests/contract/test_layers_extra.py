"""deferinit.layers_extra and the new options on every selected backend, against the reference kernels (each
checked against hand-derived numbers in tests/core/test_layers_extra_core.py and against torch's own modules in
tests/backends/torch/test_extra_torch.py), over more geometries than the shared cases."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di


def run(backend: str, layers: list, x: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def,type-arg]
    """The backend's output and the reference's, with the backend's own initial weights."""
    model = di.compile(di.LazyModel(layers, **kw), backend)
    model.apply_init(x)
    weights = model.export_weights()
    y = model(x)
    y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
    ref = di.compile(di.LazyModel(layers, **kw), "numpy")
    ref.load_weights(weights, input_shape=x.shape)
    return y, np.asarray(ref(x))


POOLS = [(7, 2, 2, 1), (8, 3, 3, 1), (9, 3, 2, 1), (6, 2, 3, 0), (10, 4, 3, 2)]


@pytest.mark.parametrize("size, k, s, p", POOLS)
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_pools_match_the_reference(backend: str, size: int, k: int, s: int, p: int, fmt: str) -> None:
    x = np.random.default_rng(size).standard_normal((2, size, size + 1, 3)).astype(np.float32)
    if fmt == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for layer in (di.MaxPool2D(k, stride=s, padding=p, ceil_mode=True),
                  di.AvgPool2D(k, stride=s, padding=p, ceil_mode=True),
                  di.AvgPool2D(k, stride=s, padding=p, ceil_mode=True, count_include_pad=False),
                  di.AvgPool2D(k, stride=s, padding=p, count_include_pad=False)):
        y, want = run(backend, [layer], x, data_format=fmt)
        assert y.shape == want.shape, layer
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=repr(layer))


@pytest.mark.parametrize("out", [1, (3, 4), (5, 2), (7, 10), (9, 12)])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_adaptive_avg_pool_matches_the_reference(backend: str, out, fmt: str) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).standard_normal((2, 7, 10, 3)).astype(np.float32)
    if fmt == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    y, want = run(backend, [di.AdaptiveAvgPool2D(out)], x, data_format=fmt)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_group_norm_groups_not_dividing_channels_is_refused_before_the_framework(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Conv2D(6, 1), di.GroupNorm(4, name="gn")]), backend)
    with pytest.raises(di.ShapeMismatchError) as info:
        model.apply_init(np.zeros((2, 3, 5, 5), np.float32))
    assert "'gn'" in str(info.value) and "num_groups=4" in str(info.value)
    with pytest.raises(di.NotInitializedError):
        model.report  # nothing half-initialized


@pytest.mark.parametrize("init", [None, "xavier_uniform", "normal"])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
def test_layer_scale_starts_at_init_value_whatever_the_initializer(backend: str, init, fmt: str) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(6).standard_normal((2, 5, 4, 3)).astype(np.float32)
    if fmt == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    model = di.compile(di.LazyModel([di.Conv2D(6, 1), di.LayerScale(0.125), di.LayerScale()], data_format=fmt),
                       backend)
    model.apply_init(x, init=init, key=1)
    weights = model.export_weights()
    np.testing.assert_array_equal(weights["1.weight"], np.full(6, 0.125, np.float32))
    np.testing.assert_array_equal(weights["2.weight"], np.full(6, 1e-6, np.float32))
    assert model.report.params["1.weight"].trainable
    y = model(x)
    y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y)
    ref = di.compile(di.LazyModel([di.Conv2D(6, 1)], data_format=fmt), "numpy")
    ref.load_weights({k: v for k, v in weights.items() if k.startswith("0.")}, input_shape=x.shape)
    np.testing.assert_allclose(y, np.asarray(ref(x)) * np.float32(0.125 * 1e-6), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 3, 2, 2), (64, 5), (64, 4, 3)])
def test_drop_path_drops_whole_samples_in_training_only(backend: str, shape: tuple) -> None:
    x = (np.random.default_rng(7).random(shape) + 0.5).astype(np.float32)  # no zeros of its own
    model = di.compile(di.LazyModel([di.DropPath(0.25)]), backend)
    model.apply_init(x, key=3)
    y = model(x)
    np.testing.assert_array_equal(np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y), x)
    y = model(x, training=True)
    y = np.asarray(model.to_numpy(y) if hasattr(model, "to_numpy") else y).reshape(shape[0], -1)
    flat = x.reshape(shape[0], -1)
    dropped = np.all(y == 0, axis=1)
    kept = np.all(np.isclose(y, flat / 0.75, rtol=1e-6), axis=1)
    assert np.all(dropped | kept)  # per sample: all of it dropped or all of it kept and scaled
    assert 4 <= dropped.sum() <= 32  # 16 expected of 64 (binomial, p = 0.25: outside this with chance < 1e-4)
    assert model.report.params == {}


NAN_LAYERS = [di.ReLU6(), di.SiLU(), di.HardSwish(), di.HardSigmoid(), di.LeakyReLU(0.2), di.GELU(approximate="tanh"),
              di.MaxPool2D(3, stride=2, padding=1, ceil_mode=True), di.AvgPool2D(2, ceil_mode=True,
                                                                                count_include_pad=False),
              di.AdaptiveAvgPool2D(3), di.GroupNorm(2), di.LayerNorm(axis="channels"), di.LayerScale(0.5),
              di.DropPath(0.3)]


@pytest.mark.parametrize("layer", NAN_LAYERS, ids=[type(la).__name__ for la in NAN_LAYERS])
def test_nan_in_nan_out_where_the_reference_has_it(backend: str, layer: di.Layer) -> None:
    x = np.random.default_rng(8).standard_normal((2, 4, 7, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    y, want = run(backend, [layer], x)
    assert want.shape == y.shape and np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(want), rtol=1e-5, atol=1e-6)
