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


def test_a_graph_called_twice_is_not_two_layers() -> None:
    """A traced graph keeps its layers once each and its calls as indices into them: a tie is in the key."""
    x, d = di.Input(), di.Dense(2)
    once = content_key(di.LazyModel(inputs=x, outputs=d(d(x))))
    y = di.Input()
    assert once is not None and once != content_key(di.LazyModel(inputs=y, outputs=di.Dense(2)(di.Dense(2)(y))))


def _graph(op: str = "add", act: str = "relu", second_dtype: str = "float32", tie: bool = False) -> di.LazyModel:
    a, b = di.Input(name="a"), di.Input(name="b", dtype=second_dtype)
    d = di.Dense(4, activation=act)
    x = d(a)
    y = d(b) if tie else di.Dense(4, activation=act)(b)
    return di.LazyModel(inputs=[a, b], outputs=di.add(x, y) if op == "add" else di.multiply(x, y))


def test_graph_specs_are_keyed_by_their_inputs_nodes_and_outputs() -> None:
    # a graph spec's structure is plain data (lists of dicts): equal graphs traced apart share a key...
    assert content_key(_graph()) is not None and content_key(_graph()) == content_key(_graph())
    # ...and each difference of the graph itself changes it: the op joining two branches, a layer, an input's
    # dtype, a layer called twice (one set of weights) instead of two layers
    base = content_key(_graph())
    for other in (_graph(op="multiply"), _graph(act="tanh"), _graph(second_dtype="int64"), _graph(tie=True)):
        assert content_key(other) != base
