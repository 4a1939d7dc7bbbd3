"""Each selected framework against the reference, in one process: outputs, layers, init, training, grads.

Cross-process parity (MXNet's virtualenv against the others) runs in ``nox -s parity`` through artifacts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings

import deferinit as di
from cases import BY_ID
from deferinit.parity import compare_artifacts, make_artifact, parity
from strategies import data, replay, valid_specs

NAMED = ["mlp", "lenet", "residual", "concat", "batchnorm", "channels_last", "tied", "embedding", "conv_options"]


@pytest.mark.parametrize("case_id", NAMED)
def test_named_specs_agree_with_reference(framework: str, case_id: str) -> None:
    case = BY_ID[case_id]
    result = parity(case.make(), case.data(), backends=[framework])
    r = result.results[framework]
    assert result.passed, "\n".join(result.failures())
    assert r.init_identical is True
    assert r.train_ok in (True, None)
    assert r.max_abs <= 1e-4


def test_broken_conversion_is_located(framework: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from deferinit.registry import load_backend

    case = BY_ID["lenet"]
    ref = make_artifact(case.make(), "numpy", case.data())
    cls = load_backend(framework)
    original = cls._set_weights

    def broken(self, weights):  # type: ignore[no-untyped-def]
        weights = dict(weights)
        weights["2.weight"] = np.swapaxes(weights["2.weight"], -1, -2).copy()  # a wrong kernel transpose
        original(self, weights)

    monkeypatch.setattr(cls, "_set_weights", broken)
    art = make_artifact(case.make(), framework, source=ref, training=False, gradients=False)
    result = compare_artifacts([ref, art])
    assert not result.passed
    assert result.results[framework].first_divergence == "2"


def test_artifacts_through_files_compare_as_in_memory(framework: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the reference's file holds digests, not its Xavier draw; the framework's holds a sample of its big
    # intermediates and the branches its forward took: read back, the comparison finds what it found in memory
    from deferinit.parity import load_artifact, save_artifact
    from deferinit.parity_artifacts import INTER_SAMPLE
    from deferinit.parity_branches import pool_key

    spec = di.LazyModel([di.Conv2D(20, 3, padding=1), di.Activation("relu"), di.MaxPool2D(2), di.Flatten(),
                         di.Dense(3)])
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    ref = make_artifact(spec, "numpy", x)
    in_memory = compare_artifacts([ref, make_artifact(spec, framework, source=ref)]).results[framework]
    ref_file = load_artifact(save_artifact(ref, tmp_path / "numpy.npz"))
    art = make_artifact(spec, framework, source=ref_file)
    assert art.meta["branches"] and set(art.branches) == {"0", pool_key("2")}  # the ReLU's input, the pool
    loaded = load_artifact(save_artifact(art, tmp_path / f"{framework}.npz"))
    assert ref.intermediates["0"].size > INTER_SAMPLE and loaded.intermediates["0"].shape == (INTER_SAMPLE,)
    result = compare_artifacts([ref_file, loaded])
    r = result.results[framework]
    assert result.passed, "\n".join(result.failures())
    assert r.init_identical is True and r.max_abs == in_memory.max_abs
    assert r.grad_fd_ok is True and r.grad_fd_error == in_memory.grad_fd_error  # the redrawn weights' differences


@settings(max_examples=8)
@given(valid_specs())
def test_random_specs_agree_with_reference(framework: str, spec_and_shape) -> None:  # type: ignore[no-untyped-def]
    spec, shape = spec_and_shape
    note("replay: di.LazyModel.from_dict(json.loads(" + repr(replay(spec)) + "))")
    result = parity(spec, data(shape), backends=[framework], atol=3e-5, rtol=3e-4)
    assert result.passed, "\n".join(result.failures())


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_bias_gradient_counts_active_units(framework: str, data_format: str) -> None:
    """d sum(relu(conv(x) + b)) / d b[c] is the number of positive outputs in channel c, read off the
    reference's own output. The width equals the channels (6), which once fooled Keras's bias-add into
    reducing over the wrong axis."""
    spec = di.LazyModel([di.Conv2D(6, 3), di.ReLU()], data_format=data_format)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8) if data_format == "channels_first" else (4, 8, 8, 3))
    x = x.astype(np.float32)
    model = di.compile(spec, framework)
    model.apply_init(x, init="xavier_uniform", key=0)
    ref = di.compile(spec, "numpy")
    ref.load_weights(model.export_weights(), input_shape=x.shape)
    y = ref(x)
    axes = (0, 2, 3) if data_format == "channels_first" else (0, 1, 2)
    np.testing.assert_array_equal(model.gradients(x)["0.bias"], (y > 0).sum(axis=axes).astype(np.float32))


def test_wrong_gradient_of_one_parameter_is_named(framework: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A framework run alone is still checked: its gradient of one parameter, scaled by 1.5 (a test-local
    subclass), disagrees with the numpy reference's own finite differences, and the parameter is named."""
    import sys

    from deferinit import registry

    base = registry.load_backend(framework)

    class ScaledGradient(base):  # type: ignore[misc, valid-type]
        def _gradients(self, x, training):  # type: ignore[no-untyped-def]
            grads = dict(super()._gradients(x, training))
            grads["2.weight"] = grads["2.weight"] * np.float32(1.5)
            return grads

    monkeypatch.setattr(sys.modules[__name__], "ScaledGradient", ScaledGradient, raising=False)
    target, packages, extra, aliases = registry.BUILTINS[framework]
    monkeypatch.setitem(registry.BUILTINS, framework, (f"{__name__}:ScaledGradient", packages, extra, aliases))
    case = BY_ID["lenet"]
    result = parity(case.make(), case.data(), backends=[framework], training=False)
    r = result.results[framework]
    assert not result.passed and r.grad_fd_ok is False and r.ok  # outputs agree: only the gradient is wrong
    assert r.grad_ok is None  # alone: no other framework to compare with, and the column says '-'
    assert r.grad_fd_worst == "2.weight"  # the right ones are not blamed
    assert any(f"{framework}: gradient of '2.weight' differs from the numpy reference's finite differences" in line
               for line in result.failures()), result.failures()
