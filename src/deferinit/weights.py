"""Canonical weight files: ``.npz`` and ``.safetensors``, read and written without pickle.

The safetensors format is small enough to implement here (an 8-byte little-endian header length, a JSON
header of ``name -> {dtype, shape, data_offsets}``, then the raw little-endian bytes), which keeps the core
free of any dependency but NumPy; files are interchangeable with the ``safetensors`` package's.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import DTypeError, WeightsError

__all__ = ["save_weights", "load_weights"]

_ST_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
              "U8": "u1", "BF16": None}
_ST_NAMES = {np.dtype(v).str: k for k, v in _ST_DTYPES.items() if v}


def _arrays(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(weights, Mapping):
        raise WeightsError(f"save_weights: expected a mapping of names to arrays, received {type(weights).__name__}")
    out = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not name:
            raise WeightsError(f"save_weights: expected non-empty string names, received {name!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise DTypeError(f"save_weights: parameter '{name}' expected real numbers, received dtype {arr.dtype.name}")
        out[name] = np.ascontiguousarray(arr)
    return out


def save_weights(path: str | Path, weights: Mapping[str, Any]) -> Path:
    """Write canonical weights to ``.npz`` or ``.safetensors`` (chosen by suffix)."""
    path = Path(path)
    arrays = _arrays(weights)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif suffix == ".safetensors":
        header: dict[str, Any] = {"__metadata__": {"format": "deferinit"}}
        offset, blobs = 0, []
        for name, arr in arrays.items():
            le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            data = le.tobytes()
            header[name] = {"dtype": _ST_NAMES[le.dtype.str], "shape": list(arr.shape),
                            "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
            blobs.append(data)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for blob in blobs:
                fh.write(blob)
    else:
        raise WeightsError(f"{path}: expected a .npz or .safetensors suffix, received {suffix or '(none)'!r}")
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise WeightsError(f"{path}: expected an .npz archive, received a single .npy array")
            return {name: data[name] for name in data.files}
    except WeightsError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{path}: expected a complete .npz archive, received a damaged or truncated file "
                           f"({exc})") from None
    except ValueError as exc:  # pickled object arrays, bad .npy headers
        raise WeightsError(f"{path}: expected plain numeric arrays, received content numpy refuses to read "
                           f"without pickle ({exc})") from None
    except OSError as exc:
        raise WeightsError(f"{path}: expected an .npz weight file, received a file that is not one "
                           f"({exc.strerror or exc})") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    if len(raw) < 8:
        raise WeightsError(f"{path}: expected a safetensors header length at byte 0, received {len(raw)} bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise WeightsError(f"{path}: expected a {n}-byte header at byte 8, received a file of {len(raw)} bytes "
                           f"(truncated, or not a safetensors file)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: expected a JSON header at byte 8, received bytes that are not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: expected a JSON object header at byte 8, received {type(header).__name__}")
    body = raw[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: tensor '{name}' expected dtype, shape and data_offsets, received "
                               f"{entry!r} ({type(exc).__name__})") from None
        if dtype is None:
            raise DTypeError(f"{path}: tensor '{name}' has dtype {entry['dtype']}, which deferinit does not read")
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not 0 <= start <= end <= len(body) or end - start != size:
            raise WeightsError(f"{path}: tensor '{name}' expected {size} bytes at offsets [{start}, {end}) of a "
                               f"{len(body)}-byte data section, received a truncated or inconsistent file")
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))
    return out


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read canonical weights from ``.npz`` or ``.safetensors``. Never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: expected an existing weight file, received a path that "
                           f"{'is a directory' if path.is_dir() else 'does not exist'}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    raise WeightsError(f"{path}: expected a .npz or .safetensors weight file, received suffix {suffix or '(none)'!r}")
