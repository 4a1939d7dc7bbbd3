"""Canonical weight files: ``.npz`` and ``.safetensors``, read and written without pickle.

The safetensors format is small enough to implement here (an 8-byte little-endian header length, a JSON
header of ``name -> {dtype, shape, data_offsets}``, then the raw little-endian bytes), which keeps the core
free of any dependency but NumPy; files are interchangeable with the ``safetensors`` package's.

Reading trusts nothing a file declares (see :mod:`deferinit.weights_read`); writing converts and checks every
value first and replaces the file only once it is complete.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import numpy as np

from .errors import DTypeError, WeightsError
from .weights_read import _ST_DTYPES, read_npz, read_safetensors

__all__ = ["save_weights", "load_weights"]

_ST_NAMES = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}


# ------------------------------------------------------------------------------------------------ writing
def _as_array(name: str, value: Any) -> np.ndarray:
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, maybe requiring grad or on a GPU
            value = value.detach().cpu()
        elif hasattr(value, "asnumpy"):  # an MXNet NDArray (np.asarray gives an object array)
            value = value.asnumpy()
        arr = np.asarray(value)
    except MemoryError:
        raise
    except Exception as exc:  # whatever a foreign object's __array__ raises
        raise DTypeError(f"save_weights: parameter '{name}' expected an array of real numbers, received a "
                         f"{type(value).__name__} that numpy cannot convert ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"save_weights: parameter '{name}' expected real numbers, received dtype {arr.dtype} "
                         f"(from a {type(value).__name__})")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray would make 0-d arrays 1-d


def _arrays(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(weights, Mapping):
        raise WeightsError(f"save_weights: expected a mapping of names to arrays, received {type(weights).__name__}")
    out = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not name:
            raise WeightsError(f"save_weights: expected non-empty string names, received {name!r}")
        out[name] = _as_array(name, value)
    return out


def _write_npz(fh: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    # what np.savez does, without its keyword arguments: a weight named 'file' or 'allow_pickle' would collide
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _safetensors_writer(path: Path, arrays: Mapping[str, np.ndarray]) -> Callable[[IO[bytes]], None]:
    header: dict[str, Any] = {"__metadata__": {"format": "deferinit"}}
    offset, blobs = 0, []
    for name, arr in arrays.items():
        if name == "__metadata__":
            raise WeightsError(f"{path}: '__metadata__' is reserved in safetensors files; rename that parameter")
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        if le.dtype.str not in _ST_NAMES:
            raise DTypeError(f"{path}: parameter '{name}' has dtype {arr.dtype}, which safetensors cannot store; "
                             f"cast it (float32, float64) or save as .npz")
        header[name] = {"dtype": _ST_NAMES[le.dtype.str], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + le.nbytes]}
        offset += le.nbytes
        blobs.append(le)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(fh: IO[bytes]) -> None:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for blob in blobs:
            fh.write(blob.reshape(-1).view(np.uint8).data)

    return write


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write to a temporary file beside ``path`` and rename it: a failure never leaves half a weight file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{path}: could not write the weight file ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_weights(path: str | Path, weights: Mapping[str, Any]) -> Path:
    """Write canonical weights to ``.npz`` or ``.safetensors`` (chosen by suffix). Values may be numpy arrays or
    any framework's tensors; every value is converted and checked before the file is written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors"):
        raise WeightsError(f"{path}: expected a .npz or .safetensors suffix, received {suffix or '(none)'!r}")
    arrays = _arrays(weights)
    _write_atomic(path, (lambda fh: _write_npz(fh, arrays)) if suffix == ".npz" else _safetensors_writer(path, arrays))
    return path



def load_weights(path: str | Path, *, expected: Mapping[str, Any] | None = None,
                 max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read canonical weights from ``.npz`` or ``.safetensors``. Never unpickles anything.

    ``expected`` (name -> shape): the file must hold exactly these tensors with these shapes, checked from the
    file's headers before any tensor is read. ``max_bytes``: the most tensor data to read (default: 80% of the
    memory available); a file declaring more is refused before anything is allocated.
    """
    path = Path(path)
    if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
        raise WeightsError(f"load_weights: max_bytes expected a non-negative int, received {max_bytes!r}")
    if expected is not None:
        try:
            expected = {name: tuple(int(d) for d in shape) for name, shape in expected.items()}
        except (AttributeError, TypeError, ValueError):
            raise WeightsError(f"load_weights: expected= expected a mapping of names to shapes, received "
                               f"{str(expected)[:200]}") from None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, expected, max_bytes)
    if suffix == ".safetensors":
        return read_safetensors(path, expected, max_bytes)
    raise WeightsError(f"{path}: expected a .npz or .safetensors weight file, received suffix {suffix or '(none)'!r}")
