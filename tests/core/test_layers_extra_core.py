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
