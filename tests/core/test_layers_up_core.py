"""The rules, reference kernels, serialization and error contract of GlobalAvgPool2D(keepdims=True) and the
layers of deferinit.layers_up, framework-free; expected numbers derived by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deferinit as di


@pytest.mark.parametrize("fmt, shape, want", [
    ("channels_first", (2, 3, 5, 4), (2, 3, 1, 1)), ("channels_last", (2, 5, 4, 3), (2, 1, 1, 3)),
    ("channels_first", (None, 3, None, 4), (None, 3, 1, 1)),
])
def test_gap_keepdims_shape_rule(fmt: str, shape: tuple, want: tuple) -> None:
    assert di.infer_shapes(di.LazyModel([di.GlobalAvgPool2D(keepdims=True)], data_format=fmt), shape).output_shape \
        == want
    flat = di.infer_shapes(di.LazyModel([di.GlobalAvgPool2D()], data_format=fmt), shape).output_shape
    assert flat == (want[0], 3)


def test_gap_keepdims_reference_by_hand() -> None:
    x = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)  # channel c of sample n: 12n + 6c + 0..5
    model = di.compile(di.LazyModel([di.GlobalAvgPool2D(keepdims=True)]), "numpy")
    model.apply_init(x)
    np.testing.assert_array_equal(model(x), np.array([[[[2.5]], [[8.5]]], [[[14.5]], [[20.5]]]], np.float32))


def test_gap_keepdims_round_trips_and_validates(tmp_path: Path) -> None:
    spec = di.LazyModel([di.GlobalAvgPool2D(keepdims=True), di.GlobalAvgPool2D()])
    data = spec.to_dict()
    assert data["layers"] == [{"type": "GlobalAvgPool2D", "keepdims": True}, {"type": "GlobalAvgPool2D"}]
    assert di.LazyModel.from_dict(data) == spec
    assert di.load_spec(di.save_spec(spec, tmp_path / "s.json")) == spec
    with pytest.raises(di.SpecError, match=r"GlobalAvgPool2D: keepdims must be True or False. Received: keepdims=1"):
        di.GlobalAvgPool2D(keepdims=1)
    with pytest.raises(TypeError):
        di.GlobalAvgPool2D(True)  # keyword-only


def test_readme_names_the_new_layers_and_options() -> None:
    from deferinit.layers_up import UP_LAYERS

    table = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for cls in UP_LAYERS:
        assert f"`{cls.__name__}" in table, cls.__name__
    assert "`keepdims=False`" in table


# ============================================================================ Conv1DTranspose / Conv2DTranspose
def _ref(layer: di.Layer, x: np.ndarray, weights: dict, fmt: str = "channels_first") -> np.ndarray:
    model = di.compile(di.LazyModel([layer], data_format=fmt), "numpy")
    model.load_weights(weights, input_shape=x.shape)
    return np.asarray(model(x))


def test_conv_transpose_1x1_input_stride_2_is_the_kernel_by_hand() -> None:
    # one pixel: the output is the pixel times the kernel, per output channel, plus the bias
    w = np.arange(2 * 3 * 3, dtype=np.float32).reshape(1, 2, 3, 3)
    b = np.array([0.5, -1.0], np.float32)
    x = np.array([[[[2.0]]]], np.float32)
    y = _ref(di.Conv2DTranspose(2, 3, stride=2), x, {"0.weight": w, "0.bias": b})
    np.testing.assert_array_equal(y, 2 * w[0][None] + b.reshape(1, 2, 1, 1))
    # padding 1 crops a ring; output_padding 1 adds a row and a column only the bias reaches... here inside
    y = _ref(di.Conv2DTranspose(2, 3, stride=2, padding=1, output_padding=1), x, {"0.weight": w, "0.bias": b})
    np.testing.assert_array_equal(y, 2 * w[0][None, :, 1:3, 1:3] + b.reshape(1, 2, 1, 1))


def test_conv_transpose_1d_overlap_and_dilation_by_hand() -> None:
    w = np.array([[[1.0, 2.0, 3.0]]], np.float32)
    x = np.array([[[1.0, 10.0]]], np.float32)
    y = _ref(di.Conv1DTranspose(1, 3, stride=2, use_bias=False), x, {"0.weight": w})
    np.testing.assert_array_equal(y, [[[1, 2, 3 + 10, 20, 30]]])  # pixel i lands at 2i + j
    y = _ref(di.Conv1DTranspose(1, 3, dilation=2, use_bias=False), x, {"0.weight": w})
    np.testing.assert_array_equal(y, [[[1, 10, 2, 20, 3, 30]]])  # at i + 2j
    y = _ref(di.Conv1DTranspose(1, 3, stride=2, padding=1, output_padding=1, use_bias=False), x, {"0.weight": w})
    np.testing.assert_array_equal(y, [[[2, 13, 20, 30]]])  # the first pixel cropped, the end kept


def test_conv_transpose_groups_by_hand() -> None:
    # groups=2: input channel 0 feeds output channel 0 only, input channel 1 output channel 1 only
    w = np.array([[[2.0]], [[3.0]]], np.float32)  # (in=2, out/groups=1, k=1)
    x = np.array([[[1.0, 2.0], [10.0, 20.0]]], np.float32)
    y = _ref(di.Conv1DTranspose(2, 1, groups=2, use_bias=False), x, {"0.weight": w})
    np.testing.assert_array_equal(y, [[[2, 4], [30, 60]]])


def test_conv_transpose_channels_last_is_the_transpose() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = {"0.weight": rng.standard_normal((3, 4, 3, 2)).astype(np.float32), "0.bias": np.ones(4, np.float32)}
    layer = di.Conv2DTranspose(4, (3, 2), stride=2, padding=1)
    np.testing.assert_allclose(_ref(layer, x.transpose(0, 2, 3, 1), w, "channels_last"),
                               _ref(layer, x, w).transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer, shape, out, weight", [
    (di.Conv2DTranspose(4, 3), (2, 3, 5, 6), (2, 4, 7, 8), (3, 4, 3, 3)),
    (di.Conv2DTranspose(4, 3, stride=2, padding=1, output_padding=1), (2, 3, 5, 6), (2, 4, 10, 12), (3, 4, 3, 3)),
    (di.Conv2DTranspose(6, (2, 3), stride=(2, 1), dilation=(1, 2), groups=3), (1, 3, 4, 4), (1, 6, 8, 8),
     (3, 2, 2, 3)),
    (di.Conv1DTranspose(5, 4, stride=3, padding=2, output_padding=2), (2, 2, 7), (2, 5, 20), (2, 5, 4)),  # 6*3 - 4 + 3 + 2 + 1
    (di.Conv2DTranspose(4, 3, stride=2), (2, None, 5, 5), None, None),
])
def test_conv_transpose_shape_rule(layer: di.Layer, shape: tuple, out: tuple | None, weight: tuple | None) -> None:
    if out is None:
        with pytest.raises(di.ShapeMismatchError, match=r"a known size for the input channels"):
            di.infer_shapes(di.LazyModel([layer]), shape)
        return
    report = di.infer_shapes(di.LazyModel([layer]), shape)
    assert report.output_shape == out
    assert report.params["0.weight"].shape == weight
    assert report.params["0.bias"].shape == (out[1],)
    cl = di.infer_shapes(di.LazyModel([layer], data_format="channels_last"), (shape[0],) + shape[2:] + (shape[1],))
    assert cl.output_shape == (out[0],) + out[2:] + (out[1],)


@pytest.mark.parametrize("make, message", [
    (lambda: di.Conv2DTranspose(4, 3, stride=2, output_padding=2),
     r"Conv2DTranspose: output_padding must be smaller than stride or dilation. Received: output_padding=\(2, 2\), "
     r"stride=\(2, 2\), dilation=\(1, 1\)"),
    (lambda: di.Conv1DTranspose(4, 3, output_padding=1), r"Conv1DTranspose: output_padding must be smaller"),
    (lambda: di.Conv2DTranspose(5, 3, groups=2), r"Conv2DTranspose: groups must divide channels. Received: "
                                                  r"channels=5, groups=2"),
    (lambda: di.Conv2DTranspose(4, 3, groups=2, in_channels=3), r"groups must divide in_channels"),
    (lambda: di.Conv2DTranspose(4, 3, padding="same"), r"Conv2DTranspose.*padding"),
    (lambda: di.Conv2DTranspose(4, 3, padding=-1), r"Conv2DTranspose.*padding"),
    (lambda: di.Conv2DTranspose(4, (3, 3, 3)), r"Conv2DTranspose.*kernel_size"),
    (lambda: di.Conv2DTranspose(0, 3), r"Conv2DTranspose.*channels"),
    (lambda: di.Conv2DTranspose(4, 3, use_bias=1), r"Conv2DTranspose: use_bias must be True or False"),
    (lambda: di.Conv2DTranspose(4, 3, activation="nope"), r"Conv2DTranspose.*activation"),
])
def test_conv_transpose_bad_fields_are_spec_errors(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(di.SpecError, match=message):
        make()


def test_conv_transpose_bad_inputs_name_the_layer() -> None:
    spec = di.LazyModel([di.Conv2D(3, 1), di.Conv2DTranspose(4, 3, groups=2, name="up")])
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'up' \(Conv2DTranspose\) expected input channels "
                                                     r"divisible by groups=2, received 3 channels"):
        di.infer_shapes(spec, (1, 3, 4, 4))
    spec = di.LazyModel([di.Conv2DTranspose(4, 3, in_channels=5, name="up")])
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'up' \(Conv2DTranspose\) expected in_channels=5 "
                                                     r"\(declared in the spec\), received 3"):
        di.infer_shapes(spec, (1, 3, 4, 4))
    spec = di.LazyModel([di.Conv2DTranspose(4, 1, padding=1, name="up")])
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'up' \(Conv2DTranspose\) expected a positive output "
                                                     r"size on axis 2 .*received in=1, giving -1"):
        di.infer_shapes(spec, (1, 3, 1, 1))
    with pytest.raises(di.ShapeMismatchError, match=r"rank-4 input"):
        di.infer_shapes(di.LazyModel([di.Conv2DTranspose(4, 3)]), (1, 3, 4))


def test_conv_transpose_round_trips(tmp_path: Path) -> None:
    spec = di.LazyModel([di.Conv2DTranspose(4, (3, 2), stride=2, padding=(1, 0), output_padding=(1, 0), dilation=1,
                                            groups=2, activation="relu", use_bias=False, in_channels=6, name="up"),
                         di.Conv1DTranspose(3, 4, stride=2), di.Conv2DTranspose(4, 3)])
    data = spec.to_dict()
    assert data["layers"][2] == {"type": "Conv2DTranspose", "channels": 4, "kernel_size": 3}
    assert data["layers"][0]["kernel_size"] == [3, 2] and data["layers"][0]["output_padding"] == [1, 0]
    assert di.LazyModel.from_dict(data) == spec
    for suffix in (".json", ".yaml", ".toml"):
        assert di.load_spec(di.save_spec(spec, tmp_path / f"s{suffix}")) == spec, suffix
    bad = {**data, "layers": [{"type": "Conv2DTranspose", "channels": 4, "kernel_size": 3, "output_padding": 3}]}
    with pytest.raises(di.SpecError, match=r"at '0'.*output_padding must be smaller"):
        di.LazyModel.from_dict(bad)


def test_conv_transpose_keyword_only() -> None:
    with pytest.raises(TypeError):
        di.Conv2DTranspose(4, 3, 2)  # type: ignore[misc]



# ============================================================================ Upsample2D
def test_upsample_by_hand() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    up = _ref(di.Upsample2D((1, 2), mode="bilinear"), x, {})
    # half-pixel centres along a row 0..3: output o samples (o + 0.5) / 2 - 0.5 = -0.25 (clamped: 0), 0.25, 0.75...
    np.testing.assert_allclose(up[0, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(up[0, 0, :, 0], [0, 4, 8], atol=1e-6)  # a factor of 1 keeps the column
    up = _ref(di.Upsample2D(2, mode="bilinear"), x, {})
    np.testing.assert_allclose(up[0, 0, :, 0], [0, 1, 3, 5, 7, 8], atol=1e-6)  # column 0, 4, 8 by 0.25 steps of 4
    near = _ref(di.Upsample2D((2, 1)), x, {})
    np.testing.assert_array_equal(near[0, 0], [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7],
                                               [8, 9, 10, 11], [8, 9, 10, 11]])
    x3 = np.array([[[[0.0, 3.0]]]], np.float32)  # factor 3: samples at -1/3 (0), 0, 1/3, 2/3, 1, 4/3 (1)
    np.testing.assert_allclose(_ref(di.Upsample2D((1, 3), mode="bilinear"), x3, {})[0, 0, 0], [0, 0, 1, 2, 3, 3],
                               atol=1e-6)


@pytest.mark.parametrize("fmt, shape, want", [
    ("channels_first", (2, 3, 5, 4), (2, 3, 10, 12)), ("channels_last", (2, 5, 4, 3), (2, 10, 12, 3)),
    ("channels_first", (None, 3, None, 4), (None, 3, None, 12)),
])
def test_upsample_shape_rule(fmt: str, shape: tuple, want: tuple) -> None:
    spec = di.LazyModel([di.Upsample2D((2, 3), mode="bilinear")], data_format=fmt)
    report = di.infer_shapes(spec, shape)
    assert report.output_shape == want and report.params == {}


def test_upsample_errors_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(di.SpecError, match=r"Upsample2D: mode must be one of 'nearest', 'bilinear'. Received: "
                                           r"mode='bicubic'"):
        di.Upsample2D(2, mode="bicubic")
    for bad in (0, 1.5, (2, 2, 2), "2"):
        with pytest.raises(di.SpecError, match=r"Upsample2D.*scale_factor"):
            di.Upsample2D(bad)
    with pytest.raises(TypeError):
        di.Upsample2D(2, "bilinear")  # type: ignore[misc]
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'u' \(Upsample2D\) expected a rank-4 input"):
        di.infer_shapes(di.LazyModel([di.Upsample2D(2, name="u")]), (2, 3, 4))
    spec = di.LazyModel([di.Upsample2D(2), di.Upsample2D((2, 3), mode="bilinear")])
    data = spec.to_dict()
    assert data["layers"] == [{"type": "Upsample2D", "scale_factor": 2},
                              {"type": "Upsample2D", "scale_factor": [2, 3], "mode": "bilinear"}]
    assert di.LazyModel.from_dict(data) == spec
    for suffix in (".json", ".yaml", ".toml"):
        assert di.load_spec(di.save_spec(spec, tmp_path / f"s{suffix}")) == spec, suffix
