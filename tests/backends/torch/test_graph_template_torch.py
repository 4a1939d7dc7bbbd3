"""A repeat abstract apply_init of a graph spec copies the template the second one's meta dry run kept
(``TorchGraphModel._native_for``, ``adapters/torch/template.py``; issue 17). Truth: the lazy path of the same
adapter with the template switched off (torch's lazy modules dry-run on meta), materialized under the same key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deferinit as di
from deferinit import zoo
from deferinit.adapters import rules_cache
from deferinit.adapters.rules_cache import GRAPH_TEMPLATES
from deferinit.adapters.torch import fastpath
from deferinit.adapters.torch import graph_module as gm
from deferinit.adapters.torch.template import Template


def _gpt2() -> di.LazyModel:
    return zoo.gpt2(n_layer=2, vocab_size=50, n_positions=16, n_embd=16, n_head=2)  # its lm_head is tied (Attend)


def _bert() -> di.LazyModel:
    return zoo.bert_base(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)


CASES = {
    "gpt2": (_gpt2, [((2, 8), "int64")]),
    "bert": (_bert, [((2, 8), "int64"), ((2, 8), "int64"), ((2,), "int64")]),
}


def _data(shapes: list) -> tuple:
    """Token ids below 8, token types 0 or 1, valid lengths 1 to 8 (every table and mask has room for them)."""
    rng = np.random.default_rng(0)
    highs = [8, 2, 9][:len(shapes)] if len(shapes) > 1 else [8]
    return tuple(rng.integers(1 if k != 1 else 0, high, s) for k, ((s, _), high) in enumerate(zip(shapes, highs)))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    rules_cache.clear()
    monkeypatch.setattr(fastpath, "ENABLED", True)


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = gm.TorchGraphModel._new_native
    monkeypatch.setattr(gm.TorchGraphModel, "_new_native", lambda self: built.append(1) or real(self))
    return built


def _abstract(make, shapes) -> di.CompiledModel:  # type: ignore[no-untyped-def]
    model = di.compile(make(), "torch")
    model.apply_init(tuple(di.ShapeDtype(s, d) for s, d in shapes), abstract=True)
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_repeat_abstract_init_is_a_meta_copy_that_materializes_to_the_lazy_paths_weights(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, shapes = CASES[name]
    monkeypatch.setattr(fastpath, "ENABLED", False)
    lazy = _abstract(make, shapes)  # the lazy path: torch's lazy modules dry-run on meta
    monkeypatch.setattr(fastpath, "ENABLED", True)
    built = _count_builds(monkeypatch)
    models = [_abstract(make, shapes) for _ in range(4)]
    assert len(built) == 2  # the first marks the inputs, the second keeps the template, the rest copy it
    assert [type(t) for t in GRAPH_TEMPLATES.templates()] == [Template]
    x = _data(shapes)
    lazy.materialize(key=3)
    want = lazy.export_weights()
    for m in models:
        assert m.report == lazy.report
        assert [(n, p.shape, p.is_meta) for n, p in m.native.named_parameters()] == \
            [(n, p.shape, True) for n, p in lazy.native.named_parameters()]
        m.materialize(key=3)
        got = m.export_weights()
        assert list(got) == list(want)
        for n in want:
            np.testing.assert_array_equal(got[n], want[n], err_msg=n)
        for a, b in zip(m(x) if name == "bert" else [m(x)], lazy(x) if name == "bert" else [lazy(x)]):
            np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_copies_share_no_tensor_and_a_tied_projection_reads_its_own_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    make, shapes = CASES["gpt2"]
    models = [_abstract(make, shapes) for _ in range(4)]
    [template] = GRAPH_TEMPLATES.templates()
    seen = {id(t) for t in (*template.root.parameters(), *template.root.buffers())}
    for m in models[2:]:
        net = m.native
        assert net is not template.root and not seen & {id(t) for t in (*net.parameters(), *net.buffers())}
        seen |= {id(t) for t in (*net.parameters(), *net.buffers())}
        assert net.spec is m.spec and net.root is m.root and net._arranged == {}
        assert net.module_at("lm_head").table() is net.module_at("wte").weight
    m = models[3]
    m.materialize(key=0)
    x = _data(shapes)
    before = m(x).detach().numpy()
    with torch.no_grad():
        m.native.module_at("wte").weight.mul_(2.0)  # the projection is tied: its logits move with the table
    assert not np.array_equal(m(x).detach().numpy(), before)
    assert "lm_head.weight" not in m.native.state_dict()  # held once, under the embedding


def test_other_inputs_a_global_hook_and_the_switch_take_the_lazy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    make, shapes = CASES["gpt2"]
    built = _count_builds(monkeypatch)
    for _ in range(3):
        _abstract(make, shapes)
    assert len(built) == 2
    _abstract(make, [((2, 9), "int64")])  # another input shape: its own first init
    assert len(built) == 3
    calls: list[int] = []
    handle = nn.modules.module.register_module_forward_hook(lambda *a: calls.append(1))
    try:
        _abstract(make, shapes)  # the user's global hook sees the dry run, as it always did
    finally:
        handle.remove()
    assert len(built) == 4 and calls
    monkeypatch.setattr(fastpath, "ENABLED", False)
    _abstract(make, shapes)
    assert len(built) == 5
    monkeypatch.setattr(fastpath, "ENABLED", True)
    other = lambda: zoo.gpt2(n_layer=2, vocab_size=51, n_positions=16, n_embd=16, n_head=2)  # noqa: E731
    _abstract(other, shapes)  # another spec: another key
    assert len(built) == 6
    _abstract(make, shapes)
    assert len(built) == 6


def test_a_concrete_init_never_starts_from_an_abstract_template(monkeypatch: pytest.MonkeyPatch) -> None:
    make, shapes = CASES["gpt2"]
    for _ in range(2):
        _abstract(make, shapes)
    built = _count_builds(monkeypatch)
    model = di.compile(make(), "torch")
    model.apply_init(_data(shapes), key=1)
    assert len(built) == 1 and not any(p.is_meta for p in model.native.parameters())
