"""The check after torch's dry run that nothing it was meant to initialize is left lazy (``_native_init``): it names
every module and tensor left, and the compiled model is left as it was. Truth: a lazy module planted by hand
where the dry run cannot reach it (a child of a leaf module whose ``forward`` never calls it)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from torch import nn

import deferinit as di
from deferinit.adapters import rules_cache
from deferinit.errors import BackendError


def _planted(plant: Callable[[nn.Module], None]) -> tuple[di.CompiledModel, di.ShapeReport]:
    """A model initialized once, whose next native models get ``plant`` applied before their dry run."""
    rules_cache._SHARED.clear()  # no template of an earlier test's equal model: this one's dry run runs
    model = di.compile(di.LazyModel([di.Dense(4, activation="relu"), di.Dense(2)]), "torch")
    report = model.apply_init(np.ones((1, 3), np.float32))
    build = model._new_native

    def planted() -> nn.Module:
        net = build()
        plant(net)
        return net

    model._new_native = planted  # type: ignore[method-assign]
    return model, report


def test_a_module_the_dry_run_left_lazy_is_named_and_nothing_changes() -> None:
    # nn.Linear.forward never calls the planted child
    model, report = _planted(lambda net: next(iter(net._modules.values())).add_module("stray", nn.LazyLinear(5)))
    with pytest.raises(BackendError, match=r"left uninitialized modules or tensors: \['0\.stray', '0\.stray\.weight', "
                                           r"'0\.stray\.bias'\]"):
        model.apply_init(np.ones((1, 7), np.float32))
    assert model.report is report and model.report.params["0.weight"].shape == (4, 3)
    del model._new_native
    assert model.apply_init(np.ones((1, 7), np.float32)).params["0.weight"].shape == (4, 7)


def test_an_uninitialized_buffer_in_a_plain_module_is_named() -> None:
    """The walk checks every tensor, not only lazy modules: an ``UninitializedBuffer`` on the activation module (not
    lazy itself, nothing in the dry run materializes it) is named, and the model is left as it was."""
    from torch.nn.parameter import UninitializedBuffer

    model, report = _planted(lambda net: net._modules["0:relu"].register_buffer("stray", UninitializedBuffer()))
    with pytest.raises(BackendError, match=r"left uninitialized modules or tensors: \['0:relu\.stray'\]"):
        model.apply_init(np.ones((1, 7), np.float32))
    assert model.report is report
