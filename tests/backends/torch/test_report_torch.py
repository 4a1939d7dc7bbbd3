"""The torch backend's report is torch's own: every layer position's output shape and the model's output are read
off torch's dry run (forward hooks), and checked against the reference rules (an independent implementation of
the shapes in pure Python): a wrong observed shape, or a native model that computes something else, is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deferinit as di
from cases import CASES, Case
from deferinit import zoo
from deferinit.adapters import rules_cache
from deferinit.adapters.torch import structure
from deferinit.errors import BackendError
from deferinit.extend import builder_for, register_builder
from deferinit.layers_seq import Reshape


def _native_everywhere(report: di.ShapeReport, reference: di.ShapeReport) -> None:
    assert report.diff(reference) == []
    assert list(report.layers) == list(reference.layers)  # tied positions included
    assert report.layers and all(info.source == "native" for info in report.layers.values())


@pytest.mark.parametrize("abstract", [False, True], ids=["concrete", "abstract"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contract_cases_report_torchs_own_shapes(case: Case, abstract: bool) -> None:
    model = di.compile(case.make(), "torch")
    x = di.ShapeDtype(case.shape, case.dtype) if abstract else case.data()
    report = model.apply_init(x, abstract=abstract)
    _native_everywhere(report, di.infer_shapes(case.make(), case.shape, dtype=case.dtype))
    if not abstract:  # the observed output is the one a call computes
        assert report.output_shape == model(case.data(batch=case.shape[0])).shape


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_reports_torchs_own_shapes(name: str) -> None:
    shape = zoo.BOOK_INPUTS[name]
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    report = di.compile(zoo.MODELS[name](), "torch").apply_init(di.ShapeDtype(shape, dtype), abstract=True)
    _native_everywhere(report, di.infer_shapes(zoo.MODELS[name](), shape, dtype=dtype))


def test_varying_dims_stay_none_and_the_rest_is_observed() -> None:
    # token windows of any length: torch runs the stand-in length on meta; None is kept where the rules say so
    spec = zoo.MODELS["gru_lm"]()
    report = di.compile(spec, "torch").apply_init(di.ShapeDtype((2, None), "int64"))
    _native_everywhere(report, di.infer_shapes(zoo.MODELS["gru_lm"](), (2, None), dtype="int64"))
    assert report.output_shape == (2, None, 28)


def test_channels_last_positions_that_end_channels_first_are_transposed_back() -> None:
    spec = di.LazyModel([di.Conv2D(4, 3), di.BatchNorm(), di.ReLU(), di.Conv2D(5, 3, stride=2), di.Flatten()],
                        data_format="channels_last")
    model = di.compile(spec, "torch")
    report = model.apply_init(np.zeros((2, 9, 11, 3), np.float32))
    # worked by hand: 9x11 -> 7x9 (valid 3x3) -> 3x4 (stride 2), channels last
    assert [report.layers[p].output_shape for p in "0123"] == [(2, 7, 9, 4)] * 3 + [(2, 3, 4, 5)]
    assert report.layers["4"].output_shape == report.output_shape == (2, 60)
    # the convolutions really run channels-first inside: no permute between conv, batch norm and relu
    names = list(model.native._modules)
    assert names.index("1") == names.index("0") + 1


def test_a_wrong_observed_shape_is_a_backend_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    record = structure.Observer._record  # what both ways of observing (flat root, hooks) store a shape with

    def corrupt(self: structure.Observer, slot: object, out: object) -> None:
        record(self, slot, out)  # type: ignore[arg-type]
        if "1" in self.shapes and self.shapes["1"] == (3, 8):
            self.shapes["1"] = (3, 9)

    monkeypatch.setattr(structure.Observer, "_record", corrupt)
    spec = di.LazyModel([di.Dense(8, activation="relu"), di.Dense(8), di.Dense(2)])
    model = di.compile(spec, "torch")
    with pytest.raises(BackendError, match=r"\(3, 9\) at layer '1' \(Dense\) where the reference rules give \(3, 8\)"):
        model.apply_init(np.zeros((3, 5), np.float32))
    assert not model.initialized  # nothing was swapped in


def test_an_unobserved_position_is_a_backend_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    post = structure.Observer._post

    def drop(self: structure.Observer, module: nn.Module, args: object, out: object) -> None:
        post(self, module, args, out)
        self.shapes.pop("1.body", None)

    monkeypatch.setattr(structure.Observer, "_post", drop)
    spec = di.LazyModel([di.Dense(4), di.Residual(di.Dense(4)), di.Dense(2)])
    with pytest.raises(BackendError, match=r"no output shape for layer '1.body' \(Dense\)"):
        di.compile(spec, "torch").apply_init(np.zeros((3, 5), np.float32))


def test_a_native_model_that_drops_outputs_is_caught_at_that_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    # a broken builder: Reshape((2, 2)) built as "keep the first two features" (no parameters to give it away)
    class FirstTwo(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2]

    good = builder_for("torch", Reshape)
    register_builder("torch", Reshape)(lambda layer, rank: FirstTwo())
    try:
        spec = di.LazyModel([di.Dense(4), di.Reshape((2, 2)), di.Flatten()])
        with pytest.raises(BackendError, match=r"\(3, 2\) at layer '1' \(Reshape\) where the reference rules give "
                                               r"\(3, 2, 2\)"):
            di.compile(spec, "torch").apply_init(np.zeros((3, 5), np.float32))
    finally:
        register_builder("torch", Reshape)(good)  # type: ignore[arg-type]


def test_tied_positions_are_told_apart() -> None:
    # one module object runs at several positions: inside a tied container, again on its own, and (channels_last)
    # once where its output stays channels-first and once where it is permuted back
    dense = di.Dense(6, activation="tanh")
    block = di.Sequential([dense, di.Dense(6)])
    conv = di.Conv2D(3, 1)
    spec = di.LazyModel([di.Conv2D(3, 3), conv, di.ReLU(), conv, di.Flatten(), di.Dense(6), block, dense, block,
                         di.Concat([dense, di.Sequential([dense, dense])]), di.Dense(6), di.Residual(block)],
                        data_format="channels_last")
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 3)).astype(np.float32)
    model = di.compile(spec, "torch")
    report = model.apply_init(x)
    _native_everywhere(report, di.infer_shapes(spec, x.shape))
    assert report.layers["3"].output_shape == (2, 4, 3, 3) and report.layers["3"].tied_to == "1"
    assert report.layers["9"].output_shape == (2, 12)
    assert report.output_shape == model(x).shape == (2, 6)


def test_a_flat_model_is_observed_without_hooks_and_gives_the_hooks_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root Sequential of leaf modules is run as its own forward is written, each child's output read as torch
    returns it; a nested container, or a hook the user set on every module, takes the hooked ``net(x)``."""
    from deferinit import zoo

    rules_cache._SHARED.clear()  # no template of an earlier test's equal model: this one's dry run runs
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    attached = []
    attach = structure.Observer.attach
    monkeypatch.setattr(structure.Observer, "attach", lambda self: attached.append(1) or attach(self))
    flat = di.compile(zoo.lenet(), "torch").apply_init(x)
    assert attached == []
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append(type(m).__name__))
    try:
        hooked = di.compile(zoo.lenet(), "torch").apply_init(x)
    finally:
        handle.remove()
    assert attached == [1] and "Sequential" in seen  # the user's global hook saw the root's call too
    assert flat.layer_output_shapes == hooked.layer_output_shapes == di.infer_shapes(zoo.lenet(), x.shape).layer_output_shapes
    assert all(info.source == "native" for info in flat.layers.values())
    nested = di.compile(di.LazyModel([di.Dense(4), di.Residual(di.Dense(4))]), "torch")
    nested.apply_init(np.zeros((1, 3), np.float32))
    assert attached == [1, 1]
