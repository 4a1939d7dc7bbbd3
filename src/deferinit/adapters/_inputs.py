"""Turning what a user passes as model input (nested lists, scalars, arrays, a ShapeDtype) into a numpy array or a
checked (shape, dtype), with a DeferInitError naming what was received instead of numpy's own errors.

numpy reports a ragged nested list differently by version: 1.24 and later raise ``ValueError: setting an array
element with a sequence. The requested array has an inhomogeneous shape...``; 1.23 warns and builds an array of
Python lists (dtype object). Both become the same ShapeMismatchError here, saying where the list is ragged.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeMismatchError, fmt_shape
from ..shapes import normalize_shape

__all__ = ["as_array", "abstract_input"]


def _is_seq(x: Any) -> bool:
    return isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim > 0)


def _ragged(x: Any) -> str | None:
    """Where a nested list stops being rectangular (``x[1] has 1 entries where x[0] has 2``), or None."""
    level: list[tuple[str, Any]] = [("x", x)]
    while level:
        seqs = [(name, e) for name, e in level if _is_seq(e)]
        if not seqs:
            return None
        if len(seqs) != len(level):
            seq_name = seqs[0][0]
            flat_name = next(name for name, e in level if not _is_seq(e))
            return f"{flat_name} is a number where {seq_name} is a list"
        lengths = [len(e) for _, e in seqs]
        if len(set(lengths)) > 1:
            first = seqs[0]
            other = next((name, e) for name, e in seqs if len(e) != len(first[1]))
            return f"{other[0]} has {len(other[1])} entries where {first[0]} has {len(first[1])}"
        level = [(f"{name}[{i}]", child) for name, e in seqs for i, child in enumerate(e)]
    return None


def as_array(x: Any, backend: str) -> np.ndarray:
    """A numpy array of the input, or a DeferInitError saying what was received."""
    if not (isinstance(x, np.ndarray) or isinstance(x, (list, tuple, int, float, np.number))):
        raise DTypeError(f"the model input expected a numpy array or a {backend} tensor, received {type(x).__name__}")
    if type(x) is np.ndarray:  # already an array (not a subclass): no conversion, no warning to silence
        arr = x
    else:
        arr = _from_python(x)
    if arr.dtype == object:
        where = _ragged(x) if isinstance(x, (list, tuple)) else None
        if where is not None:
            raise ShapeMismatchError(f"the model input expected a rectangular array, received a ragged nested "
                                     f"{type(x).__name__} ({where})")
        bad = next((e for e in arr.flat if not isinstance(e, (float, np.number, bool))), None)
        what = (f"an integer beyond int64: {str(bad)[:40]}" if isinstance(bad, int) else
                f"{type(bad).__name__} values" if bad is not None else "Python objects")
        raise DTypeError(f"the model input expected a numeric array, received a {type(x).__name__} of objects ({what})")
    return arr


def _from_python(x: Any) -> np.ndarray:
    """``np.asarray`` of a list, tuple or scalar; a ragged or unconvertible one is a DeferInitError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy 1.23's VisibleDeprecationWarning for ragged lists
            arr = np.asarray(x)
    except (ValueError, TypeError, OverflowError) as exc:
        where = _ragged(x) if isinstance(x, (list, tuple)) else None
        if where is not None:
            raise ShapeMismatchError(f"the model input expected a rectangular array, received a ragged nested "
                                     f"{type(x).__name__} ({where})") from None
        raise DTypeError(f"the model input expected a numeric array, received a {type(x).__name__} numpy cannot "
                         f"convert ({str(exc).splitlines()[0][:120]})") from None
    return arr


def _shape_text(shape: Any) -> str:
    return fmt_shape(shape) if isinstance(shape, (tuple, list)) else repr(shape)


def abstract_input(shape: Any, dtype: Any) -> tuple[tuple, np.dtype]:
    """The (shape, dtype) of a ShapeDtype, checked."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise DTypeError(f"the model input expected a numpy dtype name (float32, int64...), received "
                         f"ShapeDtype(shape={_shape_text(shape)}, dtype={dtype!r})") from None
    return normalize_shape(shape), dt
