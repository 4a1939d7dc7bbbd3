"""The one contract every backend keeps, run against each selected backend (``pytest --backend NAME``).

The truth here is independent of the adapter under test: the reference rules (``infer_shapes``), the
framework-free reference forward pass (``numpy`` backend, itself checked against hand-derived numbers in
``test_reference_ops.py``), and the portable initializers' canonical weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID, CASES

IDS = [c.id for c in CASES]


def to_numpy(model: di.CompiledModel, y) -> np.ndarray:  # type: ignore[no-untyped-def]
    return model.to_numpy(y) if hasattr(model, "to_numpy") else np.asarray(y)


def reference(case, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    ref = di.compile(case.make(), "numpy")
    ref.load_weights(weights, input_shape=case.shape)
    return ref(x)


def tolerance(case) -> dict:  # type: ignore[no-untyped-def]
    return {"atol": 2e-5, "rtol": 2e-4}


@pytest.mark.parametrize("case_id", IDS)
def test_report_matches_reference_rules(backend: str, case_id: str) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), backend)
    with pytest.raises(di.NotInitializedError):
        model.report
    with pytest.raises(di.NotInitializedError):
        model(case.data())
    report = model.apply_init(case.data())
    expected = di.infer_shapes(case.make(), case.shape, dtype=case.dtype)
    assert report.backend == backend
    assert report.diff(expected) == []
    assert model.report is report
    assert all(p.native_name for p in report.params.values())
    # the report survives serialization exactly, as reports from other virtualenvs must
    assert di.ShapeReport.from_json(report.to_json()).to_dict() == report.to_dict()


@pytest.mark.parametrize("case_id", IDS)
def test_forward_matches_reference_with_same_weights(backend: str, case_id: str) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), backend)
    model.apply_init(case.data(), init="xavier_uniform", key=3)
    weights = model.export_weights()
    x = case.data(seed=7, batch=3)  # another batch size than at init
    y = to_numpy(model, model(x))
    want = reference(case, weights, x)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, **tolerance(case))


@pytest.mark.parametrize("case_id", IDS)
def test_portable_init_is_bit_identical_to_reference(backend: str, case_id: str) -> None:
    case = BY_ID[case_id]
    model = di.compile(case.make(), backend)
    model.apply_init(case.data(), init="kaiming_normal", key=11)
    ref = di.compile(case.make(), "numpy")
    ref.apply_init(case.data(), init="kaiming_normal", key=11)
    got, want = model.export_weights(), ref.export_weights()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("case_id", ["mlp", "lenet", "residual"])
def test_load_weights_round_trip_and_forward(backend: str, case_id: str) -> None:
    case = BY_ID[case_id]
    rng = np.random.default_rng(5)
    shapes = di.infer_shapes(case.make(), case.shape)
    weights = {n: rng.standard_normal(p.shape).astype(np.float32) * 0.1 for n, p in shapes.params.items()}
    for n in weights:
        if n.endswith("running_var"):
            weights[n] = np.abs(weights[n]) + 0.5
    model = di.compile(case.make(), backend)
    model.load_weights(weights, input_shape=case.shape)  # uninitialized: shapes from weights + spec
    for n, w in model.export_weights().items():
        np.testing.assert_array_equal(w, weights[n], err_msg=n)
    x = case.data(seed=2)
    np.testing.assert_allclose(to_numpy(model, model(x)), reference(case, weights, x), **tolerance(case))


def test_wrong_feature_dim_names_the_layer(backend: str) -> None:
    model = di.compile(BY_ID["mlp"].make(), backend)
    model.apply_init(np.zeros((2, 20), np.float32))
    match = r"layer '0' \(Dense\) expected 20 input features.*'0.weight' is \(16, 20\).*received 30"
    with pytest.raises(di.ShapeMismatchError, match=match):
        model(np.zeros((2, 30), np.float32))
    assert to_numpy(model, model(np.zeros((5, 20), np.float32))).shape == (5, 4)


def test_wrong_channel_dim_names_the_layer(backend: str) -> None:
    model = di.compile(BY_ID["lenet"].make(), backend)
    model.apply_init(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(Conv2D\)"):
        model(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(di.ShapeMismatchError, match=r"layer '5' \(Dense\)"):
        model(np.zeros((1, 1, 32, 32), np.float32))  # the conv stack accepts it; the Dense after Flatten does not


def test_other_spatial_sizes_before_a_global_pool(backend: str) -> None:
    case = BY_ID["residual"]
    model = di.compile(case.make(), backend)
    model.apply_init(case.data())
    for size in (8, 16, 20):
        assert to_numpy(model, model(np.zeros((1, 3, size, size), np.float32))).shape == (1, 3)


def test_declared_dims_are_checked(backend: str) -> None:
    spec = di.LazyModel([di.Dense(8, in_features=20), di.Dense(2)])
    model = di.compile(spec, backend)
    with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(Dense\) expected in_features=20.*received 30"):
        model.apply_init(np.zeros((2, 30), np.float32))
    assert not model.initialized
    with pytest.raises(di.NotInitializedError):
        model.report
    assert model.apply_init(np.zeros((2, 20), np.float32)).params["0.weight"].shape == (8, 20)


def test_failed_apply_init_keeps_the_previous_state(backend: str) -> None:
    model = di.compile(BY_ID["mlp"].make(), backend)
    model.apply_init(np.zeros((2, 20), np.float32), init="normal", key=1)
    before = model.export_weights()
    with pytest.raises(di.ShapeMismatchError):
        model.apply_init(np.zeros((2, 20, 3, 3, 3), np.float32)[..., 0, 0, 0][:, :, None][..., 0][:0], init="ones")
    with pytest.raises(di.DeferInitError):
        model.apply_init(np.zeros((2, 20), np.float32), init="no-such-init")
    after = model.export_weights()
    assert list(after) == list(before)
    for n in before:
        np.testing.assert_array_equal(after[n], before[n])
    assert model.report.input_shape == (2, 20)


def test_tied_layer_shares_parameters(backend: str) -> None:
    case = BY_ID["tied"]
    model = di.compile(case.make(), backend)
    report = model.apply_init(case.data(), init="xavier_normal", key=0)
    assert list(report.params) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert report.layers["2"].tied_to == "1"
    weights = model.export_weights()
    weights["1.weight"] = weights["1.weight"] * 2.0  # changes both uses of the shared layer
    model.load_weights(weights)
    x = case.data(seed=3)
    np.testing.assert_allclose(to_numpy(model, model(x)), reference(case, weights, x), **tolerance(case))


def test_same_report_for_same_spec_and_seed(backend: str) -> None:
    case = BY_ID["concat"]
    a = di.compile(case.make(), backend).apply_init(case.data(), init="xavier_uniform", key=0)
    b = di.compile(case.make(), "numpy").apply_init(case.data(), init="xavier_uniform", key=0)
    assert a.diff(b) == []
    assert a.total_params == b.total_params == di.infer_shapes(case.make(), case.shape).total_params


def test_native_object_is_exposed(backend: str) -> None:
    model = di.compile(BY_ID["mlp"].make(), backend)
    model.apply_init(np.zeros((2, 20), np.float32))
    assert model.native is not None

