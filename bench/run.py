"""Benchmarks of deferinit against hand-written native code, one process per backend (``nox -s bench``).

    python bench/run.py --backend torch --out bench/results/torch.json
    python bench/run.py --backend numpy --out bench/results/numpy.json    # reference inference only

Every number that is compared is a ratio measured side by side in this one process (deferinit / native),
with medians over many repetitions: timings on shared machines are noisy, absolute values are not targets.
The hand-written native models live in ``bench/native_<backend>.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

BIG_MLP_LAYERS, BIG_MLP_WIDTH = 24, 8192
SHAPES = {"mlp": (1, 20), "lenet": (1, 1, 28, 28), "resnet18": (1, 1, 96, 96)}
BATCHES = {"mlp": (1, 256), "lenet": (1, 256), "resnet18": (1, 16)}
# the zoo's large models at batch 1: each input's shape and dtype (images small, to keep the runs short)
SEQ = 64
ZOO_INPUTS: dict[str, list[tuple[tuple[int, ...], str]]] = {
    "resnet50": [((1, 3, 64, 64), "float32")], "mobilenet_v2": [((1, 3, 64, 64), "float32")],
    "gpt2": [((1, SEQ), "int64")],                                                    # input_ids
    "bert_base": [((1, SEQ), "int64"), ((1, SEQ), "int64"), ((1,), "int64")]}         # ids, token types, valid lens


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: the shortest timed sample of ``interleaved``: a call shorter than this is timed in blocks of calls
BLOCK_S = 0.002


def interleaved(a: Callable[[], Any], b: Callable[[], Any], repeat: int, warmup: int = 5,
                collect: bool = False) -> tuple[float, float]:
    """Per-call medians of a and b timed alternately, so drifts in machine load hit both alike. Each sample is a
    block of calls lasting at least ``BLOCK_S`` (one call where that already does), and every other sample runs
    b first: single 10-300 us calls timed one by one, a always first, moved the small models' forward ratios by up
    to 0.1 between runs (TensorFlow's MLP at batch 256: 1.10 in a bench of 2026-12-05, 1.03 in blocks of calls).
    ``collect`` (the init rows): Python's garbage is collected, untimed, before each sample. A Gluon block is in a
    reference cycle (its ``_BlockScope``), so a dropped MXNet model, hand-written or not, is freed by the cycle
    collector whenever it next runs, inside whichever side's timing that is: MXNet's ResNet-50 repeat init read
    1.51, 1.10 and 1.27 on three runs of the same code, the deferinit side steady at 360 ms, the native 280-400."""
    if collect:  # what exists now is never garbage of these calls: the collections below skip it (fast)
        gc.collect()
        gc.freeze()
    try:
        return _interleaved(a, b, repeat, warmup, collect)
    finally:
        if collect:
            gc.unfreeze()


def _interleaved(a: Callable[[], Any], b: Callable[[], Any], repeat: int, warmup: int,
                 collect: bool) -> tuple[float, float]:
    for _ in range(warmup):
        a()
        b()
    t0 = time.perf_counter()
    a()
    b()
    block = max(1, int(BLOCK_S / max(time.perf_counter() - t0, 1e-9) * 2))
    ta, tb = [], []

    def timed(fn: Callable[[], Any]) -> float:
        if collect:
            gc.collect()
        t = time.perf_counter()
        for _ in range(block):
            fn()
        return (time.perf_counter() - t) / block

    for i in range(repeat):
        if i % 2:
            tb.append(timed(b))
            ta.append(timed(a))
        else:
            ta.append(timed(a))
            tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Peak resident memory growth in MB while fn runs (Linux: reset the high-water mark first)."""
    def hwm() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = rss()
    out = fn()
    return (hwm() - before) / 2**20, out


def import_cost() -> dict[str, Any]:
    from deferinit.registry import framework_modules

    watched = (*framework_modules(), "numpy")
    code = ("import sys, time; t = time.perf_counter(); import deferinit; dt = time.perf_counter() - t; "
            f"print(dt, ','.join(m for m in {watched!r} if m in sys.modules))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(7)]
    return {"import_ms": statistics.median(float(r[0]) for r in runs) * 1e3,
            "frameworks_imported": runs[0][1] if len(runs[0]) > 1 else ""}


def big_specs() -> dict[str, Any]:
    import deferinit as di

    mlp = di.LazyModel([di.Dense(BIG_MLP_WIDTH, activation="relu") for _ in range(BIG_MLP_LAYERS)])
    d, ffn = 12288, 4 * 12288
    block = lambda: di.Sequential([  # noqa: E731
        di.Residual(di.MultiHeadAttention(d, 96, use_bias=True)), di.LayerNorm(),
        di.Residual(di.Sequential([di.Dense(ffn, activation="gelu"), di.Dense(d)])), di.LayerNorm()])
    transformer = di.LazyModel([block() for _ in range(96)])
    return {"mlp_1.6e9": (mlp, (1, BIG_MLP_WIDTH)), "transformer_1.7e11": (transformer, (1, 2048, d))}


def reference_inference() -> dict[str, Any]:
    import deferinit as di

    out = {}
    for name, (spec, shape) in big_specs().items():
        di.infer_shapes(spec, shape)  # warm
        t = median_time(lambda: di.infer_shapes(spec, shape), repeat=15, warmup=2)  # noqa: B023
        tracemalloc.start()
        report = di.infer_shapes(spec, shape)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[name] = {"params": report.total_params, "infer_ms": t * 1e3, "peak_mb": peak / 2**20}
    return out


_COLD = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {here!r})
import numpy as np
native = __import__("native_" + {backend!r})
x0 = np.random.default_rng(0).standard_normal({shape!r}).astype(np.float32)
t1 = time.perf_counter()
def ready(model):  # every value drawn and on its device, on both sides; nothing read back to the host
    if {backend!r} == "jax":
        import jax
        jax.block_until_ready(model.variables)  # deferinit's deferred draw happens here; jax.jit(net.init)'s is async
    else:
        getattr(native, "settle", lambda made: None)(model)  # MXNet's engine and JAX's CPU client run queued work
if {who!r} == "native":
    t2 = time.perf_counter()
    model = native.MODELS["resnet18"](x0)   # the hand-written model's dry run (JAX: jax.jit(net.init))
    ready(model)
    t3 = time.perf_counter()
    call = lambda: model(native.to_native(x0))
else:
    import deferinit as di
    from deferinit import zoo
    t2 = time.perf_counter()
    model = di.compile(zoo.resnet18(), {backend!r})
    model.apply_init(x0, init={init!r}, key=0)
    ready(model)
    t3 = time.perf_counter()
    call = lambda: model(x0)
native.sync(call())
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "init_s": t3 - t2, "first_forward_s": t4 - t3}}))
"""


def cold_start(backend: str) -> dict[str, Any]:
    """ResNet-18 (1 x 1 x 96 x 96) in fresh processes, medians of 3: the framework's import, then the first init
    that leaves every parameter with its value on its device (deferinit: apply_init with the framework's default
    initializers, and with a portable one; native: the hand-written model's dry run; each waited for: JAX's values
    with ``block_until_ready``, deferinit's deferred draw made by reading ``model.variables``; until 2026-12-05
    deferinit's side also copied every value back to NumPy in the canonical layout, ``export_weights``, which the
    native side did not do), then the first forward. What a user waits for before the first number, JIT compiles included."""
    out: dict[str, Any] = {}
    for who, init in (("native", None), ("deferinit", None), ("deferinit", "xavier_uniform")):
        code = _COLD.format(here=str(HERE), backend=backend, shape=SHAPES["resnet18"], who=who, init=init)
        runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True, env=os.environ.copy()).stdout.strip().splitlines()[-1])
                for _ in range(3)]
        label = who if who == "native" else f"deferinit_{init or 'default'}"
        out[label] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def zoo_inputs(name: str) -> list[Any]:
    """Data for one zoo model: images N(0, 1); token ids in the vocabulary, token types 0/1, full valid lengths."""
    import numpy as np

    rng = np.random.default_rng(0)
    if name in ("resnet50", "mobilenet_v2"):
        return [rng.standard_normal(ZOO_INPUTS[name][0][0]).astype(np.float32)]
    (n, t), _ = ZOO_INPUTS[name][0]
    ids = rng.integers(0, 30522, size=(n, t)).astype(np.int64)  # BERT's vocabulary, the smaller of the two
    if name == "gpt2":
        return [ids]
    return [ids, rng.integers(0, 2, size=(n, t)).astype(np.int64), np.full((n,), t, np.int64)]


def zoo_bench(backend: str, native: Any, quick: bool) -> dict[str, Any]:
    """ResNet-50, MobileNetV2, GPT-2 (12 layers) and BERT-base at batch 1, against the native models of
    ``native.ZOO`` (concrete init: construction and dry run; returns the forward and the framework's own
    parameter count) and ``native.ZOO_ABSTRACT`` (the framework's own shape-only path; returns the count).
    Three figures per model, each deferinit / native measured interleaved: abstract init, concrete init,
    forward; both inits twice: as the first of their spec and input in the process, and as a repeat (after two
    untimed inits: what the torch and nnx backends keep at the second, ``template.py``, is then in use). The
    weights are not shared: each side draws its own, and the bench asserts that both count the same parameters
    (``native.ZOO_COUNT_DIFFERS`` names a native variant that differs, and why)."""
    from deferinit import zoo

    makes = {"resnet50": zoo.resnet50, "mobilenet_v2": zoo.mobilenet_v2, "gpt2": lambda: zoo.gpt2(n_layer=12),
             "bert_base": zoo.bert_base}
    out: dict[str, Any] = {}
    for name, make in makes.items():
        out[name] = zoo_model(name, make, backend, native, quick)
        gc.collect()
    return out


def zoo_model(name: str, make: Callable[[], Any], backend: str, native: Any, quick: bool) -> dict[str, Any]:
    import deferinit as di

    ours_zoo, ours_abstract = getattr(native, "ZOO", {}), getattr(native, "ZOO_ABSTRACT", {})
    notes: dict[str, str] = getattr(native, "ZOO_NOTES", {})
    differs: dict[str, str] = getattr(native, "ZOO_COUNT_DIFFERS", {})
    # init: the median of 3 drops a first call's one-time costs (imports, caches) without a warm-up round, which
    # the big models cannot afford (JAX's jitted init compiles anew for every model); --quick: one warm call
    init_reps, init_warmup, fwd_reps = (1, 1, 5) if quick else (3, 0, 20)
    if not quick and backend in ("torch", "mxnet"):  # no compile per model: more pairs are cheap, and MXNet's big
        init_reps = 7  # inits moved by 0.4 between runs on 3 (ResNet-50 1.51 then 1.10, the same code)
    graph = name in ("gpt2", "bert_base")  # graph specs take a tuple of inputs, one per di.Input
    shapes = ZOO_INPUTS[name]
    arrays = zoo_inputs(name)
    abstract_in = tuple(di.ShapeDtype(s, d) for s, d in shapes) if graph else di.ShapeDtype(*shapes[0])
    x0 = tuple(arrays) if graph else arrays[0]
    entry: dict[str, Any] = {"inputs": [{"shape": list(s), "dtype": d} for s, d in shapes]}
    if name in notes:
        entry["notes"] = notes[name]
    if name not in ours_zoo:
        entry.setdefault("notes", f"no native {name} for {backend} in bench/native_{backend}.py")
        return entry
    # abstract init: deferinit's abstract apply_init vs the framework's own shape-only path
    got: dict[str, Any] = {}
    if name in ours_abstract:
        def native_abstract() -> None:
            got["native"] = ours_abstract[name](shapes)

        def ours_abstract_init() -> None:
            got["deferinit"] = di.compile(make(), backend).apply_init(abstract_in, abstract=True).total_params

        def ours_first_abstract_init() -> None:  # the first of its spec and input in the process
            from deferinit.adapters import rules_cache

            rules_cache.clear()
            ours_abstract_init()

        t_nat, t_di = interleaved(native_abstract, ours_first_abstract_init, repeat=init_reps, warmup=init_warmup, collect=True)
        entry["abstract_first_ratio"] = t_di / t_nat
        lazy_abstract = getattr(native, "ZOO_LAZY_ABSTRACT", {}).get(name)
        if lazy_abstract is not None:  # the framework's own lazy modules dry-run on meta: what a first init runs
            t_lazy, t_di = interleaved(lambda: lazy_abstract(shapes), ours_first_abstract_init,  # noqa: B023
                                       repeat=init_reps, warmup=init_warmup, collect=True)
            entry["abstract_first_lazy_ratio"] = t_di / t_lazy
        for _ in range(2):  # a repeat: the torch and nnx backends keep a template at the second init
            ours_abstract_init()
        t_nat, t_di = interleaved(native_abstract, ours_abstract_init, repeat=init_reps, warmup=init_warmup, collect=True)
        entry.update({"abstract_native_ms": t_nat * 1e3, "abstract_deferinit_ms": t_di * 1e3,
                      "abstract_ratio": t_di / t_nat, "abstract_native_params": int(got["native"]),
                      "abstract_deferinit_params": int(got["deferinit"])})
        if name not in differs:
            assert got["native"] == got["deferinit"], (name, got)
    else:
        entry.update({"abstract_native_ms": None, "abstract_deferinit_ms": None, "abstract_ratio": None})
    got.clear()
    gc.collect()

    # concrete init: deferinit's apply_init (the framework's initializers) vs construction and dry run
    settle = getattr(native, "settle", lambda made: None)

    def native_init() -> None:
        got.pop("native", None)
        got["native"] = ours_zoo[name](arrays)
        settle(got["native"][0])

    def ours_init() -> None:
        got.pop("deferinit", None)
        model = di.compile(make(), backend)
        got["deferinit"] = (model, model.apply_init(x0).total_params)
        settle(model)

    def ours_first_init() -> None:  # the first init of its spec and input in the process: nothing kept from the last
        from deferinit.adapters import rules_cache

        rules_cache.clear()
        ours_init()

    t_nat, t_di = interleaved(native_init, ours_first_init, repeat=init_reps, warmup=init_warmup, collect=True)
    entry.update({"init_first_native_ms": t_nat * 1e3, "init_first_deferinit_ms": t_di * 1e3,
                  "init_first_ratio": t_di / t_nat})
    for _ in range(2):  # a repeat init: the torch and nnx backends keep a template at the second (template.py)
        ours_init()
    t_nat, t_di = interleaved(native_init, ours_init, repeat=init_reps, warmup=init_warmup, collect=True)
    forward, native_params = got.pop("native")
    model, params = got.pop("deferinit")
    entry.update({"init_native_ms": t_nat * 1e3, "init_deferinit_ms": t_di * 1e3, "init_ratio": t_di / t_nat,
                  "native_params": int(native_params), "deferinit_params": int(params)})
    if name in differs:
        entry["count_differs"] = differs[name]
    else:
        assert native_params == params, (name, native_params, params)
    lazy = getattr(native, "ZOO_LAZY", {}).get(name)
    if lazy is not None:  # the same native model built with the framework's lazy modules (torch): its own dry run
        def lazy_init() -> None:
            got.pop("lazy", None)
            got["lazy"] = lazy(arrays)

        t_lazy, t_di = interleaved(lazy_init, ours_init, repeat=init_reps, warmup=init_warmup, collect=True)
        assert got.pop("lazy")[1] == params, name
        got.pop("deferinit")
        entry.update({"init_lazy_native_ms": t_lazy * 1e3, "init_lazy_deferinit_ms": t_di * 1e3,
                      "init_lazy_ratio": t_di / t_lazy})
    # forward at batch 1 on the same data, inference mode on both sides
    xs = [native.to_native(a) for a in arrays]
    ours_in = tuple(xs) if graph else xs[0]
    sync = native.sync
    t_nat, t_di = interleaved(lambda: sync(forward(*xs)), lambda: sync(model(ours_in)), repeat=fwd_reps, warmup=3)
    entry.update({"forward_b1_native_ms": t_nat * 1e3, "forward_b1_deferinit_ms": t_di * 1e3,
                  "forward_b1_ratio": t_di / t_nat})
    return entry


def _initialized(model: Any, x0: Any) -> Any:
    model.apply_init(x0)
    return model


def _first_initialized(make: Callable[[], Any], backend: str, x0: Any) -> Any:
    """``apply_init`` as the first of its spec and input in the process: what every init kept for an equal spec on
    an equal input (the rules' answer, the framework's layer shapes, torch's template) is dropped first."""
    import deferinit as di
    from deferinit.adapters import rules_cache

    rules_cache.clear()
    return _initialized(di.compile(make(), backend), x0)


def backend_bench(backend: str, quick: bool, only: str = "all") -> dict[str, Any]:
    import numpy as np

    import deferinit as di
    from deferinit import zoo

    native = importlib.import_module(f"native_{backend}")
    out: dict[str, Any] = {}
    if only == "zoo":
        out["zoo"] = zoo_bench(backend, native, quick)
        return out
    spec, shape = big_specs()["mlp_1.6e9"]
    # the framework's own abstract path, by hand, then deferinit's abstract apply_init
    t_native = median_time(lambda: native.abstract_mlp(BIG_MLP_LAYERS, BIG_MLP_WIDTH), repeat=3, warmup=1)
    model = di.compile(spec, backend)
    mem, _ = peak_rss_growth(lambda: model.apply_init(di.ShapeDtype(shape), abstract=True))
    t_ours = median_time(lambda: di.compile(spec, backend).apply_init(di.ShapeDtype(shape), abstract=True),
                         repeat=3, warmup=0)
    t_ref = median_time(lambda: di.infer_shapes(spec, shape), repeat=15)
    out["abstract_mlp_1.6e9"] = {"native_abstract_ms": t_native * 1e3, "deferinit_abstract_ms": t_ours * 1e3,
                                 "deferinit_abstract_peak_rss_mb": mem, "reference_infer_ms": t_ref * 1e3,
                                 "reference_speedup_vs_native_abstract": t_native / t_ref}
    out["cold_resnet18"] = cold_start(backend)
    # each side's asynchronous work is waited for inside its own timing (native.settle(what the init made)): MXNet's
    # engine runs its ops in order on one worker thread, and JAX's CPU client its dispatched ops, so work one side
    # left queued was timed in the other's first synchronous step (ResNet-50: MXNet's native dry run left ~110 ms
    # that deferinit's input copy waited for; NNX's ratio was 1.22 without, 1.07 with both sides waiting)
    settle = getattr(native, "settle", lambda made: None)
    for name in ("mlp", "lenet", "resnet18"):
        make = zoo.MODELS[name]
        x0 = np.random.default_rng(0).standard_normal(SHAPES[name]).astype(np.float32)
        # concrete initialization: deferinit's apply_init vs the native dry run of the hand-written model
        # the small models' inits take 0.3-6 ms: 7 interleaved pairs gave medians 1.5x apart between runs on this
        # machine (torch MLP: 1.54 in the last bench, 0.80 as medians of 300 calls each on a loaded machine), so 40
        # pairs after 5 warm ones
        reps, warm = (3, 1) if quick or name == "resnet18" else (40, 5)
        t_init_native, t_init_ours = interleaved(lambda: settle(native.MODELS[name](x0)),  # noqa: B023
                                                 lambda: settle(_initialized(di.compile(make(), backend), x0)),  # noqa: B023
                                                 repeat=reps, warmup=warm, collect=True)
        entry: dict[str, Any] = {"init_native_ms": t_init_native * 1e3, "init_deferinit_ms": t_init_ours * 1e3,
                                 "init_ratio": t_init_ours / t_init_native}
        # the same, each deferinit init the first of its spec and input in the process (nothing kept from the last)
        t_init_native, t_init_ours = interleaved(lambda: settle(native.MODELS[name](x0)),  # noqa: B023
                                                 lambda: settle(_first_initialized(make, backend, x0)),  # noqa: B023
                                                 repeat=reps, warmup=warm, collect=True)
        entry.update({"init_first_native_ms": t_init_native * 1e3, "init_first_deferinit_ms": t_init_ours * 1e3,
                      "init_first_ratio": t_init_ours / t_init_native})
        for batch in BATCHES[name]:
            x = np.random.default_rng(1).standard_normal((batch,) + SHAPES[name][1:]).astype(np.float32)
            model = di.compile(make(), backend)
            model.apply_init(x0, init="xavier_uniform", key=0)
            forward = native.MODELS[name](x0)
            native.load(forward, model)  # same weights, so both do the same arithmetic
            xn = native.to_native(x)
            sync = native.sync
            repeat = 30 if quick else (100 if name != "resnet18" else 40)
            t_nat, t_di = interleaved(lambda: sync(forward(xn)), lambda: sync(model(xn)), repeat=repeat)  # noqa: B023
            entry[f"forward_b{batch}_native_ms"] = t_nat * 1e3
            entry[f"forward_b{batch}_deferinit_ms"] = t_di * 1e3
            entry[f"forward_b{batch}_ratio"] = t_di / t_nat
        out[name] = entry
    out["zoo"] = zoo_bench(backend, native, quick)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--only", choices=("all", "zoo"), default="all",
                        help="zoo: only the zoo's large models (ResNet-50, MobileNetV2, GPT-2, BERT-base)")
    args = parser.parse_args()
    result: dict[str, Any] = {"backend": args.backend, "python": platform.python_version(),
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.backend == "numpy":
        result["import"] = import_cost()
        result["reference"] = reference_inference()
    else:
        result.update(backend_bench(args.backend, args.quick, args.only))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
