"""A concrete size for an input's varying (None) dims, for a framework step that needs one.

No parameter depends on a varying dim (the reference rules refuse a spec where one would), but a framework's
dry run or symbolic trace still needs a number there: MXNet's ``infer_shape`` reads an unknown dim as 0 and then
cannot size a recurrent layer's or attention's weights behind it; a convolution dry-run on a 1x1 stand-in fails
once its kernel is larger. The smallest power of two that the rules accept everywhere fits every window and
keeps the dry run cheap (a recurrent layer's meta dry run in torch costs ~5 ms per time step).
"""

from __future__ import annotations

from typing import Any

from ..errors import ShapeMismatchError
from ..shapes import Inference, infer

__all__ = ["stand_in"]


def stand_in(spec: Any, inference: Inference, root: Any) -> tuple[int, ...]:
    """``inference``'s input shape with each None dim set to the smallest power of two the rules accept
    (every window fits, no more steps than a PositionalEncoding's max_len)."""
    shape = inference.report.input_shape
    if None not in shape:
        return tuple(shape)
    for size in (2 ** i for i in range(13)):
        trial = tuple(size if d is None else d for d in shape)
        try:
            infer(spec, trial, dtype=inference.report.input_dtype, root=root)
            return trial
        except ShapeMismatchError:
            continue
    return tuple(4096 if d is None else d for d in shape)
