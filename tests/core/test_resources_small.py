"""resources.small: the cheap bound that lets apply_init skip the per-tensor estimate on small models (issue 17).
It may only answer True where the full estimate (resources.footprint) could refuse nothing below the limit.

Truth: resources.footprint on the same inference (every tensor it counts, and what apply_init asks for), and
sizes derived by hand."""

from __future__ import annotations

import pytest

import deferinit as di
from deferinit import zoo
from deferinit.resources import SMALL, footprint, small
from deferinit.shapes import infer


def _cases() -> list[tuple[str, di.LazyModel, tuple]]:
    block = di.Sequential([di.Dense(8, activation="relu"), di.Dense(8)])
    return [("mlp", zoo.mlp(), (1, 20)), ("lenet", zoo.lenet(), (1, 1, 28, 28)),
            ("padded conv", di.LazyModel([di.Conv2D(4, 3, padding="same", stride=2), di.Flatten(), di.Dense(3)]),
             (2, 3, 17, 17)),
            ("token ids", di.LazyModel([di.Embedding(50, 8), di.PositionalEncoding(max_len=64), di.Flatten()]), (2, 9)),
            ("tied leaf", di.LazyModel([d := di.Dense(6), di.ReLU(), d]), (3, 6)),
            ("varying dims", di.LazyModel([di.Conv2D(4, 3), di.GlobalAvgPool2D(), di.Dense(2)]), (None, 3, None, None)),
            ("tied container", di.LazyModel([block, block]), (1, 8))]


@pytest.mark.parametrize("name, spec, shape", _cases(), ids=[c[0] for c in _cases()])
def test_true_only_where_the_full_estimate_stays_under_the_limit(name: str, spec: di.LazyModel, shape: tuple) -> None:
    inference = infer(spec, shape)
    fp = footprint(inference)
    everything = max(fp.init, fp.params + 2 * fp.tables, sum(t.elements * t.itemsize for t in fp.tensors))
    if name == "tied container":  # inner shapes of a reused container are scaled, not recorded: no bound
        assert not small(inference, SMALL)
        return
    assert small(inference, SMALL)  # each of these is a few kB
    # at a limit just above everything counted it may answer either way; at or below what is needed, never True
    assert not small(inference, fp.init)
    assert not small(inference, max(t.elements * t.itemsize for t in fp.tensors))
    assert small(inference, 100 * everything + 10**6) or everything == 0


def test_a_model_over_the_limit_is_not_small() -> None:
    # Dense(4096) on 4096 features: 4096 * 4096 * 4 = 67,108,864 bytes of weight alone, exactly SMALL
    inference = infer(di.LazyModel([di.Dense(4096, use_bias=False)]), (1, 4096))
    assert footprint(inference).params == SMALL
    assert not small(inference, SMALL)
    assert small(inference, SMALL + 8 * 4096 + 4 * 4096 + 1)  # plus the input at 8 bytes and the output


def test_an_inference_keeps_what_is_derived_from_it_once() -> None:
    """Inference.kept: the memory footprint and the small verdict (rules_cache) are computed once per inference and
    shared through it; a falsy value is kept too. Truth: the count of calls and the first value given."""
    inference = infer(zoo.mlp(), (1, 20))
    calls: list[int] = []
    assert inference.kept("_probe", lambda: calls.append(1) or False) is False
    assert inference.kept("_probe", lambda: calls.append(2) or True) is False
    assert calls == [1]
    other = infer(zoo.mlp(), (1, 20))  # an equal inference computed apart keeps its own
    assert other.kept("_probe", lambda: True) is True
