"""``content_key``: a hashable key equal for two specs exactly when they describe the same model, so that results
depending only on the spec (the reference rules' answer, the memory bound) are shared between equal specs built
separately (``adapters/rules_cache.py``). Layers compare by ``to_dict`` (:class:`deferinit.spec.Layer`), which
serializes; this key reads the attributes directly and sees ties, which values alone do not."""

from __future__ import annotations

from typing import Any

from .spec import Layer

__all__ = ["content_key"]


def content_key(layer: Layer) -> Any:
    """A hashable key equal for two specs exactly when they describe the same model: every attribute of every
    layer, with its type (``1``, ``1.0`` and ``True`` differ; floats by ``repr``, so ``-0.0`` is not ``0.0``), and
    the ties (a layer object met again is keyed by where it was first met, so ``[d, d]`` is not ``[d, copy(d)]``).
    Cheaper than ``to_dict`` (no serialization): results that depend only on the spec can be shared between
    equal specs built separately. ``None`` when some attribute is unhashable (a dict, an array): no sharing."""
    try:
        key = _layer_key(layer, {})
        hash(key)
    except TypeError:
        return None
    return key


_DERIVED = frozenset({"_children", "_depth"})  # set by validate from the fields (Sequential's segments, nesting)


def _layer_key(layer: Any, memo: dict[int, int]) -> Any:
    first = memo.get(id(layer))
    if first is not None:
        return ("tie", first)
    memo[id(layer)] = len(memo)
    plain = getattr(type(layer), "_plain_fields", ())  # a graph spec's inputs, nodes and outputs (graph.GraphModel)
    return (type(layer), tuple((name, _plain_key(value, memo) if name in plain else _value_key(value, memo))
                               for name, value in vars(layer).items() if name not in _DERIVED))


def _plain_key(value: Any, memo: dict[int, int]) -> Any:
    """The key of a field a class declares plain data (``_plain_fields``: lists and dicts of strings, numbers and
    None, checked by its ``validate`` and never mutated once built): dicts are keyed by their sorted items."""
    t = type(value)
    if t is dict:
        return (t, tuple(sorted((k, _plain_key(v, memo)) for k, v in value.items())))
    if t is tuple or t is list:
        return (t, tuple(_plain_key(v, memo) for v in value))
    return _value_key(value, memo)


def _value_key(value: Any, memo: dict[int, int]) -> Any:
    # str, int and None stand for themselves (no other key is one of them, nor a tuple of ints); any other value
    # is keyed with its type first (``(bool, True)`` is not ``1``; ``(float, '1.0')`` is not ``1`` either)
    t = type(value)
    if t is str or t is int or value is None:
        return value
    if t is bool:
        return (t, value)
    if t is float:
        return (t, repr(value))
    if t is tuple or t is list:
        if t is tuple and all(type(v) is int for v in value):  # kernel sizes, strides, paddings: the common case
            return value
        return (t, tuple(_value_key(v, memo) for v in value))
    if isinstance(value, Layer):
        return _layer_key(value, memo)
    # anything else (a dict, an array, a graph spec's symbolic tensors, whose equality may not see ties): no key
    raise TypeError(f"no content key for {t.__name__}")
