"""The reference shape rules against numbers derived by hand (never computed by the code under test)."""

from __future__ import annotations

import pytest

import deferinit as di


def shapes(spec: di.LazyModel, shape: tuple) -> tuple[tuple, dict[str, tuple]]:
    r = di.infer_shapes(spec, shape)
    return r.output_shape, {n: p.shape for n, p in r.params.items()}


def test_seed_mlp() -> None:
    out, params = shapes(di.LazyModel([di.Dense(256, activation="relu"), di.Dense(10)]), (2, 20))
    assert out == (2, 10)
    assert params == {"0.weight": (256, 20), "0.bias": (256,), "1.weight": (10, 256), "1.bias": (10,)}
    # 20*256 + 256 + 256*10 + 10
    assert di.infer_shapes(di.LazyModel([di.Dense(256), di.Dense(10)]), (2, 20)).total_params == 7946


def test_dense_acts_on_last_axis_and_no_bias() -> None:
    out, params = shapes(di.LazyModel([di.Dense(3, use_bias=False)]), (4, 5, 7))
    assert out == (4, 5, 3) and params == {"0.weight": (3, 7)}


@pytest.mark.parametrize("size,k,s,p,d,want", [
    (28, 5, 1, 2, 1, 28),   # LeNet conv1: (28 + 4 - 5)/1 + 1
    (28, 5, 1, 0, 1, 24),   # 28 - 5 + 1
    (224, 11, 4, 1, 1, 54),  # AlexNet conv1 in d2l: floor((224 + 2 - 11)/4) + 1 = 53 + 1
    (17, 3, 2, 1, 1, 9),    # floor((17 + 2 - 3)/2) + 1 = 8 + 1
    (15, 5, 1, 2, 2, 11),   # dilated kernel spans 2*(5-1)+1 = 9: 15 + 4 - 9 + 1
    (10, 3, 3, 0, 1, 3),    # floor(7/3) + 1
])
def test_conv2d_arithmetic(size: int, k: int, s: int, p: int, d: int, want: int) -> None:
    out, params = shapes(di.LazyModel([di.Conv2D(8, k, stride=s, padding=p, dilation=d)]), (1, 3, size, size))
    assert out == (1, 8, want, want)
    assert params == {"0.weight": (8, 3, k, k), "0.bias": (8,)}


def test_conv2d_rectangular_groups_and_channels_last() -> None:
    spec = di.LazyModel([di.Conv2D(6, (3, 5), stride=(2, 1), padding=(1, 2), groups=3)], data_format="channels_last")
    out, params = shapes(spec, (2, 9, 11, 12))
    # H: floor((9 + 2 - 3)/2) + 1 = 5; W: (11 + 4 - 5)/1 + 1 = 11; in/groups = 12/3 = 4
    assert out == (2, 5, 11, 6)
    assert params["0.weight"] == (6, 4, 3, 5)


@pytest.mark.parametrize("size,k,s,want", [(10, 3, 1, 10), (10, 3, 2, 5), (11, 3, 2, 6), (7, 5, 3, 3), (1, 3, 2, 1)])
def test_same_padding_is_ceil_of_size_over_stride(size: int, k: int, s: int, want: int) -> None:
    out, _ = shapes(di.LazyModel([di.Conv2D(2, k, stride=s, padding="same")]), (1, 1, size, size))
    assert out == (1, 2, want, want)


def test_same_padding_splits_odd_total_after() -> None:
    # size 10, k 4, stride 1: total pad 3 -> 1 before, 2 after (TensorFlow's rule)
    assert di.Conv2D(1, 4, padding="same").pads((10, 10)) == ((1, 2), (1, 2))
    # size 11, k 3, stride 2: out 6, total = (6-1)*2 + 3 - 11 = 2 -> (1, 1)
    assert di.Conv2D(1, 3, stride=2, padding="same").pads((11, 11)) == ((1, 1), (1, 1))
    assert di.Conv2D(1, 3, padding="valid").pads((11, 11)) == ((0, 0), (0, 0))


def test_conv1d() -> None:
    out, params = shapes(di.LazyModel([di.Conv1D(4, 3, stride=2, padding=1, groups=2)]), (2, 6, 9))
    assert out == (2, 4, 5)  # floor((9 + 2 - 3)/2) + 1
    assert params["0.weight"] == (4, 3, 3)


@pytest.mark.parametrize("cls", [di.MaxPool2D, di.AvgPool2D])
def test_pool_floor_mode(cls: type) -> None:
    assert shapes(di.LazyModel([cls(2)]), (1, 3, 7, 7))[0] == (1, 3, 3, 3)  # floor(7/2), stride defaults to 2
    assert shapes(di.LazyModel([cls(3, stride=2, padding=1)]), (1, 3, 8, 8))[0] == (1, 3, 4, 4)  # (8+2-3)//2+1
    assert shapes(di.LazyModel([cls(3, stride=1, padding=1)]), (1, 3, 5, 6))[0] == (1, 3, 5, 6)
    assert shapes(di.LazyModel([cls((2, 3))], data_format="channels_last"), (1, 6, 9, 3))[0] == (1, 3, 3, 3)


def test_global_pool_batchnorm_layernorm_embedding() -> None:
    assert shapes(di.LazyModel([di.GlobalAvgPool2D()]), (2, 7, 5, 5)) == ((2, 7), {})
    assert shapes(di.LazyModel([di.GlobalAvgPool2D()], data_format="channels_last"), (2, 5, 5, 7))[0] == (2, 7)
    r = di.infer_shapes(di.LazyModel([di.BatchNorm()]), (4, 6, 3, 3))
    assert {n: (p.shape, p.trainable) for n, p in r.params.items()} == {
        "0.weight": ((6,), True), "0.bias": ((6,), True), "0.running_mean": ((6,), False),
        "0.running_var": ((6,), False)}
    assert (r.total_params, r.trainable_params) == (24, 12)
    assert shapes(di.LazyModel([di.BatchNorm()], data_format="channels_last"), (4, 3, 3, 6))[1]["0.weight"] == (6,)
    assert shapes(di.LazyModel([di.BatchNorm()]), (4, 6))[1]["0.weight"] == (6,)
    assert shapes(di.LazyModel([di.LayerNorm()]), (2, 3, 5)) == ((2, 3, 5), {"0.weight": (5,), "0.bias": (5,)})
    r = di.infer_shapes(di.LazyModel([di.Embedding(100, 16)]), (2, 7), dtype="int64")
    assert r.output_shape == (2, 7, 16) and r.params["0.weight"].shape == (100, 16)


def test_flatten_orders_and_shape_preserving_layers() -> None:
    spec = di.LazyModel([di.Flatten(), di.Dropout(0.3), di.Identity(), di.ReLU(), di.Softmax(), di.GELU(),
                         di.Activation("tanh"), di.Dense(4)])
    out, params = shapes(spec, (2, 3, 4, 5))
    assert out == (2, 4) and params["7.weight"] == (4, 60)


def test_combinators_paths_and_shapes() -> None:
    spec = di.LazyModel([
        di.Conv2D(4, 3, padding=1),
        di.Residual(di.Sequential([di.Conv2D(8, 3, stride=2, padding=1), di.BatchNorm()]),
                    shortcut=di.Sequential([di.Conv2D(8, 1, stride=2)]), activation="relu"),
        di.Concat([di.Conv2D(2, 1), di.Sequential([di.Conv2D(3, 1), di.Conv2D(5, 3, padding=1)])]),
    ])
    r = di.infer_shapes(spec, (1, 3, 8, 8))
    assert r.output_shape == (1, 7, 4, 4)  # 2 + 5 channels concatenated, 8 -> 4 by the stride-2 body
    assert r.layers["1"].output_shape == (1, 8, 4, 4)
    assert r.layers["1.body.0"].output_shape == (1, 8, 4, 4)
    assert r.layers["2.1.1"].output_shape == (1, 5, 4, 4)
    assert list(r.params) == [
        "0.weight", "0.bias", "1.body.0.weight", "1.body.0.bias", "1.body.1.weight", "1.body.1.bias",
        "1.body.1.running_mean", "1.body.1.running_var", "1.shortcut.0.weight", "1.shortcut.0.bias",
        "2.0.weight", "2.0.bias", "2.1.0.weight", "2.1.0.bias", "2.1.1.weight", "2.1.1.bias"]
    assert r.params["2.1.0.weight"].shape == (3, 8, 1, 1)
    assert r.params["1.shortcut.0.weight"].shape == (8, 4, 1, 1)


def test_single_layer_body_and_concat_channels_last() -> None:
    spec = di.LazyModel([di.Residual(di.Dense(5)), di.Concat([di.Dense(2), di.Dense(3)])])
    r = di.infer_shapes(spec, (2, 5))
    assert r.output_shape == (2, 5) and r.params["0.body.weight"].shape == (5, 5)
    assert r.params["1.1.weight"].shape == (3, 5)
    spec = di.LazyModel([di.Concat([di.Conv2D(2, 1), di.Conv2D(3, 1)])], data_format="channels_last")
    assert di.infer_shapes(spec, (1, 4, 4, 6)).output_shape == (1, 4, 4, 5)


def test_names_replace_their_path_segment() -> None:
    spec = di.LazyModel([di.Dense(4, name="stem"), di.Sequential([di.Dense(3, name="fc")], name="head")])
    assert list(di.infer_shapes(spec, (1, 2)).params) == ["stem.weight", "stem.bias", "head.fc.weight", "head.fc.bias"]


def test_tied_layer_reported_once_under_first_position() -> None:
    shared = di.Dense(6)
    r = di.infer_shapes(di.LazyModel([di.Dense(6), shared, di.ReLU(), shared]), (2, 3))
    assert list(r.params) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert r.layers["3"].tied_to == "1"
    assert r.total_params == 3 * 6 + 6 + 6 * 6 + 6
    with pytest.raises(di.ShapeMismatchError, match=r"layer '3' \(Dense\).*shared with an earlier use"):
        di.infer_shapes(di.LazyModel([di.Dense(6), shared, di.Dense(4), shared]), (2, 3))


def test_nested_lazy_model_is_a_block() -> None:
    inner = di.LazyModel([di.Dense(4), di.ReLU()])
    r = di.infer_shapes(di.LazyModel([inner, di.Dense(2)]), (3, 5))
    assert list(r.params) == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]


def test_varying_dims() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3, padding=1), di.MaxPool2D(2), di.GlobalAvgPool2D(), di.Dense(3)])
    r = di.infer_shapes(spec, (None, 3, None, None))
    assert r.output_shape == (None, 3)
    assert r.layers["1"].output_shape == (None, 4, None, None)
    assert r.params["3.weight"].shape == (3, 4)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(Dense\).*known size for the input features"):
        di.infer_shapes(di.LazyModel([di.Dense(3)]), (2, None))
    flat = di.LazyModel([di.Conv2D(4, 3), di.Flatten(), di.Dense(3)])
    with pytest.raises(di.ShapeMismatchError, match=r"layer '2' \(Dense\)"):
        di.infer_shapes(flat, (1, 3, None, 8))


@pytest.mark.parametrize("spec,shape,match", [
    (di.LazyModel([di.Conv2D(4, 5)]), (1, 3, 4, 4), r"layer '0' \(Conv2D\) expected spatial size >= 5"),
    (di.LazyModel([di.Conv2D(4, 3)]), (1, 3, 8), r"layer '0' \(Conv2D\) expected a rank-4 input"),
    (di.LazyModel([di.Conv2D(4, 3, in_channels=2)]), (1, 3, 8, 8), r"in_channels=2.*received 3"),
    (di.LazyModel([di.Conv2D(4, 3, groups=2)]), (1, 3, 8, 8), r"divisible by groups=2"),
    (di.LazyModel([di.MaxPool2D(3)]), (1, 3, 2, 2), r"layer '0' \(MaxPool2D\) expected spatial size >= 3"),
    (di.LazyModel([di.Residual(di.Dense(3))]), (2, 5), r"layer '0' \(Residual\) expected body and shortcut"),
    (di.LazyModel([di.Concat([di.Conv2D(2, 1), di.Conv2D(2, 3)])]), (1, 1, 5, 5), r"layer '0' \(Concat\)"),
    (di.LazyModel([di.Dense(3)]), (4,), r"layer '0' \(Dense\) expected an input of rank >= 2"),
    (di.LazyModel([di.Dense(3)]), (0, 4), r"empty batch"),
])
def test_shape_errors_name_the_layer(spec: di.LazyModel, shape: tuple, match: str) -> None:
    with pytest.raises(di.ShapeMismatchError, match=match):
        di.infer_shapes(spec, shape)


def test_dtype_errors() -> None:
    with pytest.raises(di.DTypeError, match=r"layer '0' \(Embedding\) expected integer indices"):
        di.infer_shapes(di.LazyModel([di.Embedding(5, 2)]), (2, 3), dtype="float32")  # the default is int64
    with pytest.raises(di.DTypeError, match=r"layer '0' \(Dense\) expected floating-point"):
        di.infer_shapes(di.LazyModel([di.Dense(2)]), (2, 3), dtype="int32")
    for bad in ("bool", "complex64"):
        with pytest.raises(di.DTypeError, match=bad):
            di.infer_shapes(di.LazyModel([di.Dense(2)]), (2, 3), dtype=bad)
