"""PositionEmbedding(max_len=): the rule (a (1, max_len, D) table, T <= max_len), its errors, spec files, and the
reference's numbers against NumPy written out here."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di


def test_table_is_max_len_long_whatever_the_steps() -> None:
    spec = di.LazyModel([di.PositionEmbedding(max_len=10)])
    for t in (1, 7, 10):
        r = di.infer_shapes(spec, (2, t, 4))
        assert r.params["0.weight"].shape == (1, 10, 4) and r.output_shape == (2, t, 4)
    assert di.infer_shapes(di.LazyModel([di.PositionEmbedding()]), (2, 7, 4)).params["0.weight"].shape == (1, 7, 4)


def test_too_many_steps_and_bad_max_len_are_named() -> None:
    with pytest.raises(di.ShapeMismatchError, match=r"layer 'pos' \(PositionEmbedding\) expected at most max_len=10 "
                                                     r"steps.*11 steps"):
        di.infer_shapes(di.LazyModel([di.PositionEmbedding(max_len=10, name="pos")]), (2, 11, 4))
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises(di.SpecError, match="PositionEmbedding: max_len"):
            di.PositionEmbedding(max_len=bad)


def test_round_trip_and_reference_adds_the_first_rows(tmp_path) -> None:
    spec = di.LazyModel([di.PositionEmbedding(max_len=6)])
    path = tmp_path / "p.json"
    di.save_spec(spec, path)
    assert di.load_spec(path) == spec and di.load_spec(path).layers[0].max_len == 6
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    model = di.compile(spec, "numpy")
    model.apply_init(x, key=0)
    table = np.arange(18, dtype=np.float32).reshape(1, 6, 3)
    model.load_weights({"0.weight": table})
    np.testing.assert_array_equal(np.asarray(model(x)), x + table[:, :4])
    with pytest.raises(di.ShapeMismatchError, match="max_len=6"):
        model(np.zeros((2, 7, 3), np.float32))
