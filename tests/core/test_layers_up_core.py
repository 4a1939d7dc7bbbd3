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
