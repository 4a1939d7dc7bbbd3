"""A repeat apply_init of an equal spec on an equal input starts from the template the first one kept
(``adapters/torch/template.py``, issue 17). Truth: torch's own lazy modules dry-run by hand in the test
(``test_native_torch.HANDS``), and the first, lazy path of the same adapter with the template switched off."""

from __future__ import annotations

import numpy as np
import pytest
import test_native_torch as native
import torch
from torch import nn

import deferinit as di
from deferinit import zoo
from deferinit.adapters import rules_cache
from deferinit.adapters.torch import TorchModel, fastpath
from deferinit.extend import register_builder

SNAPSHOT = [h.id for h in native.HANDS if h.same_draws and h.id not in ("gru_lm", "lstm_deep_bi_no_bias", "rnn_relu_deep")]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    rules_cache._SHARED.clear()
    monkeypatch.setattr(fastpath, "ENABLED", True)


def _count_lazy_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = TorchModel._new_native
    monkeypatch.setattr(TorchModel, "_new_native", lambda self: built.append(1) or real(self))
    return built


def _template(model: di.CompiledModel) -> object:
    entry = model._entry(model._inference)  # type: ignore[attr-defined]
    return entry[1].get(model._template_key(False)) if entry is not None else None  # type: ignore[attr-defined]


def _warm(h: native.Hand, **kw: object) -> list[di.CompiledModel]:
    """The first two inits of ``h``'s spec on its input: the first marks it, the second keeps the template."""
    return [native._compiled(h, **kw) for _ in range(2)]


@pytest.mark.parametrize("hid", SNAPSHOT)
def test_a_repeat_init_skips_the_lazy_build_and_still_draws_torchs_default_init(
        hid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = native.BY_HAND[hid]
    built = _count_lazy_builds(monkeypatch)
    once = native._compiled(h, key=7)
    assert len(built) == 1 and _template(once) is None  # an input initialized once pays for no copy
    first = native._compiled(h, key=7)
    assert len(built) == 2 and _template(first) is not None
    second = native._compiled(h, key=7)  # a new spec object and model, as a script or the bench makes them
    assert len(built) == 2  # no lazy modules, no dry run
    hand = native._state(native._dry_run(h, seed=7))  # torch's own lazy dry run under the same seed
    for model in (once, first, second):
        for name, w in model.export_weights().items():
            np.testing.assert_array_equal(w, hand[h.to_hand(name)].detach().numpy(), err_msg=name)
    assert second.report == first.report
    assert [type(m) for m in second.native.modules()] == [type(m) for m in first.native.modules()]
    assert list(second.native.state_dict()) == list(first.native.state_dict())
    native._no_lazy_left(second.native)
    x = h.data(seed=1)
    np.testing.assert_array_equal(second(x).detach().numpy(), first(x).detach().numpy())
    assert not second.native.training


@pytest.mark.parametrize("name", ["lenet", "bn_lenet", "resnet18", "googlenet", "densenet", "transformer_encoder"])
def test_the_zoo_gives_the_lazy_paths_weights_and_report_from_the_template(name: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (2,) + zoo.BOOK_INPUTS[name][1:]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, shape) if name in zoo.INT_INPUTS else rng.standard_normal(shape).astype(np.float32)
    monkeypatch.setattr(fastpath, "ENABLED", False)  # the lazy path, every time
    lazy = di.compile(zoo.MODELS[name](), "torch")
    lazy.apply_init(x, key=5)
    monkeypatch.setattr(fastpath, "ENABLED", True)
    built = _count_lazy_builds(monkeypatch)
    models = [di.compile(zoo.MODELS[name](), "torch") for _ in range(3)]
    for m in models:
        m.apply_init(x, key=5)
    assert len(built) == 2
    want = lazy.export_weights()
    for m in models:
        got = m.export_weights()
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        assert m.report == lazy.report
        np.testing.assert_array_equal(m(x).detach().numpy(), lazy(x).detach().numpy())


def test_clones_share_no_module_tensor_or_mutable_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = lambda: di.LazyModel([di.Conv2D(4, 3, padding=1), di.BatchNorm(), di.ReLU(), di.Flatten(), di.Dense(3)])  # noqa: E731
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    a, b, c, d = (di.compile(spec(), "torch") for _ in range(4))
    for m in (a, b, c):  # b keeps the template, c is a clone
        m.apply_init(x, key=1)
    seen: list[str] = []
    for m in (b, c):  # a user changes the template's source and a clone in every way a module can be changed
        with torch.no_grad():
            m.native[0].weight.fill_(9.0)
            m.native[1].running_mean.fill_(4.0)
            m.native[0].stride = (2, 2)
        m.native[1].register_buffer("extra", torch.zeros(1), persistent=False)
        m.native[3].register_forward_hook(lambda *args: seen.append("hook"))
    d.apply_init(x, key=1)
    tensors = lambda m: {t.data_ptr() for t in (*m.native.parameters(), *m.native.buffers())}  # noqa: E731
    for m in (a, b, c):
        assert {id(mod) for mod in m.native.modules()}.isdisjoint(id(mod) for mod in d.native.modules())
        assert tensors(m).isdisjoint(tensors(d))
    assert d.native[0].stride == (1, 1)
    assert "extra" not in d.native[1]._buffers and not d.native[1]._non_persistent_buffers_set
    for k, w in d.export_weights().items():
        np.testing.assert_array_equal(w, a.export_weights()[k], err_msg=k)
    assert float(d.native[1].running_mean.abs().sum()) == 0.0
    d(x)
    assert seen == []


def test_a_tied_layer_stays_one_module_in_a_clone() -> None:
    h = native.BY_HAND["tied"]
    _warm(h)
    model = native._compiled(h)
    assert _template(model) is not None
    net = model.native
    assert net[2] is net[4] and len(list(net.parameters())) == 6


def test_without_a_key_each_repeat_draws_new_values_and_with_one_leaves_the_global_rng() -> None:
    h = native.BY_HAND["mlp"]
    _warm(h)
    a, b = native._compiled(h).export_weights(), native._compiled(h).export_weights()
    assert not np.array_equal(a["0.weight"], b["0.weight"])
    before = torch.get_rng_state()
    native._compiled(h, key=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_init_functions_on_a_repeat_are_applied_like_net_apply() -> None:
    h = native.BY_HAND["mlp"]
    _warm(h)
    native.check_init_functions_like_net_apply(h)


def test_models_with_a_module_that_is_not_plain_take_the_lazy_path_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    h = native.BY_HAND["gru_lm"]  # nn.GRU keeps a list of its weight tensors (_flat_weights)
    built = _count_lazy_builds(monkeypatch)
    a, b, c = native._compiled(h, key=2), native._compiled(h, key=2), native._compiled(h, key=2)
    assert len(built) == 3 and _template(c) is False  # the copy was tried once, and refused
    for k, w in a.export_weights().items():
        for other in (b, c):
            np.testing.assert_array_equal(w, other.export_weights()[k], err_msg=k)


def test_varying_dims_a_global_hook_and_the_switch_take_the_lazy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    h = native.BY_HAND["mlp"]
    built = _count_lazy_builds(monkeypatch)
    _warm(h)
    model = di.compile(h.spec(), "torch")
    for _ in range(3):
        model.apply_init(di.ShapeDtype((None, 20)))  # a varying batch dim is dry-run on meta at a stand-in size
    assert len(built) == 5
    seen: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, y: seen.append(type(m).__name__))
    try:
        native._compiled(h)  # the user's global hook watches every forward: it sees the dry run
    finally:
        handle.remove()
    assert len(built) == 6 and "Linear" in seen
    monkeypatch.setattr(fastpath, "ENABLED", False)
    native._compiled(h)
    assert len(built) == 7


@pytest.mark.parametrize("hid", ["bn_lenet", "embedding", "tied"])
def test_an_abstract_repeat_is_a_meta_clone_that_materializes_to_the_concrete_init(
        hid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = native.BY_HAND[hid]
    built = _count_lazy_builds(monkeypatch)
    abstract = []
    for _ in range(3):  # the second one's meta dry run keeps an abstract template; the third starts from it
        model = di.compile(h.spec(), "torch")
        model.apply_init(di.ShapeDtype(h.shape, h.dtype), abstract=True)
        abstract.append(model)
    assert len(built) == 2
    concrete = _warm(h, key=4)[1]  # an abstract template has no buffer values: never used concretely
    assert len(built) == 4
    model = di.compile(h.spec(), "torch")
    model.apply_init(di.ShapeDtype(h.shape, h.dtype), abstract=True)  # from the concrete template now
    assert len(built) == 4
    abstract.append(model)
    hand = native._state(native._dry_run(h, seed=4))
    for m in abstract:
        assert all(t.is_meta for t in (*m.native.parameters(), *m.native.buffers()))
        assert m.report == abstract[0].report == concrete.report
        m.materialize(key=4)
        for name, w in m.export_weights().items():
            np.testing.assert_array_equal(w, hand[h.to_hand(name)].detach().numpy(), err_msg=name)
        for name, b in m.native.named_buffers():
            assert torch.equal(b, dict(concrete.native.named_buffers())[name]), name
        x = h.data(seed=1)
        np.testing.assert_array_equal(m(x).detach().numpy(), concrete(x).detach().numpy())


class _Unused(di.Dense):  # a layer type of this test only: registering its builder changes no model
    pass


def test_a_builder_registered_since_or_another_default_dtype_is_a_new_template(monkeypatch: pytest.MonkeyPatch) -> None:
    h = native.BY_HAND["mlp"]
    built = _count_lazy_builds(monkeypatch)
    _warm(h)
    register_builder("torch", _Unused)(lambda layer, rank: nn.LazyLinear(layer.units))
    for _ in range(3):  # the builders may make other modules now: torch's dry runs again, then a new template
        native._compiled(h)
    assert len(built) == 4
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        native._compiled(h)  # a user's builder may make tensors of the default dtype: a new dry run
    finally:
        torch.set_default_dtype(old)
    assert len(built) == 5
    native._compiled(h)
    assert len(built) == 5
