"""``spec_key.content_key``: equal exactly for specs that describe the same model (the key the rules' results are shared
under between separately built specs; see tests/contract/test_infer_cache.py)."""

from __future__ import annotations

import deferinit as di
from deferinit.spec_key import content_key


def test_equal_specs_built_apart_have_one_key() -> None:
    def make() -> di.LazyModel:
        return di.LazyModel([di.Conv2D(6, 5, padding=2, activation="sigmoid"), di.AvgPool2D(2, stride=2),
                             di.Sequential([di.Flatten(), di.Dense(10)], name="head")], name="lenet")

    a, b = make(), make()
    assert a is not b and content_key(a) == content_key(b) and hash(content_key(a)) == hash(content_key(b))


def test_what_differs_changes_the_key() -> None:
    base = content_key(di.LazyModel([di.Dense(3), di.Dropout(0.5)]))
    for other in (di.LazyModel([di.Dense(4), di.Dropout(0.5)]),
                  di.LazyModel([di.Dense(3), di.Dropout(0.25)]),
                  di.LazyModel([di.Dense(3, name="fc"), di.Dropout(0.5)]),
                  di.LazyModel([di.Dense(3), di.Dropout(0.5)], name="m"),
                  di.LazyModel([di.Dense(3), di.Dropout(0.5)], data_format="channels_last"),
                  di.LazyModel([di.Dense(3), di.Dropout(0.5), di.Dense(3)]),
                  di.LazyModel([di.Sequential([di.Dense(3)]), di.Dropout(0.5)])):
        assert content_key(other) != base


def test_types_and_float_signs_are_part_of_the_key() -> None:
    assert content_key(di.Dropout(0.0)) != content_key(di.Dropout(0))  # 0 == 0.0 in Python, not as a field
    assert content_key(di.LeakyReLU(0.0)) != content_key(di.LeakyReLU(-0.0))  # repr keeps the sign


def test_ties_are_part_of_the_key() -> None:
    d = di.Dense(3)
    assert content_key(di.LazyModel([d, d])) != content_key(di.LazyModel([d, di.Dense(3)]))
    e = di.Dense(3)
    assert content_key(di.LazyModel([d, d])) == content_key(di.LazyModel([e, e]))


def test_graph_specs_have_no_key() -> None:
    """Their symbolic tensors compare by value, which does not see which layer object each call used: no sharing."""
    x = di.Input()
    g = di.LazyModel(inputs=x, outputs=di.Dense(2)(x))
    assert content_key(g) is None
