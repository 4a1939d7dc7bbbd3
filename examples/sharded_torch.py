"""One spec, initialized sharded on PyTorch: 2 ranks on this machine (gloo), each holding half of every weight.

    python examples/sharded_torch.py --backend torch

Each rank builds the model on the meta device, then holds each weight as a DTensor sharded on dim 0 over a
DeviceMesh, drawing only its own rows; rank 0 checks that the gathered weights are those of an unsharded
apply_init with the same init and key.
"""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

import deferinit as di

SPEC = di.LazyModel([di.Dense(256), di.ReLU(), di.Dense(64), di.ReLU(), di.Dense(10)])
WORLD = 2


def rank_main(rank: int, port: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    model = di.compile(SPEC, "torch")
    sharded = di.shard_init(model, di.ShapeDtype((1, 784)), di.ShardingPlan.fsdp(), {"data": WORLD},
                            init="kaiming_uniform", key=0)
    weight = model.native.get_submodule("0").weight  # a DTensor: this rank holds rows [128 * rank, 128 * rank + 128)
    gathered = model.export_weights()  # a collective: every rank calls it
    y = model(np.ones((2, 784), np.float32))  # each layer gathers its weights for its own forward
    if rank == 0:
        whole = di.compile(SPEC, "torch")
        whole.apply_init(di.ShapeDtype((1, 784)), init="kaiming_uniform", key=0)
        same = all(np.array_equal(gathered[n], w) for n, w in whole.export_weights().items())
        print(f"rank {rank}: local 0.weight {tuple(weight.to_local().shape)} of {tuple(weight.shape)}, "
              f"{sharded.bytes_per_device:,} of {sharded.total_bytes:,} bytes per rank, output {tuple(y.shape)}, "
              f"identical to unsharded: {same}")
    # both ranks leave together, and at once: tearing gloo's group down (destroy_process_group, or the interpreter's
    # shutdown) can abort a rank with "terminate called without an active exception" while one of gloo's threads is
    # still joinable (SIGABRT, seen twice on 2026-12-05 under load, with and without a barrier first; pytorch/pytorch
    # issue 190489); once every rank has passed the barrier no collective is left, so each leaves without teardown
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    mp.spawn(rank_main, args=(port,), nprocs=WORLD)
