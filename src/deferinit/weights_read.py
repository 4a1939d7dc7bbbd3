"""Reading weight files without trusting them: every size a file declares is checked before it is used.

The ``.npy`` header of each ``.npz`` member is read first (inflating only those bytes: numpy's own reader would
allocate and inflate whatever a header claims); a safetensors file's JSON header is bounded, parsed strictly
(no ``Infinity``, no floats or negative numbers for sizes, no duplicate keys) and its tensors must tile the data
section exactly, as the ``safetensors`` package requires. The declared names and shapes are compared with the
spec's (``expected``) and their total with the memory there is, and only then is each tensor allocated once and
filled from exactly its declared bytes: a zip bomb or a header claiming terabytes is refused up front.
"""

from __future__ import annotations

import ast
import json
import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

from .errors import DeferInitError, DTypeError, ResourceError, ShapeMismatchError, WeightsError, fmt_shape

__all__ = ["read_npz", "read_safetensors"]

_ST_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
              "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}
_ST_NO_NUMPY = {"BF16", "BOOL", "F8_E4M3", "F8_E5M2"}  # valid safetensors dtypes with no real numpy equivalent
_ST_MAX_HEADER = 100_000_000  # the safetensors package refuses larger headers too
_NPY_MAX_HEADER = 10_000      # numpy's own max_header_size
_CHUNK = 1 << 18

try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: zipfile then cannot inflate such members either
    LZMAError = OSError  # type: ignore[misc, assignment]
# what zipfile and the decompressors raise on damaged archives (RuntimeError: encrypted members)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, LZMAError, RuntimeError, ValueError,
               OSError, struct.error, UnicodeDecodeError, OverflowError)


def _open_regular(path: Path) -> IO[bytes]:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise WeightsError(f"{path}: expected an existing weight file, received a path that does not exist") from None
    except OSError as exc:
        raise WeightsError(f"{path}: expected a readable weight file, received one that cannot be opened "
                           f"({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise WeightsError(f"{path}: expected a regular weight file, received {kind}")
    return os.fdopen(fd, "rb")


def _memory_limit() -> int | None:
    """80% of the memory available now, and of this process's own data/address-space limits."""
    from .adapters.compiled import available_memory

    have = available_memory()
    caps = [int(0.8 * have)] if have else []
    try:
        import resource

        for which in (resource.RLIMIT_DATA, resource.RLIMIT_AS):
            soft = resource.getrlimit(which)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                caps.append(int(0.8 * soft))
    except (ImportError, ValueError, OSError, AttributeError):
        pass
    return min(caps) if caps else None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _check_declared(path: Path, declared: Mapping[str, tuple[tuple[Any, ...], np.dtype]], expected: Mapping[str, Any] | None,
                    max_bytes: int | None) -> None:
    """Names and shapes against the spec, then the total against the memory there is: before any allocation."""
    if expected is not None:
        missing = [n for n in expected if n not in declared]
        extra = [n for n in declared if n not in expected]
        if missing or extra:
            parts = (["missing " + ", ".join(f"'{n}' {fmt_shape(expected[n])}" for n in missing)] if missing else []) + \
                    (["unexpected " + ", ".join(f"'{n}' {fmt_shape(declared[n][0])}" for n in extra)] if extra else [])
            raise WeightsError(f"{path}: expected exactly the spec's parameters, received {'; '.join(parts)}; "
                               f"nothing was read")
        for name, (shape, dtype) in declared.items():
            if shape != tuple(expected[name]):
                raise ShapeMismatchError(f"{path}: tensor '{name}' expected shape {fmt_shape(expected[name])}, "
                                         f"received {fmt_shape(shape)} {dtype} "
                                         f"({_size(math.prod(shape) * dtype.itemsize)}); nothing was read")
    sizes = {name: math.prod(shape) * dtype.itemsize for name, (shape, dtype) in declared.items()}
    limit = max_bytes if max_bytes is not None else _memory_limit()
    total = sum(sizes.values())
    if limit is not None and total > limit:
        big = max(sizes, key=sizes.__getitem__)
        have = f"max_bytes={limit:,}" if max_bytes is not None else f"the {_size(limit)} of memory available"
        raise ResourceError(f"{path}: the tensors declare {_size(total)} (largest '{big}' "
                            f"{fmt_shape(declared[big][0])} {declared[big][1]}), more than {have}; nothing was read "
                            f"(load_weights(..., max_bytes=N) sets the limit)")


def _alloc(path: Path, name: str, shape: tuple[Any, ...], dtype: np.dtype, fortran: bool = False) -> np.ndarray:
    try:
        return np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    except (MemoryError, ValueError) as exc:
        raise ResourceError(f"{path}: tensor '{name}' {fmt_shape(shape)} {dtype} "
                            f"({_size(math.prod(shape) * dtype.itemsize)}) could not be allocated "
                            f"({type(exc).__name__}); nothing was read") from None


def _fill(fh: IO[bytes], buf: np.ndarray, nbytes: int) -> None:
    """Exactly ``nbytes`` into ``buf``, in chunks (a file that ends early is an EOFError)."""
    view, pos = buf.data, 0  # the array's own buffer (memoryview(buf))
    while pos < nbytes:
        # an open file and a zip member both read into a buffer; typing.IO does not declare readinto
        got = fh.readinto(view[pos:min(nbytes, pos + _CHUNK)])  # type: ignore[attr-defined]
        if not got:
            raise EOFError(f"{nbytes - pos:,} of {nbytes:,} bytes missing")
        pos += got


def _real_dtype(path: Path, name: str, dtype: np.dtype) -> np.dtype:
    if dtype.hasobject:
        raise WeightsError(f"{path}: tensor '{name}' holds Python objects, which cannot be read without pickle "
                           f"(deferinit never unpickles); expected plain numeric arrays")
    if dtype.kind not in "fiu" or dtype.fields:
        raise DTypeError(f"{path}: tensor '{name}' expected real numbers (float or int), received dtype {dtype}")
    return dtype


def _npy_header(path: Path, name: str, fh: IO[bytes]) -> tuple[tuple[Any, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and header length of a ``.npy`` stream, reading the header bytes only
    (numpy's own reader would read a header of any declared length before checking it)."""
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise WeightsError(f"{path}: member '{name}' expected a .npy array, received {magic[:8]!r}...")
    fmt, pre = ("<H", 10) if magic[6] == 1 else ("<I", 12)
    (hlen,) = struct.unpack(fmt, fh.read(pre - 8).ljust(pre - 8, b"\0"))
    if hlen > _NPY_MAX_HEADER:
        raise WeightsError(f"{path}: tensor '{name}' declares a {hlen:,}-byte .npy header, expected at most "
                           f"{_NPY_MAX_HEADER:,}")
    try:
        d = ast.literal_eval(fh.read(hlen).decode("latin1" if magic[6] < 3 else "utf8"))
        shape, fortran = d["shape"], d["fortran_order"]
        if set(d) != {"descr", "fortran_order", "shape"} or not isinstance(shape, tuple) or \
                not all(type(s) is int and s >= 0 for s in shape) or not isinstance(fortran, bool):
            raise ValueError(f"{d!r}")
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except (SyntaxError, ValueError, TypeError, KeyError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: tensor '{name}' expected a .npy header {{'descr', 'fortran_order', 'shape'}}, "
                           f"received one numpy cannot use ({type(exc).__name__}: {str(exc)[:200]})") from None
    return tuple(shape), _real_dtype(path, name, dtype), fortran, pre + hlen


def read_npz(path: Path, expected: Mapping[str, Any] | None = None, max_bytes: int | None = None
              ) -> dict[str, np.ndarray]:
    with _open_regular(path) as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise WeightsError(f"{path}: expected an .npz archive, received a single .npy array (write weights "
                               f"with deferinit.save_weights or numpy.savez)")
        fh.seek(0)
        name = None
        try:
            with zipfile.ZipFile(fh) as zf:
                members: dict[str, tuple[zipfile.ZipInfo, tuple[Any, ...], np.dtype, bool, int]] = {}
                for info in zf.infolist():
                    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if name in members or not info.filename.endswith(".npy"):
                        raise WeightsError(f"{path}: expected one .npy member per tensor, received "
                                           f"{'a second' if name in members else 'a member'} '{info.filename}'")
                    with zf.open(info) as member:
                        shape, dtype, fortran, head = _npy_header(path, name, member)
                    if head + math.prod(shape) * dtype.itemsize != info.file_size:
                        raise WeightsError(f"{path}: tensor '{name}' declares {fmt_shape(shape)} {dtype} "
                                           f"({math.prod(shape) * dtype.itemsize:,} bytes) but its archive entry "
                                           f"holds {info.file_size - head:,} bytes of data")
                    members[name] = (info, shape, dtype, fortran, head)
                name = None
                _check_declared(path, {n: (m[1], m[2]) for n, m in members.items()}, expected, max_bytes)
                out = {}
                for name, (info, shape, dtype, fortran, head) in members.items():
                    arr = _alloc(path, name, shape, dtype, fortran)
                    with zf.open(info) as member:
                        member.read(head)
                        _fill(member, arr.reshape(-1).view(np.uint8), arr.nbytes)
                        member.read(1)  # reaching the end of the entry checks its CRC
                    out[name] = (arr.T if fortran else arr).astype(dtype.newbyteorder("="), copy=False)
                return out
        except DeferInitError:
            raise
        except _ZIP_ERRORS as exc:
            what = f" at tensor '{name}'" if name else ""
            raise WeightsError(f"{path}: expected a complete .npz archive, received a damaged or truncated file"
                               f"{what} ({type(exc).__name__}: {str(exc)[:200]})") from None


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key " + repr(next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))))
    return out


def _st_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique)
    except RecursionError:
        raise WeightsError(f"{path}: expected a safetensors JSON header (3 levels deep), received one nested "
                           f"deeper than the JSON parser allows") from None
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise WeightsError(f"{path}: expected a JSON header at byte 8, received bytes that are not JSON "
                           f"({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: expected a JSON object header at byte 8, received a {type(header).__name__}")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise WeightsError(f"{path}: expected __metadata__ to be a JSON object, received "
                           f"{str(header['__metadata__'])[:100]}")
    return header


def _st_entries(path: Path, header: dict[str, Any], body: int) -> dict[str, tuple[tuple[Any, ...], np.dtype, int]]:
    """name -> (shape, dtype, start) after checking that the tensors tile the data section exactly."""
    out, spans = {}, []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}
        code, shape, offsets = (e.get("dtype"), e.get("shape"), e.get("data_offsets")) if ok else (None, None, None)
        if not (ok and isinstance(code, str) and isinstance(shape, list) and isinstance(offsets, list)
                and len(offsets) == 2 and all(type(v) is int and v >= 0 for v in shape + offsets)):
            raise WeightsError(f"{path}: tensor '{name}' expected {{dtype: str, shape: [non-negative ints], "
                               f"data_offsets: [start, end]}}, received {str(e)[:200]}")
        if code not in _ST_DTYPES:
            if code in _ST_NO_NUMPY:
                raise DTypeError(f"{path}: tensor '{name}' has dtype {code}, which deferinit does not read "
                                 f"(no numpy equivalent); convert it to F32")
            raise WeightsError(f"{path}: tensor '{name}' expected a safetensors dtype, received {code!r}")
        dtype = np.dtype(_ST_DTYPES[code])
        out[name] = (tuple(shape), dtype, offsets[0])
        spans.append((offsets[0], offsets[1], math.prod(shape) * dtype.itemsize, name))
    cursor = 0
    for start, end, size, name in sorted(spans):
        if start != cursor or end - start != size:
            raise WeightsError(f"{path}: tensor '{name}' expected {size:,} bytes at offset {cursor:,} of the data "
                               f"section, received offsets [{start:,}, {end:,}) (overlapping, gapped or "
                               f"inconsistent ranges)")
        cursor = end
    if cursor != body:
        raise WeightsError(f"{path}: expected a {cursor:,}-byte data section after the header, received "
                           f"{body:,} bytes (truncated, or not a safetensors file)")
    return out


def read_safetensors(path: Path, expected: Mapping[str, Any] | None = None, max_bytes: int | None = None
                      ) -> dict[str, np.ndarray]:
    with _open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            head = fh.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path}: expected a safetensors header length at byte 0, received {len(head)} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _ST_MAX_HEADER):
                raise WeightsError(f"{path}: expected a header of at most {min(size - 8, _ST_MAX_HEADER):,} bytes at "
                                   f"byte 8, received a length of {n:,} (truncated, or not a safetensors file)")
            entries = _st_entries(path, _st_header(path, fh.read(n)), size - 8 - n)
            _check_declared(path, {k: (v[0], v[1]) for k, v in entries.items()}, expected, max_bytes)
            out = {}
            for name, (shape, dtype, start) in entries.items():
                arr = _alloc(path, name, shape, dtype)
                fh.seek(8 + n + start)
                _fill(fh, arr.reshape(-1).view(np.uint8), arr.nbytes)
                out[name] = arr.astype(dtype.newbyteorder("="), copy=False)
            return out
        except (OSError, EOFError) as exc:
            raise WeightsError(f"{path}: expected a readable safetensors file, received one that fails to read "
                               f"({type(exc).__name__}: {exc})") from None
