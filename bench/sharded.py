"""Sharded initialization: deferinit.shard_init against each framework's own hand-written sharded init
(``nox -s distributed``). Same model both sides: LAYERS x Dense(WIDTH, no bias), FSDP-style (every weight cut
on dim 0).

* torch, WORLD ranks on gloo: hand-written = the FSDP2 recipe (build on the meta device, ``fully_shard``,
  ``to_empty``, ``nn.init.uniform_`` on each local shard); deferinit = ``shard_init`` (DTensor per parameter,
  each rank drawing its slice with the counter-based init). Time of the init and peak RSS growth per rank.
* jax, 8 forced CPU devices: hand-written = ``jax.jit(init, out_shardings=NamedSharding(...))`` with
  ``jax.random.uniform``; deferinit = ``shard_init`` (``make_array_from_callback``). Time, median of 3.

    python bench/sharded.py [torch|jax] [--out bench/results/sharded.json]

Prints JSON; the two sides draw different numbers (framework RNG vs deferinit's portable, backend-independent
values), the work and the memory are the same kind.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

LAYERS, WIDTH, WORLD = 8, 4096, 4


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _torch_rank(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import deferinit as di

    dist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data",))
    base = _rss()
    dist.barrier()
    t = time.perf_counter()
    if sys.argv[2] == "native":
        with torch.device("meta"):
            net = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)])
        for layer in net:
            fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        net.to_empty(device="cpu")
        bound = (6 / (2 * WIDTH)) ** 0.5
        with torch.no_grad():
            for p in net.parameters():
                nn.init.uniform_(p.to_local(), -bound, bound)
    else:
        model = di.compile(di.LazyModel([di.Dense(WIDTH, use_bias=False) for _ in range(LAYERS)]), "torch")
        di.shard_init(model, di.ShapeDtype((1, WIDTH)), di.ShardingPlan.fsdp(), mesh, init="xavier_uniform", key=0)
    dist.barrier()
    took = time.perf_counter() - t
    found: list = [None] * WORLD
    dist.all_gather_object(found, (took, _rss() - base))
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"seconds": max(s for s, _ in found), "peak_rss_growth_per_rank": max(m for _, m in found)}, f)
    dist.destroy_process_group()


def bench_torch() -> dict:
    import tempfile

    result = {}
    for side in ("native", "deferinit"):
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, __file__, "torch-ranks", side, tmp.name], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            result[side] = json.load(open(tmp.name))
    return {"torch": result, "world": WORLD}


def bench_jax() -> dict:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import deferinit as di

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data", None))
    bound = (6 / (2 * WIDTH)) ** 0.5

    def init(key):  # type: ignore[no-untyped-def]
        keys = jax.random.split(key, LAYERS)
        return [jax.random.uniform(k, (WIDTH, WIDTH), minval=-bound, maxval=bound) for k in keys]

    native = jax.jit(init, out_shardings=[sharding] * LAYERS)
    spec = di.LazyModel([di.Dense(WIDTH, use_bias=False) for _ in range(LAYERS)])
    times: dict = {"native": [], "deferinit": []}
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(native(jax.random.PRNGKey(0)))
        times["native"].append(time.perf_counter() - t)
        t = time.perf_counter()
        model = di.compile(spec, "jax")
        di.shard_init(model, di.ShapeDtype((1, WIDTH)), di.ShardingPlan.fsdp(), mesh, init="xavier_uniform", key=0)
        jax.block_until_ready(model.variables)
        times["deferinit"].append(time.perf_counter() - t)
    return {"jax": {k: {"seconds_median": statistics.median(v), "seconds": v} for k, v in times.items()},
            "devices": 8}


if __name__ == "__main__":
    if sys.argv[1] == "torch-ranks":
        import torch.multiprocessing as mp

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_torch_rank, args=(port, sys.argv[3]), nprocs=WORLD)
        sys.exit(0)
    which = sys.argv[1:2] or ["torch"]
    found = bench_torch() if which[0] == "torch" else bench_jax()
    found["model"] = f"{LAYERS} x Dense({WIDTH}), {LAYERS * WIDTH * WIDTH * 4 / 2**20:.0f} MiB float32"
    print(json.dumps(found, indent=1))
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            json.dump(found, f, indent=1)
