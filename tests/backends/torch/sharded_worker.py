"""Run as a script by test_sharded_torch.py: ``python sharded_worker.py MODE WORLD OUT``. Spawns WORLD ranks on
localhost (gloo, torch.multiprocessing); rank 0 writes what it found as JSON to OUT.

MODE ``parity``: a small conv/BatchNorm/Dense model sharded FSDP-style; rank 0 compares the gathered weights
with an unsharded ``apply_init`` and the forward with the unsharded model's.
MODE ``memcap``: 8 x Dense(4096) (512 MiB of float32) under an RLIMIT_DATA cap of CAP_MIB above what the rank
held after importing torch, too small for the whole model; each rank reports its shard's checksum.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

CAP_MIB = 320
LAYERS, WIDTH = 8, 4096


def vm_data() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checksum(values: np.ndarray, first: int) -> int:
    """Order-independent and exact: sum of each float32's bits times (its flat index mod 1009 + 1)."""
    flat, total = values.reshape(-1).view(np.uint32), 0
    for at in range(0, flat.size, 1 << 18):  # in blocks: the checksum's own temporaries stay small
        bits = flat[at:at + (1 << 18)].astype(np.int64)
        weights = (np.arange(first + at, first + at + bits.size, dtype=np.int64) % 1009) + 1
        total += int(np.sum(bits * weights, dtype=np.int64))
    return total


def memcap_spec():  # type: ignore[no-untyped-def]
    import deferinit as di

    return di.LazyModel([di.Dense(WIDTH, use_bias=False) for _ in range(LAYERS)])


def worker(rank: int, world: int, port: int, mode: str, out: str) -> None:
    import deferinit as di

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    base = vm_data()
    if mode == "memcap" and os.environ.get("NOCAP") is None:
        resource.setrlimit(resource.RLIMIT_DATA, (base + CAP_MIB * 2**20, base + CAP_MIB * 2**20))
    result: dict = {}
    if mode == "parity":
        spec = di.LazyModel([di.Conv2D(8, 3), di.BatchNorm(), di.ReLU(), di.Flatten(), di.Dense(16), di.LayerNorm(),
                             di.Dense(4)])
        x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
        model = di.compile(spec, "torch")
        report = di.shard_init(model, x, di.ShardingPlan.fsdp(), {"data": world}, init="kaiming_normal", key=3)
        net = model.native
        result["local"] = {n: list(getattr(net.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]).to_local().shape)
                           for n, p in report.params.items() if p.param_axis is not None}
        result["planned"] = {n: list(p.local_shape) for n, p in report.params.items() if p.param_axis is not None}
        got = model.export_weights()  # every rank: full_tensor is a collective
        y = model(x).detach().numpy()
        if rank == 0:
            ref = di.compile(spec, "torch")
            ref.apply_init(x, init="kaiming_normal", key=3)
            want = ref.export_weights()
            result["identical"] = list(want) == list(got) and all(np.array_equal(want[n], got[n]) for n in want)
            result["forward_close"] = bool(np.allclose(ref(x).detach().numpy(), y, rtol=1e-4, atol=1e-5))
    else:
        model = di.compile(memcap_spec(), "torch")
        report = di.shard_init(model, di.ShapeDtype((1, WIDTH)), di.ShardingPlan.fsdp(), {"data": world},
                               init="xavier_uniform", key=7)
        net, total, held = model.native, 0, 0
        for name, _info in report.params.items():
            local = net.get_submodule(name.rpartition(".")[0]).weight.to_local().detach().numpy()
            total += checksum(local, rank * local.size)
            held += local.nbytes
        sums: list = [None] * world
        dist.all_gather_object(sums, (total, held, peak_rss(), vm_data() - base))
        result = {"checksum": sum(s[0] for s in sums), "held": [s[1] for s in sums], "peak_rss": [s[2] for s in sums],
                  "vm_data_growth": [s[3] for s in sums],
                  "bytes_per_device": report.bytes_per_device, "total_bytes": report.total_bytes}
    dist.barrier()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    # every rank has passed the barrier: no collective is left, so leave without tearing gloo's group down, which
    # aborted a rank under load ("terminate called without an active exception", a joinable gloo thread at
    # teardown; CI rehearsal of 2026-12-05, and examples/sharded_torch.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_process_checksum() -> int:
    """The whole model's checksum drawn in row blocks (never the whole of a weight at once)."""
    import deferinit as di

    total = 0
    for i in range(LAYERS):
        for start in range(0, WIDTH, 512):
            block = di.init.XavierUniform().draw((WIDTH, WIDTH), (slice(start, start + 512),), key=7, name=f"{i}.weight")
            total += checksum(block, start * WIDTH)
    return total


if __name__ == "__main__":
    mode, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "single":
        with open(out, "w") as f:
            json.dump({"checksum": single_process_checksum()}, f)
        sys.exit(0)
    if mode == "whole":  # the unsharded model under the same cap: must fail
        cap = vm_data() + CAP_MIB * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        import deferinit as di

        found = {}
        try:
            di.compile(memcap_spec(), "torch").apply_init(di.ShapeDtype((1, WIDTH)), init="xavier_uniform", key=7)
        except MemoryError as exc:  # deferinit's ResourceError, refused before allocating
            found["refused"] = type(exc).__name__ + ": " + str(exc)[:200]
        try:  # and the memory itself: the whole model's float32 values do not fit under the cap
            held = [np.ones((WIDTH, WIDTH), np.float32) for _ in range(LAYERS)]
        except MemoryError:
            found["allocation_failed"] = True
        with open(out, "w") as f:
            json.dump(found, f)
        sys.exit(0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(world, port, mode, out), nprocs=world)
