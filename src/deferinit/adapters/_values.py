"""Weight values of any framework as numpy arrays, for ``load_weights``; no framework is imported here.

A value may be a numpy array, a PyTorch tensor (a ``Parameter`` that requires grad, bfloat16, on another device),
a TensorFlow tensor or Keras variable, a JAX array (or an NNX variable holding one) or an MXNet NDArray. Formats numpy has no dtype for
(bfloat16, the float8 family, as ``ml_dtypes`` or torch hold them) are widened to float32, which holds each of
their values exactly. Values with no data (a torch meta tensor, an uninitialized Keras variable, which would
hand out fresh initializer draws, a ``jax.ShapeDtypeStruct``) are refused, as is anything that cannot be read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeferInitError, DTypeError, WeightsError

__all__ = ["weight_array"]


def weight_array(value: Any, name: str, who: str) -> np.ndarray:
    """``value`` as a numpy array (real numbers or not: the caller checks the dtype); refuse a value with no data."""
    module = type(value).__module__.split(".", 1)[0]
    if module == "flax" and callable(getattr(value, "get_value", None)):  # an NNX variable (nnx.Param): its value
        return weight_array(value.get_value(), name, who)
    try:
        if module == "torch" and hasattr(value, "is_meta"):
            arr = _torch(value, name, who)
        elif module == "keras" and getattr(value, "_value", True) is None:
            raise _no_data(name, who, "an uninitialized Keras variable")
        elif module == "jax" and type(value).__name__ == "ShapeDtypeStruct":
            raise _no_data(name, who, "a jax.ShapeDtypeStruct")
        elif hasattr(value, "asnumpy") and callable(value.asnumpy):  # an NDArray (MXNet's): np.asarray gives objects
            arr = value.asnumpy()
        elif module in ("tensorflow", "keras") and hasattr(value, "numpy"):
            arr = np.asarray(value.numpy())
        else:
            arr = np.asarray(value)
        if arr.dtype.kind == "V" and arr.dtype.names is None:  # ml_dtypes' bfloat16, float8_*: widen exactly
            arr = arr.astype(np.float32)
    except DeferInitError:
        raise
    except Exception as exc:  # a framework's object that cannot be read as an array
        raise DTypeError(f"{who}: parameter '{name}' expected an array of real numbers, received "
                         f"{type(value).__name__} that cannot be read as one ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was changed") from exc
    return arr


def _torch(t: Any, name: str, who: str) -> np.ndarray:
    import torch

    if t.is_meta:
        raise _no_data(name, who, "a torch meta tensor")
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        t = t.dequantize()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bfloat16, float8: numpy has no such dtype
    return t.cpu().resolve_conj().resolve_neg().numpy()


def _no_data(name: str, who: str, what: str) -> WeightsError:
    return WeightsError(f"{who}: parameter '{name}' expected an array of values, received {what}, which has a shape "
                        f"but no data; nothing was changed")
