"""The reference rules' results, computed once per (spec, input shape, dtype): per model, and shared by the
models of equal specs built apart in one process (issue 17).

``apply_init``, ``materialize`` and the checks of ``load_weights`` all start from the reference rules' answer for
the input (:func:`~deferinit.shapes.infer`). The spec is immutable and the plan is the model's own, so the answer
depends on nothing else: a model keeps its last ``_CACHED`` answers (what is derived from an answer alone, such as
its memory footprint, is kept on the answer itself: ``Inference.kept``), and equal specs (``spec_key.content_key``:
a new ``LazyModel`` per call, as a training script or a benchmark makes them) share one answer across models
through ``_SHARED``. Errors are not cached.

Beside each answer sit the facts a backend must ask its framework for at a cost (``_framework_once``): the
per-layer output shapes where only a trace gives them (NNX, whose modules are built with every dim given, so
nothing else runs a forward; MXNet's symbolic shape inference of the traced graph) and how many variables NNX
created. The framework is asked once per (spec, input shape, dtype, abstract, registered builders) in a process,
and every apply_init still checks the answers against the rules.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

from ..extend import generation
from ..resources import Footprint, footprint
from ..shapes import Inference, as_dtype, infer
from ..spec_key import content_key
from .checks import Checks

__all__ = ["RulesCache", "TemplateShelf", "GRAPH_TEMPLATES", "clear"]

N = TypeVar("N")

#: how many (input shape, dtype) results of the reference rules a compiled model keeps (``_infer_once``)
_CACHED = 8
#: (backend, spec content key, (shape, dtype)) -> the _infer_once entry, shared by the models of equal specs;
#: the oldest of _SHARED_MAX goes first. Entries are never mutated once their three slots are filled.
_SHARED: dict[tuple, list] = {}
_SHARED_MAX = 32
_SHARED_LOCK = threading.Lock()


class RulesCache(Checks[N]):
    """The cached rules results of a compiled model (``CompiledModel`` sets ``_inferred = {}`` and has ``spec``,
    ``root`` and ``backend``)."""

    _inferred: dict[tuple, Any]

    def _infer_once(self, shape: tuple, dtype: Any) -> Inference:
        """The reference rules' result for this model's spec on an input of ``shape`` (normalized) and ``dtype``,
        computed once per (shape, dtype): the spec is immutable and the plan is this model's, so the result
        depends on nothing else. Bounded (the oldest of ``_CACHED`` entries goes first); errors are not cached."""
        key = (shape, dtype if dtype is None else as_dtype(dtype))
        entry = self._inferred.get(key)
        if entry is None:
            shared = self._shared_key(key)
            entry = _SHARED.get(shared) if shared is not None else None
            if entry is None:
                entry = [infer(self.spec, shape, dtype=dtype, backend=self.backend, root=self.root), {}]
                if shared is not None:
                    with _SHARED_LOCK:  # models in other threads share it: evict and insert as one step
                        if len(_SHARED) >= _SHARED_MAX:
                            _SHARED.pop(next(iter(_SHARED)), None)
                        _SHARED[shared] = entry
            if len(self._inferred) >= _CACHED:
                del self._inferred[next(iter(self._inferred))]
            self._inferred[key] = entry
        return entry[0]

    def _shared_key(self, key: tuple) -> tuple | None:
        """The key of this spec's rules result among all models of this process: equal specs built separately
        (a new ``LazyModel`` per call, as a training script or a benchmark makes them) share one result; ``None``
        when the spec has an unhashable attribute. The backend is part of it (its rules may refuse a layer)."""
        content = self.__dict__.get("_content")
        if content is None:
            content = self._content = (content_key(self.spec),)
        return None if content[0] is None else (self.backend, content[0], key)

    def _footprint(self, inference: Inference) -> Footprint:
        """``resources.footprint(inference)``, kept on the inference, so the memory check of a later apply_init (or
        materialize) on the same shapes, by this model or one of an equal spec, reuses it."""
        return inference.kept("_footprint", lambda: footprint(inference))

    def _small(self, inference: Inference) -> bool:
        """``resources.small(inference)``, kept on the inference as ``_footprint`` is."""
        return inference.kept("_small", lambda: super(RulesCache, self)._small(inference))

    def _layer_shapes_once(self, inference: Inference, abstract: bool,
                           ask: Callable[[], Mapping[str, tuple]]) -> Mapping[str, tuple]:
        """``ask()``, the framework's per-layer output shapes for ``inference``'s input, kept beside the cached
        inference (``_framework_once``)."""
        return self._framework_once(inference, "layer shapes", abstract,  # type: ignore[no-any-return]
                                    lambda: MappingProxyType(dict(ask())))

    def _framework_once(self, inference: Inference, what: str, abstract: bool, ask: Callable[[], Any]) -> Any:
        """``ask()``, a fact the framework gives about the model it built for ``inference``'s input (its layer
        shapes, how many variables it created), kept beside the cached inference: equal specs on equal inputs are
        built by the same builders into the same native modules, so the framework's answer is the same; a builder
        registered since is a new key. Errors are not kept."""
        entry = self._entry(inference)
        if entry is None:
            return ask()
        key = (what, abstract, generation())
        if key not in entry[1]:
            entry[1][key] = ask()
        return entry[1][key]

    # ---------------------------------------------------------------- templates (torch, nnx: template.py)
    def _template_context(self) -> Any:
        """What besides the builders changes what a backend builds for equal specs on equal inputs (torch: the
        default dtype); part of a template's key."""
        return None

    def _template_key(self, abstract: bool) -> tuple:
        return ("template", abstract, generation(), self._template_context())

    def _template(self, inference: Inference, shape_only: bool) -> Any:
        """The template kept for ``inference``'s input, or None: the one of a concrete init, or where only shapes
        are needed (an abstract init) also the one of an abstract init."""
        entry = self._entry(inference)
        if entry is None:
            return None
        template = entry[1].get(self._template_key(False))
        if not template and shape_only:
            template = entry[1].get(self._template_key(True))
        return template or None

    def _template_turn(self, inference: Inference, abstract: bool) -> bool:
        """Whether this init keeps a template (then ``_keep_template``): the first init of an input only marks it (an
        input initialized once pays for no copy), the second keeps one; never again after that, kept or refused."""
        entry = self._entry(inference)
        return entry is not None and _turn(entry[1], self._template_key(abstract))

    def _keep_template(self, inference: Inference, abstract: bool, template: Any) -> None:
        """Keeps ``template`` for ``inference``'s input; None: this model cannot be copied (False: not tried again)."""
        entry = self._entry(inference)
        if entry is not None:
            entry[1][self._template_key(abstract)] = template or False

    def _entry(self, inference: Inference) -> list | None:
        report = inference.report
        entry = self._inferred.get((report.input_shape, as_dtype(report.input_dtype)))
        return entry if entry is not None and entry[0] is inference else None


def _turn(kept: dict, key: tuple) -> bool:
    """The template turns of ``key`` in ``kept``: the first init marks it (None) and keeps nothing, the second keeps
    one (True: the caller then stores the template, or False where none can be made), never again after that."""
    if key not in kept:
        kept[key] = None
        return False
    return kept[key] is None


class TemplateShelf:
    """Templates kept outside a rules entry (graph specs, which have no ``RulesCache``), by a key of everything
    they depend on; the same turns as ``RulesCache._template_turn``: a key's first init marks it, the second keeps a
    template (or False: none can be made), later ones copy it. Bounded: the oldest key goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        return self._kept.get(key) or None

    def turn(self, key: tuple) -> bool:
        """Whether the init under ``key`` keeps a template (then ``keep``)."""
        with self._lock:
            if key not in self._kept and len(self._kept) >= self.size:
                self._kept.pop(next(iter(self._kept)))
            return _turn(self._kept, key)

    def keep(self, key: tuple, template: Any) -> None:
        self._kept[key] = template or False

    def templates(self) -> list[Any]:
        return [t for t in self._kept.values() if t]

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


#: abstract inits' templates of graph specs (``torch/graph_module.py``)
GRAPH_TEMPLATES = TemplateShelf(16)


def clear() -> None:
    """Forget every rules answer, framework answer and template kept in this process: the next init of any spec
    is its first (``nox -s bench``'s first-init rows)."""
    with _SHARED_LOCK:
        _SHARED.clear()
    GRAPH_TEMPLATES.clear()
