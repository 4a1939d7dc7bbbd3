"""Requests too big for the memory there is, or for what a framework can index, are refused with a ResourceError
before any framework code runs: never a segfault, an abort or unbounded growth. Before these checks, in a child
with a 4 GiB heap cap, TensorFlow segfaulted and JAX aborted (``Check failed: buffer_.IsConcrete()``) on a forward
whose output could not be allocated.

Everything that could crash or allocate runs in a child (``run_isolated``) with a heap cap; the child prints
``OK <what>`` for each check that passed, and the test asserts that it exited normally (a signal is a negative
return code) and printed them all. The footprint arithmetic is checked against numbers derived by hand.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pytest

import deferinit as di
from deferinit.resources import available_memory, fmt_bytes, footprint
from deferinit.shapes import infer
from isolated import run_isolated

CAP_MIB = 3072  # the child's heap: every framework imports and runs a small model in well under 1 GiB

PRELUDE = """
import numpy as np, deferinit as di
B = {backend!r}
if B == "torch":  # an inference call outside no_grad keeps every activation for a backward pass (see README)
    import torch; torch.set_grad_enabled(False)
def refused(fn, error, *words):
    try:
        out = fn()
    except di.DeferInitError as exc:
        assert type(exc) is error, (type(exc).__name__, str(exc))
        assert "please report" not in str(exc), str(exc)
        missing = [w for w in words if w not in str(exc)]
        assert not missing, (missing, str(exc))
        print("REFUSED", str(exc))
        return
    raise AssertionError(f"no error, expected {{error.__name__}}: {{out!r}}"[:300])
"""


def child(backend: str, code: str, expect: int, memory_mib: int = CAP_MIB, timeout: float = 240) -> str:
    proc = run_isolated(PRELUDE.format(backend=backend) + code, timeout=timeout, memory_mib=memory_mib)
    report = f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report  # < 0: killed by a signal (segfault, abort)
    assert proc.stdout.count("OK ") == expect, report
    return proc.stdout


# The checks under the default cap share one child per backend (and pytest worker): each child imported its
# framework anew, which was most of the 3.5 s each of these tests took on TensorFlow (2026-12-05, 2-core CI machine).
# Each check runs in a namespace of its own, between BEGIN and END markers; its test asserts its own section: all
# its OK lines, no exception, and a child that exited normally (or, if the child died, the section that it died in).
SHARED_SECTIONS: dict[str, Callable[[str], str]] = {}
_shared_runs: dict[str, tuple[int, str, str]] = {}


def _section(name: str) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    def register(code: Callable[[str], str]) -> Callable[[str], str]:
        SHARED_SECTIONS[name] = code
        return code
    return register


def shared_child(backend: str, name: str, expect: int) -> str:
    """The output of section ``name`` of the backend's shared child (run on the first call in this process)."""
    run = _shared_runs.get(backend)
    if run is None:
        body = ["import gc, traceback"]
        for section, code in SHARED_SECTIONS.items():
            text = code(backend)
            if text:
                body.append(f"print('BEGIN {section}', flush=True)\ntry:\n    exec({text!r}, dict(globals()))\n"
                            f"except BaseException:\n    traceback.print_exc(file=sys.stdout)\n"
                            f"    print('RAISED {section}', flush=True)\ngc.collect()\n"
                            f"print('END {section}', flush=True)")
        proc = run_isolated(PRELUDE.format(backend=backend) + "import sys\n" + "\n".join(body), timeout=480,
                            memory_mib=CAP_MIB)
        run = _shared_runs[backend] = (proc.returncode, proc.stdout, proc.stderr)
    rc, out, err = run
    start, end = out.find(f"BEGIN {name}\n"), out.find(f"END {name}\n")
    report = f"rc={rc}\n{out[start:end + 80][-3000:] if start >= 0 else out[-3000:]}\n{err[-3000:]}"
    assert start >= 0, f"section {name} did not start (the shared child died before it)\n{report}"
    assert end > start, f"section {name} did not finish: the child died in it (rc {rc})\n{report}"
    text = out[start:end]
    assert f"RAISED {name}" not in text, report
    assert text.count("OK ") == expect, report
    assert rc == 0 or out.find("BEGIN ", end) >= 0, report  # a crash after the last section's END is still a crash
    return text


# ------------------------------------------------------------------------------------------------ the estimate
def _fp(layers: list, shape: tuple, dtype: str = "float32"):  # type: ignore[no-untyped-def]
    return footprint(infer(di.LazyModel(layers), shape, dtype=dtype))


def test_footprint_of_a_chain_by_hand() -> None:
    fp = _fp([di.Dense(256), di.ReLU(), di.Dense(10)], (2, 20))
    assert fp.params == fp.grads == 4 * (256 * 20 + 256 + 10 * 256 + 10)
    # input 2x20, then the running layer's input and output: 2x256 -> 2x256 is the widest pair
    assert fp.peak == 4 * (2 * 20) + 4 * (2 * 256 + 2 * 256)
    assert fp.saved == 4 * (2 * 20 + 2 * 256 + 2 * 256 + 2 * 10)  # every output kept for the backward pass
    assert fp.tables == 0 and fp.largest.what == "parameter '0.weight'"


def test_footprint_holds_the_residual_input_and_counts_workspace() -> None:
    # Residual: the caller holds x (4x8); body Dense -> ReLU peaks at two 4x8 tensors; the add needs body + sum
    fp = _fp([di.Residual(di.Sequential([di.Dense(8), di.ReLU()]))], (4, 8))
    assert fp.peak == 4 * 32 + 4 * (32 + 32)
    # attention on (2, 10, 16), 4 heads: q, k, v and the heads' outputs (2x10x16 each), scores and weights 2x4x10x10
    fp = _fp([di.MultiHeadAttention(16, 4)], (2, 10, 16))
    work = 4 * (3 * 320 + 320 + 2 * 2 * 4 * 10 * 10)
    assert fp.peak == 4 * 320 + 4 * 320 + work
    # explicit padding: TensorFlow pads into a copy of (1, 3, 8 + 2 * 2, 8 + 2 * 2)
    fp = _fp([di.Conv2D(4, 3, padding=2)], (1, 3, 8, 8))
    assert fp.peak == 4 * 192 + 4 * (4 * 10 * 10) + 4 * (3 * 12 * 12)


def test_footprint_counts_the_positional_table_and_one_hot_outputs() -> None:
    fp = _fp([di.PositionalEncoding(max_len=10**9)], (2, 5, 8))
    assert fp.tables == 4 * 10**9 * 8 and fp.largest.what == "sinusoidal table"
    assert fp.init == 2 * fp.tables + fp.peak  # built in numpy: the table and its temporaries
    fp = _fp([di.OneHot(2**31)], (2, 3), dtype="int64")
    assert fp.peak == 8 * 6 + 4 * 6 * 2**31 + 8 * 6 * 2**31  # int64 ids, float32 output, torch's int64 one-hot


def test_sizes_print_past_a_float() -> None:
    assert fmt_bytes(3 * 2**30) == "3.0 GiB" and fmt_bytes(10**400) == "about 10^400 bytes"


def test_available_memory_sees_the_process_heap_cap() -> None:
    assert available_memory() is not None
    out = run_isolated("from deferinit.resources import available_memory; print(available_memory())",
                       timeout=60, memory_mib=512).stdout
    assert 0 < int(out) <= 512 * 2**20, out  # MemAvailable alone says the whole machine's free memory


# ------------------------------------------------------------------------------------------------ crashes before
@_section("forward")
def _forward(backend: str) -> str:
    return """
m = di.compile(di.LazyModel([di.Dense(2**16)]), B)
m.apply_init(np.zeros((2, 16), np.float32))
refused(lambda: m.to_numpy(m(np.zeros((2**17, 16), np.float32))), di.ResourceError,
        "layer '0' (Dense) output (131072, 65536)", "32.0 GiB", "nothing was run", "Split the input into batches")
print("OK", "forward refused")
assert m.to_numpy(m(np.ones((3, 16), np.float32))).shape == (3, 65536)
print("OK", "the model still runs")
"""


def test_a_forward_that_cannot_fit_is_refused(backend: str) -> None:
    shared_child(backend, "forward", expect=2)


@_section("init")
def _init(backend: str) -> str:
    return """
oh = di.compile(di.LazyModel([di.OneHot(2**31)]), B)
refused(lambda: oh.apply_init(np.zeros((2, 3), np.int64)), di.ResourceError, "layer '0' (OneHot)", "nothing was allocated")
assert not oh.initialized
print("OK", "OneHot(2**31)")
conv = di.compile(di.LazyModel([di.Conv2D(2, 3, padding=2**20)]), B)
refused(lambda: conv.apply_init(np.zeros((1, 1, 8, 8), np.float32)), di.ResourceError, "layer '0' (Conv2D)")
assert not conv.initialized
print("OK", "Conv2D(padding=2**20)")
big = di.compile(di.LazyModel([di.Dense(3)]), B)
refused(lambda: big.apply_init(di.ShapeDtype((2**40, 20))), di.ResourceError, "(1099511627776, 20)", "apply_init")
print("OK", "a 2**40 dummy batch")
"""


def test_init_whose_activations_cannot_fit_is_refused(backend: str) -> None:
    shared_child(backend, "init", expect=3)


@_section("positional")
def _positional(backend: str) -> str:
    # PyTorch (meta device), MXNet and the reference build no table abstractly; TensorFlow and JAX (linen and NNX,
    # whose report traces the same jax module) build it anyway
    builds_abstractly = backend in ("tensorflow", "jax", "nnx")
    return f"""
pe = di.compile(di.LazyModel([di.PositionalEncoding(max_len=10**9)]), B)
if {builds_abstractly}:
    refused(lambda: pe.apply_init(di.ShapeDtype((2, 5, 8)), abstract=True), di.ResourceError,
            "layer '0' (PositionalEncoding) sinusoidal table (1000000000, 8)", "max_len")
    assert not pe.initialized
else:
    assert pe.apply_init(di.ShapeDtype((2, 5, 8)), abstract=True).output_shape == (2, 5, 8)
print("OK", "abstract")
refused(lambda: pe.apply_init(np.zeros((2, 5, 8), np.float32)), di.ResourceError, "sinusoidal table", "29.8 GiB")
print("OK", "concrete")
"""


def test_positional_table_is_refused_before_it_is_built(backend: str) -> None:
    shared_child(backend, "positional", expect=2)


@_section("training")
def _training(backend: str) -> str:
    # n ReLUs over a 64 MiB activation: inference holds two at a time, a backward pass keeps all n
    return """
from deferinit.resources import available_memory
n = int(available_memory() / 2**26) + 4
m = di.compile(di.LazyModel([di.Dense(1024)] + [di.ReLU() for _ in range(n)]), B)
m.apply_init(np.zeros((1, 16), np.float32))
x = np.ones((2**14, 16), np.float32)
assert m.to_numpy(m(x)).shape == (2**14, 1024)
print("OK", "inference fits")
refused(lambda: m.gradients(x), di.ResourceError, "a training forward and backward on input (16384, 16)",
        "Split the input into batches")
print("OK", "gradients refused")
refused(lambda: m(x, training=True), di.ResourceError, "a training forward and backward")
print("OK", "training call refused")
assert m.to_numpy(m(x[:4], training=True)).shape == (4, 1024)
print("OK", "a smaller batch is not")
"""


def test_training_sized_calls_are_refused_when_inference_fits(backend: str) -> None:
    shared_child(backend, "training", expect=4)


def test_framework_out_of_memory_is_a_resource_error(backend: str) -> None:
    if backend not in ("numpy", "torch"):
        # TensorFlow and JAX crash, and MXNet fails later (asynchronously), when the estimate is bypassed: on them the
        # estimate is what refuses the same call, before the framework allocates
        child(backend, """
m = di.compile(di.LazyModel([di.Dense(2**14)]), B)
m.apply_init(np.zeros((1, 16), np.float32))
refused(lambda: m(np.zeros((2**15, 16), np.float32)), di.ResourceError, "layer '0' (Dense)")
print("OK", "estimated")
""", expect=1, memory_mib=1536)
        return
    # the estimate switched off: the framework's own allocation failure is a user-side limit, not a bug to report
    child(backend, """
m = di.compile(di.LazyModel([di.Dense(2**14)]), B)
m.apply_init(np.zeros((1, 16), np.float32))
m.memory_fraction = 1e9
refused(lambda: m(np.zeros((2**15, 16), np.float32)), di.ResourceError, "forward ran out of memory")
print("OK", "mapped")
""", expect=1, memory_mib=1536)


@_section("limits")
def _limits(backend: str) -> str:
    # memory is not the limit here (memory_fraction switched off); the framework's indexing is
    return {"mxnet": """
m = di.compile(di.LazyModel([di.Dense(2**16)]), B)
m.apply_init(np.zeros((1, 16), np.float32))
m.memory_fraction = 1e9
refused(lambda: m(np.zeros((2**15 + 1, 16), np.float32)), di.ResourceError, "layer '0' (Dense) output (32769, 65536)",
        "2,147,549,184 elements", "USE_INT64_TENSOR_SIZE")
print("OK", "elements")
""", "tensorflow": """
m = di.compile(di.LazyModel([di.OneHot(2**31)]), B)
m.memory_fraction = 1e9
refused(lambda: m.apply_init(di.ShapeDtype((1, 1), "int64"), abstract=True), di.ResourceError,
        "layer '0' (OneHot) output (1, 1, 2147483648)", "one_hot's depth as int32")
print("OK", "elements")
"""}.get(backend, "")


def test_backend_tensor_limits(backend: str) -> None:
    if backend not in ("mxnet", "tensorflow"):
        # only MXNet (2**31 elements per tensor) and TensorFlow (int32 one_hot depth) have such limits: the others
        # declare none, and the 2**63-byte bound of every backend is tested above
        model = di.compile(di.LazyModel([di.Dense(2)]), backend)
        assert model.max_elements is None and model.max_dim is None
        return
    shared_child(backend, "limits", expect=1)


# ------------------------------------------------------------------------------------------------ odd inputs
RAGGED = [
    ([[1.0, 2.0], [3.0]], "x[1] has 1 entries where x[0] has 2"),
    ([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0]]], "x[1][1] has 1 entries where x[0][0] has 2"),
    ([[1.0, 2.0], 3.0], "x[1] is a number where x[0] is a list"),
]


@pytest.mark.parametrize("x,where", RAGGED, ids=["rows", "deep", "mixed"])
def test_ragged_lists_name_where(backend: str, x: list, where: str) -> None:
    model = di.compile(di.LazyModel([di.Dense(3)]), backend)
    for run in (lambda: model.apply_init(x), lambda: model.apply_init(x, abstract=True)):
        with pytest.raises(di.ShapeMismatchError, match=r"expected a rectangular array, received a ragged nested list"
                           ) as info:
            run()
        assert where in str(info.value)
    assert not model.initialized
    model.apply_init(np.zeros((2, 2), np.float32))
    with pytest.raises(di.ShapeMismatchError, match=f"ragged nested list \\({re.escape(where)}\\)"):
        model(x)


def test_bogus_dtype_and_huge_shapes(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Dense(3)]), backend)
    for abstract in (False, True):
        with pytest.raises(di.DTypeError, match=r"received ShapeDtype\(shape=\(2, 20\), dtype='floatish'\)"):
            model.apply_init(di.ShapeDtype((2, 20), "floatish"), abstract=abstract)
        # 2e31 elements: past any framework's int64 sizes, abstract or not
        with pytest.raises(di.ResourceError, match=r"the model input \(10{30}, 20\).*beyond what any framework can "
                                                   r"index \(2\*\*63 bytes\)"):
            model.apply_init(di.ShapeDtype((10**30, 20)), abstract=abstract)
    with pytest.raises(di.DTypeError, match=r"of objects \(an integer beyond int64: 1{31}\)"):
        model.apply_init([[int("1" * 31)] * 20])
    assert not model.initialized
    with pytest.raises(di.ResourceError, match=r"\(10{30}, 20\)"):  # the same from load_weights' input_shape
        model.load_weights({"0.weight": np.zeros((3, 20)), "0.bias": np.zeros(3)}, input_shape=(10**30, 20))
    assert not model.initialized
