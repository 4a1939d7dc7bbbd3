"""The layers of deferinit.layers_extra and the new options (GELU's approximate, the pools' ceil_mode and
count_include_pad, LayerNorm's axis, return_sequences, negative Take) in the core: numbers derived by hand for the
reference kernels, the error contract, and the spec-file round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID


def run(layers: list, x: np.ndarray, weights: dict | None = None, training: bool = False, **kw) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
    model = di.compile(di.LazyModel(layers, **kw), "numpy")
    model.apply_init(x)
    if weights:
        model.load_weights({**model.export_weights(), **weights})
    return np.asarray(model(x, training=training) if training else model(x))


X = np.array([[-7.0, -3.0, -1.0, 0.0, 1.0, 3.0, 7.0]], np.float32)


@pytest.mark.parametrize("layer, expected", [
    (di.ReLU6(), [0, 0, 0, 0, 1, 3, 6]),
    (di.Activation("relu6"), [0, 0, 0, 0, 1, 3, 6]),
    (di.HardSigmoid(), [0, 0, 2 / 6, 0.5, 4 / 6, 1, 1]),
    (di.HardSwish(), [0, 0, -2 / 6, 0, 4 / 6, 3, 7]),
    (di.LeakyReLU(), [-0.07, -0.03, -0.01, 0, 1, 3, 7]),
    (di.LeakyReLU(0.2), [-1.4, -0.6, -0.2, 0, 1, 3, 7]),
    (di.Activation("leaky_relu"), [-0.07, -0.03, -0.01, 0, 1, 3, 7]),
    (di.SiLU(), [v / (1 + math.exp(-v)) for v in X[0]]),
    (di.GELU(approximate="tanh"),
     [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in X[0]]),
    (di.Activation("gelu_tanh"),
     [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in X[0]]),
    (di.GELU(), [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in X[0]]),
])
def test_activations_by_hand(layer: di.Layer, expected: list) -> None:  # type: ignore[type-arg]
    np.testing.assert_allclose(run([layer], X)[0], expected, rtol=1e-6, atol=1e-7)


def test_gelu_tanh_differs_from_the_erf_form() -> None:
    x = np.array([[1.5]], np.float32)
    assert abs(run([di.GELU(approximate="tanh")], x)[0, 0] - run([di.GELU()], x)[0, 0]) > 1e-5


@pytest.mark.parametrize("make, words", [
    (lambda: di.Activation("relu7"), ["Activation", "relu6", "relu7"]),
    (lambda: di.Dense(3, activation="hardswish"), ["Dense", "hard_swish"]),
    (lambda: di.GELU(approximate="erf"), ["GELU", "approximate", "'erf'"]),
    (lambda: di.LeakyReLU("0.1"), ["LeakyReLU", "negative_slope"]),
    (lambda: di.LeakyReLU(float("nan")), ["LeakyReLU", "negative_slope"]),
])
def test_bad_fields_are_spec_errors(make, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(di.SpecError) as info:
        make()
    for w in words:
        assert w in str(info.value)


def test_keyword_only_after_the_first_argument() -> None:
    with pytest.raises(TypeError):
        di.GELU("tanh")  # type: ignore[misc]


@pytest.mark.parametrize("case_id", [c for c in BY_ID if c in (
    "activations_extra", "recurrent_last", "pools_extra", "groupnorm", "layernorm_axis", "layerscale_droppath")])
def test_cases_round_trip_through_spec_files(case_id: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = BY_ID[case_id].make()
    path = tmp_path / "spec.json"
    di.save_spec(spec, path)
    again = di.load_spec(path)
    assert again == spec and again.to_dict() == spec.to_dict()
    shape = BY_ID[case_id].shape
    dtype = BY_ID[case_id].dtype
    assert di.infer_shapes(again, shape, dtype=dtype).to_dict() == di.infer_shapes(spec, shape, dtype=dtype).to_dict()


def test_return_sequences_false_is_the_last_step_per_direction_by_hand() -> None:
    # h_t = relu(x_t + h_{t-1}) forward (a running sum); the reverse direction forgets (W_hh = 0): its last step,
    # at t = 0, is relu(x_0)
    x = np.array([[[1.0], [2.0], [3.0]]], np.float32)
    one, zero = np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)
    w = {"0.weight_ih_l0": one, "0.weight_hh_l0": one, "0.weight_ih_l0_reverse": one,
         "0.weight_hh_l0_reverse": zero}
    w.update({f"0.bias_{k}_l0{s}": np.zeros(1, np.float32) for k in ("ih", "hh") for s in ("", "_reverse")})
    layer = di.RNN(1, activation="relu", bidirectional=True, return_sequences=False)
    np.testing.assert_array_equal(run([layer], x, w), [[6.0, 1.0]])
    seq = run([di.RNN(1, activation="relu", bidirectional=True)], x, w)
    np.testing.assert_array_equal(seq[0], [[1, 1], [3, 2], [6, 3]])
    assert di.infer_shapes(di.LazyModel([layer]), (None, None, 1)).output_shape == (None, 2)


def test_take_negative_indices() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    np.testing.assert_array_equal(run([di.Take(-1)], x), [[9, 10, 11]])
    np.testing.assert_array_equal(run([di.Take(-4)], x), [[0, 1, 2]])
    np.testing.assert_array_equal(run([di.Take(-1, axis=2)], x), [[2, 5, 8, 11]])


@pytest.mark.parametrize("index", [4, -5])
def test_take_out_of_range_names_the_layer(index: int) -> None:
    with pytest.raises(di.ShapeMismatchError) as info:
        di.infer_shapes(di.LazyModel([di.Take(index, name="pick")]), (2, 4, 3))
    assert "pick" in str(info.value) and "(2, 4, 3)" in str(info.value)


def test_return_sequences_must_be_a_bool() -> None:
    with pytest.raises(di.SpecError, match="return_sequences"):
        di.LSTM(4, return_sequences="no")


def test_pools_ceil_mode_and_count_include_pad_by_hand() -> None:
    row = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)
    # ceil mode: a second window [2, 5) hangs past the row: it averages 3 and 4, divided by 2 either way
    for include in (True, False):
        layer = di.AvgPool2D((1, 3), stride=(1, 2), ceil_mode=True, count_include_pad=include)
        np.testing.assert_array_equal(run([layer], row), [[[[2.0, 3.5]]]])
    np.testing.assert_array_equal(run([di.AvgPool2D((1, 3), stride=(1, 2))], row), [[[[2.0]]]])
    np.testing.assert_array_equal(run([di.MaxPool2D((1, 3), stride=(1, 2), ceil_mode=True)], row), [[[[3.0, 4.0]]]])
    # padding 1: the padded zero is counted (1 + 2 + 0) / 3, or not (1 + 2) / 2
    pad = dict(stride=(1, 2), padding=(0, 1))
    np.testing.assert_allclose(run([di.AvgPool2D((1, 3), **pad)], row), [[[[1.0, 3.0]]]])
    np.testing.assert_allclose(run([di.AvgPool2D((1, 3), count_include_pad=False, **pad)], row), [[[[1.5, 3.0]]]])
    # ceil mode with padding: a window that would start in the right padding is dropped (PyTorch's rule):
    # 3 + 2 - 2 = 3 -> ceil(3 / 2) + 1 = 3 windows, the third starting at 4 = 3 + 1: two remain
    ones = np.ones((1, 1, 3, 3), np.float32)
    y = run([di.AvgPool2D(2, stride=2, padding=1, ceil_mode=True)], ones)
    np.testing.assert_allclose(y, [[[[0.25, 0.5], [0.5, 1.0]]]])
    assert di.infer_shapes(di.LazyModel([di.MaxPool2D(2, stride=2, padding=1, ceil_mode=True)]),
                           (1, 1, 3, 3)).output_shape == (1, 1, 2, 2)


@pytest.mark.parametrize("make", [lambda: di.MaxPool2D(2, ceil_mode=1), lambda: di.AvgPool2D(2, count_include_pad="no")])
def test_pool_flags_must_be_bools(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(di.SpecError, match="Pool2D"):
        make()


def test_adaptive_avg_pool_bins_by_hand() -> None:
    # 5 -> 3 bins: [0, 2), [1, 4), [3, 5) (floor(i*5/3), ceil((i+1)*5/3))
    row = np.array([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]], np.float32)
    np.testing.assert_allclose(run([di.AdaptiveAvgPool2D((1, 3))], row), [[[[1.5, 3.0, 4.5]]]])
    # 2 -> 3 bins: [0, 1), [0, 2), [1, 2): bins overlap when the output is larger
    np.testing.assert_allclose(run([di.AdaptiveAvgPool2D((1, 3))], row[..., :2]), [[[[1.0, 1.5, 2.0]]]])
    assert di.infer_shapes(di.LazyModel([di.AdaptiveAvgPool2D(7)]), (None, 3, None, None)).output_shape == \
        (None, 3, 7, 7)


def test_adaptive_avg_pool_errors() -> None:
    with pytest.raises(di.SpecError, match="AdaptiveAvgPool2D.*output_size"):
        di.AdaptiveAvgPool2D(0)
    with pytest.raises(di.ShapeMismatchError, match="'gap'"):
        di.infer_shapes(di.LazyModel([di.AdaptiveAvgPool2D(2, name="gap")]), (2, 3, 8))


def test_group_norm_by_hand() -> None:
    x = np.array([[[[0.0, 2.0]], [[4.0, 6.0]]]], np.float32)  # (1, 2, 1, 2): channel 0 = [0, 2], channel 1 = [4, 6]
    w = {"0.weight": np.array([2.0, 3.0], np.float32), "0.bias": np.array([0.0, 1.0], np.float32)}
    eps = 1e-5
    per_channel = run([di.GroupNorm(2)], x, w)  # each channel alone: mean 1 / 5, variance 1
    z = np.array([-1.0, 1.0]) / np.sqrt(1 + eps)
    np.testing.assert_allclose(per_channel[0, :, 0], [2 * z, 3 * z + 1], rtol=1e-5)
    together = run([di.GroupNorm(1)], x, w)  # one group: mean 3, variance (9 + 1 + 1 + 9) / 4 = 5
    z = (np.array([0.0, 2.0, 4.0, 6.0]) - 3) / np.sqrt(5 + eps)
    np.testing.assert_allclose(together[0, :, 0].ravel(), [2 * z[0], 2 * z[1], 3 * z[2] + 1, 3 * z[3] + 1], rtol=1e-5)


def test_group_norm_errors() -> None:
    with pytest.raises(di.SpecError, match="GroupNorm.*num_groups"):
        di.GroupNorm(0)
    with pytest.raises(di.SpecError, match="GroupNorm.*eps"):
        di.GroupNorm(2, eps=0)
    with pytest.raises(TypeError):
        di.GroupNorm(2, 1e-3)  # type: ignore[misc]
    with pytest.raises(di.ShapeMismatchError) as info:
        di.infer_shapes(di.LazyModel([di.Conv2D(6, 1), di.GroupNorm(4, name="gn")]), (2, 3, 5, 5))
    assert "'gn'" in str(info.value) and "num_groups=4" in str(info.value) and "6 channels" in str(info.value)


def test_layer_norm_over_the_channel_axis_by_hand() -> None:
    x = np.array([[[[0.0, 2.0]], [[4.0, 6.0]]]], np.float32)  # (1, 2, 1, 2): each pixel holds (0, 4) or (2, 6)
    s = np.sqrt(4 + 1e-5)  # per pixel: mean +2 off each value, variance 4
    want = np.array([[[[-2 / s, -2 / s]], [[2 / s, 2 / s]]]])
    np.testing.assert_allclose(run([di.LayerNorm(axis="channels")], x), want, rtol=1e-6)
    np.testing.assert_allclose(run([di.LayerNorm(axis=1)], x), want, rtol=1e-6)
    # channels_last: the same data, channels at the end
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(run([di.LayerNorm(axis="channels")], xl, data_format="channels_last"),
                               want.transpose(0, 2, 3, 1), rtol=1e-6)
    report = di.infer_shapes(di.LazyModel([di.LayerNorm(axis="channels")]), (2, 3, 4, 5))
    assert report.params["0.weight"].shape == (3,)


@pytest.mark.parametrize("axis", [0, 4, -5])
def test_layer_norm_axis_out_of_range_or_batch_names_the_layer(axis: int) -> None:
    with pytest.raises(di.ShapeMismatchError) as info:
        di.infer_shapes(di.LazyModel([di.LayerNorm(axis=axis, name="ln")]), (2, 3, 4, 5))
    assert "'ln'" in str(info.value) and f"axis={axis}" in str(info.value)


@pytest.mark.parametrize("axis", ["chan", 1.0, True, None])
def test_layer_norm_axis_must_be_an_int_or_channels(axis) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(di.SpecError, match="LayerNorm: axis"):
        di.LayerNorm(axis=axis)


def test_layer_scale_by_hand() -> None:
    x = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], np.float32)  # (1, 2, 1, 2)
    np.testing.assert_allclose(run([di.LayerScale(0.5)], x), x * 0.5)
    w = {"0.weight": np.array([2.0, -1.0], np.float32)}
    np.testing.assert_array_equal(run([di.LayerScale()], x, w), [[[[2.0, 4.0]], [[-3.0, -4.0]]]])
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(run([di.LayerScale()], xl, w, data_format="channels_last"),
                                  [[[[2.0, -3.0], [4.0, -4.0]]]])
    params = di.infer_shapes(di.LazyModel([di.LayerScale(0.1)]), (None, 7, 3, 3)).params
    assert params["0.weight"].shape == (7,)
    from deferinit.init import generate
    from deferinit.layers import ParamSpec
    from deferinit.layers_extra import fill_role

    spec = {"weight": ParamSpec((7,), role=fill_role(0.1))}
    np.testing.assert_array_equal(generate(spec, di.init.XavierUniform(), 0)["weight"], np.full(7, 0.1, np.float32))


def test_layer_scale_errors() -> None:
    with pytest.raises(di.SpecError, match="LayerScale.*init_value"):
        di.LayerScale("1e-6")
    with pytest.raises(di.ShapeMismatchError, match="'ls'"):
        di.infer_shapes(di.LazyModel([di.LayerScale(name="ls")]), (3,))


def test_drop_path_errors_and_fields() -> None:
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(di.SpecError, match="DropPath.*rate"):
            di.DropPath(bad)
    assert di.DropPath(0.1, name="dp").to_dict() == {"type": "DropPath", "rate": 0.1, "name": "dp"}


def test_readme_layer_table_names_the_new_layers_and_options() -> None:
    from pathlib import Path

    from deferinit.layers_extra import EXTRA_LAYERS

    table = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for cls in EXTRA_LAYERS:
        assert f"`{cls.__name__}" in table, cls.__name__
    for option in ("ceil_mode=False", "count_include_pad=True", "return_sequences=True", '"channels"',
                   '"gelu_tanh"', '"hard_swish"', '"hard_sigmoid"', '"relu6"', '"leaky_relu"', "Take(-1)"):
        assert option in table, option


def test_new_options_are_keyword_only() -> None:
    for make in (lambda: di.MaxPool2D(2, 2, 0, True), lambda: di.AvgPool2D(2, 2, 0, False, False),
                 lambda: di.LSTM(4, 1, False, True, 0.0, False), lambda: di.LayerNorm(1e-5, 1),
                 lambda: di.AdaptiveAvgPool2D(2, 2), lambda: di.LayerScale(1e-6, 1), lambda: di.DropPath(0.1, 1)):
        with pytest.raises(TypeError):
            make()
