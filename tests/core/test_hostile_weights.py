"""Weight files and parity artifacts crafted to hurt: every one is refused with a DeferInitError naming the file
(and the tensor or header field), before anything large is allocated or inflated; parity results that compared
nothing, or compared NaN or complex values, fail.

The big claims (37 GiB, a 2 MB zip bomb inflating to 2 GiB, a 30 GiB sparse file) are read in a child process
whose heap is capped at 1 GiB: numpy's own readers allocate or inflate what the file says and die there.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID
from deferinit.parity import compare_artifacts, load_artifact, make_artifact, save_artifact
from isolated import run_isolated

GiB = 2**30
SPEC = "di.LazyModel([di.Dense(4)])"          # parameters '0.weight' (4, 3) and '0.bias' (4,) on a (2, 3) input
BIAS = np.arange(4, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ file makers
def npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def write_zip(path: Path, entries: list[tuple[str, int, int, int, bytes]]) -> Path:
    """A zip written by hand from (name, method, crc, declared uncompressed size, compressed bytes), zip64 sizes
    where they pass 4 GiB, so that a test can declare what the bytes are not."""
    out, central = bytearray(), bytearray()
    for name, method, crc, usize, comp in entries:
        nm, big = name.encode(), usize >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, usize, len(comp)) if big else b""
        u32, c32, ver = (0xFFFFFFFF, 0xFFFFFFFF, 45) if big else (usize, len(comp), 20)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, ver, 0, method, 0, 0x21, crc, c32, u32, len(nm), len(extra))
        out += nm + extra + comp
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, ver, ver, 0, method, 0, 0x21, crc, c32, u32,
                               len(nm), len(extra), 0, 0, 0, 0, offset) + nm + extra
    start = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0)
    path.write_bytes(bytes(out))
    return path


def stored(name: str, arr: np.ndarray) -> tuple[str, int, int, int, bytes]:
    data = npy_header(arr.shape, arr.dtype.str) + arr.tobytes()
    return name + ".npy", 0, zlib.crc32(data), len(data), data


def claiming_npz(path: Path, shape: tuple, honest_entry: bool = False) -> Path:
    """'0.weight' declares ``shape`` (float32) in its .npy header; its zip entry declares the same size (or, with
    ``honest_entry``, the few bytes it really holds). The file itself is a few hundred bytes."""
    head = npy_header(shape)
    claimed = len(head) + (0 if honest_entry else 4 * int(np.prod(shape, dtype=object)))
    return write_zip(path, [("0.weight.npy", 8, zlib.crc32(head), claimed, deflate(head)), stored("0.bias", BIAS)])


def zip_bomb(path: Path, gib: int = 2) -> Path:
    """A valid .npz whose '0.weight' is ``gib`` GiB of float32 zeros, deflated to about 1 MB per GiB."""
    head, zeros = npy_header((gib * GiB // 4,)), bytes(16 * 2**20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)  # a full flush resets the window: the block repeats
    crc = zlib.crc32(head)
    for _ in range(gib * 64):
        crc = zlib.crc32(zeros, crc)
    stream = first + block * (gib * 64) + c.flush()
    return write_zip(path, [("0.weight.npy", 8, crc, len(head) + gib * GiB, stream), stored("0.bias", BIAS)])


def safetensors(path: Path, header: dict | bytes, body: bytes = b"", size: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + body)
        if size is not None:
            fh.truncate(8 + len(raw) + size)  # sparse: no disk used
    return path


def sparse_safetensors(path: Path, gib: int = 30) -> Path:
    header = {"0.weight": {"dtype": "F32", "shape": [gib * GiB // 4], "data_offsets": [0, gib * GiB]},
              "0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [gib * GiB, gib * GiB + 16]}}
    return safetensors(path, header, size=gib * GiB + 16)


def in_child(code: str, memory_mib: int = 1024, timeout: float = 120) -> str:
    """Run ``code`` (with ``di``, ``np``, ``time`` and ``expect`` at hand) in a child with a capped heap; return
    what it printed. ``expect(fn, Error, *words)`` asserts that fn raises exactly that DeferInitError naming
    each word, and prints the message, the seconds it took and the child's peak RSS."""
    prelude = (
        "import time\nimport numpy as np\nimport deferinit as di\n"
        # VmHWM: this process's own peak RSS. Not ru_maxrss, which Linux carries over from the forking parent
        # through exec, so a child of a test process holding TensorFlow would report the parent's gigabytes
        "def peak_mib():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "    import resource\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "def expect(fn, error, *words):\n"
        "    t = time.perf_counter()\n"
        "    try:\n        fn()\n    except di.DeferInitError as exc:\n"
        "        assert type(exc) is error, (type(exc).__name__, exc)\n"
        "        assert all(w in str(exc) for w in words), (words, str(exc))\n"
        "        rss = peak_mib()\n"
        "        print(f'{type(exc).__name__} {time.perf_counter() - t:.3f}s rss {rss:.0f}MiB: {exc}')\n"
        "    else:\n        raise AssertionError(f'no error, expected {error.__name__}')\n"
    )
    proc = run_isolated(prelude + code, timeout=timeout, memory_mib=memory_mib)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def slowest_and_rss(out: str) -> tuple[float, float]:
    rows = [line.split(":")[0].split() for line in out.splitlines() if " rss " in line]
    return max(float(r[1][:-1]) for r in rows), max(float(r[3][:-3]) for r in rows)


# ------------------------------------------------------------------------------------------------ big claims
def test_npz_claiming_37_gib_is_refused_from_its_headers(tmp_path: Path) -> None:
    liar = claiming_npz(tmp_path / "liar.npz", (37 * GiB // 4,))
    assert liar.stat().st_size < 600  # a few hundred bytes declaring 37 GiB
    short = claiming_npz(tmp_path / "short.npz", (37 * GiB // 4,), honest_entry=True)
    out = in_child(f"""
liar, short = {str(liar)!r}, {str(short)!r}
expect(lambda: di.load_weights(liar), di.ResourceError, liar, "'0.weight'", "37.0 GiB")
expect(lambda: di.load_weights(liar, expected={{"0.weight": (4, 3), "0.bias": (4,)}}), di.ShapeMismatchError,
       liar, "'0.weight'", "(4, 3)", "(9932111872,)")
expect(lambda: di.load_weights(liar, max_bytes=10**6), di.ResourceError, "max_bytes=1,000,000")
expect(lambda: di.load_weights(short), di.WeightsError, short, "'0.weight'", "archive entry holds 0 bytes")
""")
    seconds, rss = slowest_and_rss(out)
    assert seconds < 1 and rss < 300, out


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.npz", gib=2)
    assert bomb.stat().st_size < 3 * 2**20
    out = in_child(f"""
bomb = {str(bomb)!r}
expect(lambda: di.load_weights(bomb), di.ResourceError, bomb, "'0.weight'", "2.0 GiB")
expect(lambda: di.load_weights(bomb, expected={{"0.weight": (4, 3), "0.bias": (4,)}}), di.ShapeMismatchError,
       "'0.weight'", "(4, 3)")
# told to read it all anyway, the 2 GiB allocation fails under the 1 GiB cap: still a ResourceError, not numpy's
expect(lambda: di.load_weights(bomb, max_bytes=4 * 2**30), di.ResourceError, "'0.weight'", "could not be allocated")
""")
    seconds, rss = slowest_and_rss(out)
    assert seconds < 1 and rss < 300, out  # nothing inflated: inflating 2 GiB takes seconds


def test_sparse_safetensors_is_read_by_its_header(tmp_path: Path) -> None:
    sparse = sparse_safetensors(tmp_path / "sparse.safetensors", gib=30)
    assert sparse.stat().st_size > 30 * GiB and sparse.stat().st_blocks * 512 < 2**20
    # a small tensor declared at the head of a 30 GiB file: the rest is never read
    tail = safetensors(tmp_path / "tail.safetensors", {"0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                       size=30 * GiB)
    out = in_child(f"""
sparse, tail = {str(sparse)!r}, {str(tail)!r}
expect(lambda: di.load_weights(sparse), di.ResourceError, sparse, "'0.weight'", "30.0 GiB")
expect(lambda: di.load_weights(sparse, expected={{"0.weight": (4, 3), "0.bias": (4,)}}), di.ShapeMismatchError,
       "'0.weight'", "(4, 3)", "(8053063680,)")
expect(lambda: di.load_weights(tail), di.WeightsError, tail, "16-byte data section", "32,212,254,720 bytes")
""")
    seconds, rss = slowest_and_rss(out)
    assert seconds < 1 and rss < 300, out


def test_model_load_weights_refuses_big_claims_on_every_backend(backend: str, tmp_path: Path) -> None:
    """CompiledModel.load_weights(path) passes its parameter shapes to the reader: each hostile file is refused
    from its headers, and the model keeps its weights."""
    files = [claiming_npz(tmp_path / "liar.npz", (37 * GiB // 4,)), zip_bomb(tmp_path / "bomb.npz", gib=2),
             sparse_safetensors(tmp_path / "sparse.safetensors", gib=30)]
    out = in_child(f"""
model = di.compile({SPEC}, {backend!r})
model.apply_init(np.zeros((2, 3), np.float32), init="xavier_uniform", key=0)
before = model.export_weights()
for path in {[str(p) for p in files]!r}:
    expect(lambda: model.load_weights(path), di.ShapeMismatchError, path, "'0.weight'", "(4, 3)")
    after = model.export_weights()
    assert all(np.array_equal(after[k], before[k]) for k in before)
""", memory_mib=4096, timeout=300)
    seconds, _ = slowest_and_rss(out)
    assert out.count("ShapeMismatchError") == 3 and seconds < 1, out


# ------------------------------------------------------------------------------------------------ malformed files
def st_entry(shape: object = (4,), offsets: object = (0, 16), dtype: object = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


BAD_HEADERS = {
    "Infinity shape": (b'{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 16]}}', "not a JSON number"),
    "NaN offset": (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, NaN]}}', "not a JSON number"),
    "negative shape": ({"w": st_entry(shape=[-2, -2])}, "'w'"),  # 4 elements, as the offsets say
    "float shape": ({"w": st_entry(shape=[4.0])}, "'w'"),
    "bool shape": ({"w": st_entry(shape=[True, 4])}, "'w'"),
    "overflowing shape": ({"w": st_entry(shape=[2**32, 2**32], offsets=[0, 0])}, "'w'"),  # 0 bytes in int64
    "huge int shape": (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}', "not JSON"),
    "overlapping ranges": ({"a": st_entry(), "b": st_entry()}, "overlapping"),
    "gap": ({"a": st_entry(offsets=[0, 8], shape=[2]), "b": st_entry(offsets=[12, 16], shape=[1])}, "'b'"),
    "size mismatch": ({"w": st_entry(shape=[3])}, "'w' expected 12 bytes"),
    "duplicate name": (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "w": '
                       b'{"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "duplicate key"),
    "entry not an object": ({"w": [1, 2]}, "'w'"),
    "extra field": ({"w": dict(st_entry(), more=1)}, "'w'"),
    "unknown dtype": ({"w": st_entry(dtype="F33")}, "'F33'"),
    "metadata not an object": ({"__metadata__": [1], "w": st_entry()}, "__metadata__"),
    "header a list": ([st_entry()], "list"),
    "deep nesting": (b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
    "not utf-8": (b'{"w\xff": 1}', "not JSON"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_malformed_safetensors_headers(tmp_path: Path, case: str) -> None:
    header, words = BAD_HEADERS[case]
    path = safetensors(tmp_path / "w.safetensors", header, np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(di.WeightsError) as info:
        di.load_weights(path)
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)


def test_safetensors_header_length_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(di.WeightsError, match="at most 2 bytes"):
        di.load_weights(path)
    with pytest.raises(di.DTypeError, match="'w' has dtype BF16"):
        di.load_weights(safetensors(path, {"w": st_entry(dtype="BF16", shape=[8])}, bytes(16)))


def test_damaged_npz_files(tmp_path: Path) -> None:
    good = di.save_weights(tmp_path / "good.npz", {"w": np.arange(1000, dtype=np.float32)})
    np.savez_compressed(tmp_path / "deflated.npz", w=np.arange(1000, dtype=np.float32))
    raw = bytearray((tmp_path / "deflated.npz").read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 40] = b"\xff" * 40  # inside the deflate stream: zlib.error from numpy
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(raw))
    npy = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.ones(3))
    (tmp_path / "single.npy").rename(npy)
    flipped = tmp_path / "flipped.npz"  # stored data changed: only the CRC tells
    raw = bytearray(good.read_bytes())
    raw[200] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    complex_npz = write_zip(tmp_path / "complex.npz", [stored("w", np.ones(2, np.complex64))])
    other = write_zip(tmp_path / "other.npz", [("notes.txt", 0, zlib.crc32(b"hi"), 2, b"hi")])
    for path, error, words in [(corrupt, di.WeightsError, "'w'"), (npy, di.WeightsError, "single .npy array"),
                               (flipped, di.WeightsError, "CRC"), (complex_npz, di.DTypeError, "complex64"),
                               (other, di.WeightsError, "'notes.txt'")]:
        with pytest.raises(error) as info:
            di.load_weights(path)
        assert str(path) in str(info.value) and words in str(info.value), str(info.value)


def test_non_regular_and_unreadable_files(tmp_path: Path) -> None:
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(di.WeightsError, match="received a FIFO"):  # and does not wait for a writer
        di.load_weights(fifo)
    dev = tmp_path / "w.npz"
    dev.symlink_to("/dev/zero")
    with pytest.raises(di.WeightsError, match="received a device"):
        di.load_weights(dev)
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(di.WeightsError, match="received a directory"):
        di.load_weights(folder)
    # unreadable: root reads any file, so the child drops to 'nobody' first
    private = Path(os.path.realpath("/tmp")) / f"deferinit-unreadable-{os.getpid()}"
    private.mkdir(exist_ok=True)
    private.chmod(0o755)
    locked = di.save_weights(private / "w.safetensors", {"w": np.ones(2, np.float32)})
    locked.chmod(0o000)
    try:
        out = in_child(f"""
import os
import deferinit.weights  # imported before dropping privileges: 'nobody' may not read the Python install
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
expect(lambda: di.load_weights({str(locked)!r}), di.WeightsError, {str(locked)!r}, "cannot be opened")
""")
        assert "Permission denied" in out, out
    finally:
        locked.unlink()
        private.rmdir()


# ------------------------------------------------------------------------------------------------ saving
class Unconvertible:
    def __array__(self, dtype=None, copy=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("device memory is gone")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_weights_values_that_are_not_arrays(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    for value, words in [([[1.0, 2.0], [3.0]], "'w'"), (Unconvertible(), "device memory is gone"),
                         ({"a": 1}, "'w'"), ("text", "'w'"), (np.ones(2, np.complex64), "complex64"),
                         (np.ones(2, bool), "bool")]:
        with pytest.raises(di.DTypeError) as info:
            di.save_weights(path, {"w": value})
        assert words in str(info.value), str(info.value)
        assert not path.exists() and os.listdir(tmp_path) == []  # refused before anything was written
    with pytest.raises(di.WeightsError, match="could not write"):
        di.save_weights(tmp_path / "missing" / f"w{suffix}", {"w": np.ones(2)})


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_weights_round_trips_names_numpy_would_swallow(tmp_path: Path, suffix: str) -> None:
    """np.savez(file, **weights) takes 'file' and 'allow_pickle' as its own arguments; 0-d arrays, Fortran order,
    big-endian and unsigned integers round-trip."""
    weights = {"file": np.ones(2, np.float32), "allow_pickle": np.zeros(3, np.float32), "s": np.float64(2.5),
               "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "be": np.arange(3, dtype=">i4"),
               "u": np.arange(5, dtype=np.uint16), "empty": np.zeros((0, 3), np.float32), "list": [1.0, 2.0]}
    got = di.load_weights(di.save_weights(tmp_path / f"w{suffix}", weights))
    assert list(got) == list(weights)
    for name, value in weights.items():
        want = np.asarray(value)
        assert got[name].shape == want.shape and got[name].dtype == want.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[name], want)


def test_safetensors_metadata_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(di.WeightsError, match="'__metadata__' is reserved"):
        di.save_weights(tmp_path / "w.safetensors", {"__metadata__": np.ones(2), "w": np.ones(2)})
    with pytest.raises(di.DTypeError, match="float128|longdouble"):
        di.save_weights(tmp_path / "w.safetensors", {"w": np.ones(2, np.longdouble)})


def test_save_weights_takes_framework_tensors(backend: str, tmp_path: Path) -> None:
    """Each framework's own tensors (a torch output that requires grad, an MXNet NDArray...) save as their values."""
    model = di.compile(di.LazyModel([di.Dense(4)]), backend)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    model.apply_init(x, init="xavier_uniform", key=0)
    y = model(x)
    for suffix in (".npz", ".safetensors"):
        got = di.load_weights(di.save_weights(tmp_path / f"y{suffix}", {"y": y}))
        np.testing.assert_array_equal(got["y"], model.to_numpy(y))


# ------------------------------------------------------------------------------------------------ parity artifacts
@pytest.fixture(scope="module")
def ref() -> object:
    case = BY_ID["mlp"]
    return make_artifact(case.make(), "numpy", case.data())


def artifact_with(path: Path, ref: object, meta_edit: object = None, drop: str = "", **arrays: np.ndarray) -> Path:
    save_artifact(ref, path)  # type: ignore[arg-type]
    data = dict(np.load(path))
    meta = json.loads(bytes(data["__meta__"]).decode())
    if callable(meta_edit):
        meta = meta_edit(meta)
    data["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    data.pop(drop, None)
    data.update(arrays)
    np.savez(path, **data)
    return path


MALFORMED = {
    "header a list": (lambda m: [m], "without its JSON header"),
    "no inter_order": (lambda m: {k: v for k, v in m.items() if k != "inter_order"}, "'inter_order'"),
    "inter_order an int": (lambda m: dict(m, inter_order=5), "'inter_order'"),
    "inter_order of ints": (lambda m: dict(m, inter_order=[1, 2]), "'inter_order'"),
    "backend a list": (lambda m: dict(m, backend=["numpy"]), "'backend'"),
    "report garbage": (lambda m: dict(m, report={"format": "deferinit.report"}), "'report'"),
    "report params a list": (lambda m: dict(m, report=dict(m["report"], params=[1])), "'report'"),
    "version 2": (lambda m: dict(m, version=2), "version 2"),
    "init of lists": (lambda m: dict(m, init={"0.weight": [1]}), "'init'"),
    "meta a string": (lambda m: dict(m, meta="x"), "'meta'"),
    "weights not 'redraw'": (lambda m: dict(m, weights="stored"), "'weights'"),
    "redraw of no portable init": (lambda m: dict(m, weights="redraw", meta=dict(m["meta"], init="None")), "'weights'"),
    "redraw with no key": (lambda m: dict(m, weights="redraw", meta={"init": "xavier_uniform"}), "'weights'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_artifact_headers(tmp_path: Path, ref: object, case: str) -> None:
    edit, words = MALFORMED[case]
    path = artifact_with(tmp_path / "a.npz", ref, edit)
    with pytest.raises(di.WeightsError) as info:
        load_artifact(path)
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)


def test_artifact_arrays_are_checked(tmp_path: Path, ref: object) -> None:
    no_input = artifact_with(tmp_path / "a.npz", ref, drop="input")
    with pytest.raises(di.WeightsError, match="no 'input'"):
        load_artifact(no_input)
    complex_out = artifact_with(tmp_path / "b.npz", ref, output=ref.output.astype(np.complex64) + 1j)  # type: ignore[attr-defined]
    with pytest.raises(di.DTypeError, match="'output'.*complex64"):
        load_artifact(complex_out)


def test_complex_and_nan_outputs_fail_parity(ref: object) -> None:
    from dataclasses import replace

    out = ref.output  # type: ignore[attr-defined]
    same_real = replace(ref, backend="complex", output=out.astype(np.complex64) + 1j)  # real parts equal the reference
    nan = replace(ref, backend="nan", output=np.where(np.arange(out.size).reshape(out.shape) == 0, np.nan, out))
    result = compare_artifacts([ref, same_real, nan])
    assert not result.passed
    assert not result.results["complex"].passed and not result.results["nan"].passed
    assert any("nan: output holds NaN/inf" in line for line in result.failures()), result.failures()
    both_nan = replace(ref, output=np.full_like(out, np.nan))
    assert not compare_artifacts([both_nan, replace(both_nan, backend="other")]).passed  # NaN == NaN is no agreement


# ------------------------------------------------------------------------------------------------ parity results
def test_comparing_nothing_fails(tmp_path: Path, ref: object) -> None:
    result = compare_artifacts([ref])
    assert not result.passed and result.to_dict()["passed"] is False
    assert "nothing was compared" in result.failures()[0] and "nothing compared" in str(result)
    alone = di.parity(BY_ID["mlp"].make(), (2, 20), backends=["numpy"])
    assert not alone.passed and "names no framework backend" in alone.failures()[0]


def test_cli_comparing_nothing_exits_1(tmp_path: Path, ref: object) -> None:
    path = save_artifact(ref, tmp_path / "numpy.npz")  # type: ignore[arg-type]
    proc = run_isolated("", args=["-m", "deferinit", "parity", "compare", str(path), "--json"], timeout=60)
    assert proc.returncode == 1 and json.loads(proc.stdout)["passed"] is False, proc.stdout + proc.stderr
    assert "nothing was compared" in json.loads(proc.stdout)["failures"][0]
    spec = Path(__file__).resolve().parents[2] / "examples" / "mlp.json"
    proc = run_isolated("", args=["-m", "deferinit", "parity", "check", str(spec), "--input", "2,20",
                                  "--backends", "numpy"], timeout=60)
    assert proc.returncode == 1 and "FAIL nothing was compared" in proc.stderr, proc.stdout + proc.stderr


def _mlp_gradients_by_hand(ref: object) -> dict[str, np.ndarray]:
    """d sum(y) / d w of Dense(16, relu) -> Dense(4), in float64 from the chain rule."""
    w = {k: v.astype(np.float64) for k, v in ref.weights.items()}  # type: ignore[attr-defined]
    x = ref.input.astype(np.float64)  # type: ignore[attr-defined]
    pre = x @ w["0.weight"].T + w["0.bias"]
    h = np.maximum(pre, 0)
    ones = np.ones((x.shape[0], w["1.weight"].shape[0]))
    dpre = (ones @ w["1.weight"]) * (pre > 0)
    grads = {"0.weight": dpre.T @ x, "0.bias": dpre.sum(0), "1.weight": ones.T @ h, "1.bias": ones.sum(0)}
    return {k: v.astype(np.float32) for k, v in grads.items()}


def test_gradients_are_compared_pairwise_and_with_finite_differences(ref: object) -> None:
    """No anchor compared with nothing: every framework's gradients are compared with every other framework's and
    with the reference's own finite differences, so a single framework is still checked; '-' only where a pair
    was not compared."""
    from dataclasses import replace

    grads = _mlp_gradients_by_hand(ref)
    a = replace(ref, backend="a", gradients=grads)
    b = replace(ref, backend="b", gradients={k: v + 1e-7 for k, v in grads.items()})
    both = compare_artifacts([ref, a, b])
    assert both.passed, both.failures()
    for name, other in (("a", "b"), ("b", "a")):
        r = both.results[name]
        assert r.grad_ok is True and r.grad_partner == other and r.grad_fd_ok is True and r.grad_fd_error < 1e-2
    rows = {line.split()[0]: line.split() for line in str(both).splitlines()[2:]}
    assert rows["a"][-3] != "-" and rows["a"][-2] != "-", str(both)
    alone = compare_artifacts([ref, a])
    assert alone.passed and alone.results["a"].grad_ok is None and alone.results["a"].grad_fd_ok is True
    rows = {line.split()[0]: line.split() for line in str(alone).splitlines()[2:]}
    assert rows["a"][-3] == "-" and rows["a"][-2] != "-", str(alone)  # no partner; finite differences compared


@pytest.mark.parametrize("fault", ["scaled", "transposed", "swapped"])
def test_a_wrong_gradient_fails_parity_by_name(ref: object, fault: str) -> None:
    from dataclasses import replace

    grads = _mlp_gradients_by_hand(ref)
    bad = dict(grads)
    if fault == "scaled":
        bad["1.weight"] = grads["1.weight"] * 1.1
    elif fault == "transposed":  # (16, 20) read back as (20, 16) and reshaped: what a wrong layout does
        bad["0.weight"] = grads["0.weight"].T.reshape(grads["0.weight"].shape)
    else:
        bad["0.bias"] = grads["0.bias"][::-1].copy()
    alone = compare_artifacts([ref, replace(ref, backend="wrong", gradients=bad)])
    assert not alone.passed and alone.results["wrong"].grad_fd_ok is False
    assert any("finite differences" in line and "wrong" in line for line in alone.failures()), alone.failures()
    pair = compare_artifacts([ref, replace(ref, backend="right", gradients=grads),
                              replace(ref, backend="wrong", gradients=bad)])
    assert pair.results["right"].grad_fd_ok is True and pair.results["wrong"].grad_fd_ok is False
    assert pair.results["wrong"].grad_ok is False and pair.results["wrong"].grad_partner == "right"
