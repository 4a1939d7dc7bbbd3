"""Honest reports on tensorflow: every layer's output shape in the report is the one Keras computed.

The shapes are observed in the dry run ``apply_init`` does anyway (eager first call), or in Keras's symbolic
shape inference on the abstract path, and compared with the reference rules (``di.infer_shapes``). A wrong
observed shape (monkeypatched) must be a BackendError naming the layer. Collected only with
``--backend tensorflow``.
"""

from __future__ import annotations

from typing import Any

import pytest

import deferinit as di
from cases import BY_ID, CASES
from deferinit import zoo
from deferinit.adapters.tensorflow import containers


def _reference(spec_fn: Any, shape: tuple, dtype: str) -> di.ShapeReport:
    return di.infer_shapes(spec_fn(), shape, dtype=dtype)


@pytest.mark.parametrize("abstract", [False, True], ids=["dry_run", "abstract"])
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_contract_case_layer_shapes_are_native(case_id: str, abstract: bool) -> None:
    case = BY_ID[case_id]
    x = case.data()
    model = di.compile(case.make(), "tensorflow")
    report = model.apply_init(di.ShapeDtype(x.shape, str(x.dtype)) if abstract else x, abstract=abstract)
    assert report.layers and all(info.source == "native" for info in report.layers.values())
    assert report.diff(_reference(case.make, x.shape, str(x.dtype))) == []
    if not abstract:  # the report's output shape is what the model computes
        assert report.output_shape == tuple(model(x).shape)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_layer_shapes_are_native_abstract(name: str) -> None:
    # the concrete dry run of every zoo model is checked in test_zoo_tensorflow.py
    shape = zoo.BOOK_INPUTS[name]
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    report = di.compile(zoo.MODELS[name](), "tensorflow").apply_init(di.ShapeDtype(shape, dtype), abstract=True)
    assert all(info.source == "native" for info in report.layers.values())
    assert report.diff(_reference(zoo.MODELS[name], shape, dtype)) == []


@pytest.mark.parametrize("abstract", [False, True], ids=["dry_run", "abstract"])
@pytest.mark.parametrize(("case_id", "path"), [("mlp", "1"), ("residual", None), ("concat", None), ("tied", None)])
def test_a_wrong_native_shape_is_a_backend_error_naming_the_layer(case_id: str, path: str | None, abstract: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = BY_ID[case_id]
    reference = di.infer_shapes(case.make(), case.shape)
    path = path or list(reference.layers)[-2]  # a position inside (or of) a container, not the last
    real = containers.note

    def wrong(where: str, shape: tuple) -> None:
        real(where, shape[:-1] + (shape[-1] + 1,) if where == path else shape)

    monkeypatch.setattr(containers, "note", wrong)
    model = di.compile(case.make(), "tensorflow")
    x = case.data()
    with pytest.raises(di.BackendError, match=rf"at layer '{path}' \({reference.layers[path].type}\) where the "
                                              rf"reference rules give"):
        model.apply_init(di.ShapeDtype(x.shape, str(x.dtype)) if abstract else x, abstract=abstract)
    assert not model.initialized  # nothing was swapped in


def test_a_layer_the_dry_run_did_not_reach_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = containers.note
    monkeypatch.setattr(containers, "note", lambda where, shape: None if where == "0" else real(where, shape))
    with pytest.raises(di.BackendError, match=r"gave no output shape for layer '0' \(Dense\)"):
        di.compile(BY_ID["mlp"].make(), "tensorflow").apply_init(BY_ID["mlp"].data())
