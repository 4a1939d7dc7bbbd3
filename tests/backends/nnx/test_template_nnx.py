"""A repeat apply_init of an equal spec on an equal input merges the template an earlier one kept instead of
constructing NNX's modules again (``adapters/nnx/template.py``, issue 17). Truth: the same adapter's construction
path with the template switched off (NNX's own constructors drawing the values), and the reference rules' shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import deferinit as di
from deferinit import zoo
from deferinit.adapters import rules_cache
from deferinit.adapters.jax import fastpath
from deferinit.adapters.nnx import NnxModel


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    rules_cache._SHARED.clear()
    monkeypatch.setattr(fastpath, "ENABLED", True)


def _count_constructions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = NnxModel._new_native
    monkeypatch.setattr(NnxModel, "_new_native", lambda self: built.append(1) or real(self))
    return built


SPECS = {
    "mlp": (zoo.mlp, (2, 20)),
    "lenet": (zoo.lenet, (2, 1, 28, 28)),
    "bn_lenet": (zoo.bn_lenet, (2, 1, 28, 28)),
    "resnet18": (zoo.resnet18, (1, 1, 32, 32)),
    "tied_channels_last": (lambda: di.LazyModel([di.Conv2D(4, 3, padding=1), di.BatchNorm(), di.ReLU(),
                                                 di.Residual(di.Sequential([di.Conv2D(4, 3, padding=1)])),
                                                 di.Flatten(), di.Dense(3)], data_format="channels_last"),
                           (2, 6, 6, 3)),
}


def _x(shape: tuple) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _init(make, shape, **kw) -> di.CompiledModel:  # type: ignore[no-untyped-def]
    model = di.compile(make(), "nnx")
    model.apply_init(_x(shape), **kw)
    return model


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(SPECS))
def test_a_repeat_init_merges_the_template_and_draws_the_constructed_values(name: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make, shape = SPECS[name]
    monkeypatch.setattr(fastpath, "ENABLED", False)
    constructed = {k: _init(make, shape, key=k) for k in (3, 4)}
    monkeypatch.setattr(fastpath, "ENABLED", True)
    built = _count_constructions(monkeypatch)
    models = [_init(make, shape, key=3) for _ in range(3)]
    assert len(built) == 2  # the first marks the input, the second keeps the template, the third merges it
    other = _init(make, shape, key=4)
    assert len(built) == 2
    want = constructed[3].export_weights()
    for m in models:
        assert _equal(m.export_weights(), want)
        assert m.report == constructed[3].report
        np.testing.assert_array_equal(np.asarray(m(_x(shape))), np.asarray(constructed[3](_x(shape))))
        assert [p for p, _ in nnx.to_flat_state(nnx.state(m.native))] == \
            [p for p, _ in nnx.to_flat_state(nnx.state(constructed[3].native))]
    assert _equal(other.export_weights(), constructed[4].export_weights())
    assert not _equal(other.export_weights(), want)
    ref = di.infer_shapes(make(), shape)
    assert {n: p.shape for n, p in models[2].report.params.items()} == {n: p.shape for n, p in ref.params.items()}


def test_clones_share_no_variable_and_a_change_to_one_reaches_no_other() -> None:
    make, shape = SPECS["bn_lenet"]
    a, b, c = (_init(make, shape, key=1) for _ in range(3))
    d = _init(make, shape, key=1)
    variables = lambda m: {id(v) for _, v in nnx.to_flat_state(nnx.state(m.native))}  # noqa: E731
    assert variables(c).isdisjoint(variables(d)) and variables(b).isdisjoint(variables(c))
    kernel = c.native.layers[0].kernel
    kernel.set_value(kernel.get_value() * 0 + 5.0)
    c.load_weights({**c.export_weights(), "1.running_mean": np.full(6, 2.0, np.float32)})
    e = _init(make, shape, key=1)
    assert _equal(e.export_weights(), d.export_weights()) and _equal(e.export_weights(), a.export_weights())
    assert float(np.asarray(c.native.layers[0].kernel[...]).min()) == 5.0
    assert float(np.asarray(c.native.layers[1].mean[...]).min()) == 2.0


def test_portable_values_and_a_flax_initializer_on_a_repeat_equal_the_construction_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    make, shape = SPECS["lenet"]
    inits = ("xavier_uniform", nnx.initializers.lecun_normal())
    monkeypatch.setattr(fastpath, "ENABLED", False)
    want = [_init(make, shape, init=init, key=2).export_weights() for init in inits]
    monkeypatch.setattr(fastpath, "ENABLED", True)
    built = _count_constructions(monkeypatch)
    for init, w in zip(inits, want):
        for _ in range(3):
            assert _equal(_init(make, shape, init=init, key=2).export_weights(), w)
    # the portable inits' second keeps a shape-only template (their construction draws nothing), which a Flax
    # initializer (drawn over NNX's default values) cannot use: its second init keeps a concrete one
    assert len(built) == 4


def test_an_abstract_repeat_is_shape_only_and_materializes_to_the_concrete_init(monkeypatch: pytest.MonkeyPatch) -> None:
    make, shape = SPECS["bn_lenet"]
    built = _count_constructions(monkeypatch)
    abstract = []
    for _ in range(3):  # the second keeps a shape-only template (nnx.eval_shape: nothing drawn); the third merges it
        m = di.compile(make(), "nnx")
        m.apply_init(di.ShapeDtype(shape), abstract=True)
        abstract.append(m)
    assert len(built) == 2
    concrete = [_init(make, shape, key=6) for _ in range(2)]  # a shape-only template is never used concretely
    assert len(built) == 4
    m = di.compile(make(), "nnx")
    m.apply_init(di.ShapeDtype(shape), abstract=True)  # from the concrete template now
    assert len(built) == 4
    abstract.append(m)
    for m in abstract:
        leaves = jax.tree_util.tree_leaves(nnx.state(m.native))
        assert leaves and all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)
        assert m.report == concrete[0].report
        m.materialize(key=6)
        assert _equal(m.export_weights(), concrete[0].export_weights())


def _dropouts() -> di.LazyModel:
    return di.LazyModel([di.Dense(8), di.Dropout(0.5), di.Dense(6), di.Dropout(0.25), di.Dense(2)])


def _stream_keys(m: di.CompiledModel) -> list:
    return [np.asarray(jax.random.key_data(v[...])) for _, v in nnx.to_flat_state(nnx.state(m.native, nnx.RngKey))]


def test_a_dropouts_stream_on_a_repeat_is_the_key_nnx_forked_for_the_same_init_key(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (4, 5)
    x = _x(shape)
    monkeypatch.setattr(fastpath, "ENABLED", False)  # NNX's own construction: Dropout forks the init's nnx.Rngs
    constructed = {k: _init(_dropouts, shape, key=k) for k in (3, 4)}
    portable = _init(_dropouts, shape, key=3, init="xavier_uniform")
    # a training forward draws its masks from the stream: the first call's key, then the next
    masks = {k: [np.asarray(m(x, training=True)) for _ in range(2)] for k, m in [*constructed.items(), ("p", portable)]}
    monkeypatch.setattr(fastpath, "ENABLED", True)
    built = _count_constructions(monkeypatch)
    models = [_init(_dropouts, shape, key=3) for _ in range(3)]
    assert len(built) == 2  # the third merges the template
    other = _init(_dropouts, shape, key=4)
    assert len(built) == 2
    keys = {k: _stream_keys(m) for k, m in constructed.items()}  # (the calls above advanced the counts, not the keys)
    assert len(keys[3]) == 2 and not np.array_equal(keys[3][0], keys[4][0])
    for m, k in [*((m, 3) for m in models), (other, 4)]:
        assert all(np.array_equal(a, b) for a, b in zip(_stream_keys(m), keys[k]))
        assert _equal(m.export_weights(), constructed[k].export_weights())
        for want in masks[k]:
            np.testing.assert_array_equal(np.asarray(m(x, training=True)), want)
    for _ in range(3):  # portable values: the streams are still NNX's, the values the portable initializer's
        m = _init(_dropouts, shape, key=3, init="xavier_uniform")
        assert all(np.array_equal(a, b) for a, b in zip(_stream_keys(m), keys[3]))
        assert _equal(m.export_weights(), portable.export_weights())
        for want in masks["p"]:
            np.testing.assert_array_equal(np.asarray(m(x, training=True)), want)


def test_an_abstract_template_of_a_model_with_a_stream_serves_no_init_with_values(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (4, 5)
    built = _count_constructions(monkeypatch)
    for _ in range(3):  # nnx.eval_shape gives the streams no values: this template serves abstract inits only
        di.compile(_dropouts(), "nnx").apply_init(di.ShapeDtype(shape), abstract=True)
    assert len(built) == 2
    m = _init(_dropouts, shape, key=3, init="xavier_uniform")  # would start from a shape-only template: constructs
    assert len(built) == 3
    monkeypatch.setattr(fastpath, "ENABLED", False)
    want = _init(_dropouts, shape, key=3, init="xavier_uniform")
    assert all(np.array_equal(a, b) for a, b in zip(_stream_keys(m), _stream_keys(want)))


def test_a_model_with_values_not_drawn_on_the_host_constructs_its_modules_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> di.LazyModel:
        return zoo.rnn_lm("gru", num_layers=2)  # NNX's GRU cells draw their own values (with a stream between)

    built = _count_constructions(monkeypatch)
    x = np.random.default_rng(0).integers(0, 28, (2, 5))
    models = []
    for _ in range(3):
        m = di.compile(make(), "nnx")
        m.apply_init(x, key=1)
        models.append(m)
    assert len(built) == 3
    entry = models[2]._entry(models[2]._inference)
    assert entry[1][models[2]._template_key(False)] is False  # tried once, refused
    assert all(_equal(m.export_weights(), models[0].export_weights()) for m in models)


def test_the_switch_and_a_builder_registered_since_construct_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from deferinit.extend import register_builder

    class Unused(di.Dense):
        pass

    make, shape = SPECS["mlp"]
    built = _count_constructions(monkeypatch)
    for _ in range(3):
        _init(make, shape)
    assert len(built) == 2
    register_builder("nnx", Unused)(lambda *a: None)
    for _ in range(3):
        _init(make, shape)
    assert len(built) == 4
    monkeypatch.setattr(fastpath, "ENABLED", False)
    _init(make, shape)
    assert len(built) == 5
