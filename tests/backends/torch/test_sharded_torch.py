"""Sharded initialization on PyTorch (issue 14): ranks spawned on localhost with the gloo backend
(``sharded_worker.py``, run in a child so torch.multiprocessing can spawn from a script). Truth: an unsharded
apply_init of the same init and key (bit for bit), the plan's local shapes, and for the memory claim an exact,
order-independent checksum of the whole model drawn in blocks by one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deferinit as di
from isolated import run_isolated

WORKER = str(Path(__file__).with_name("sharded_worker.py"))


def _run(mode: str, world: int, out: Path, timeout: float = 400) -> dict:
    proc = run_isolated("", args=[WORKER, mode, str(world), str(out)], timeout=timeout, memory_mib=None,
                        env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("world", [2, 4])
def test_gathered_shards_are_the_unsharded_weights(world: int, tmp_path: Path) -> None:
    found = _run("parity", world, tmp_path / "out.json")
    assert found["identical"] and found["forward_close"]
    # FSDP preset: conv (8, 3, 3, 3) and dense (16, 128), (4, 16) cut on dim 0; each rank's DTensor local = plan
    assert found["local"] == found["planned"]
    assert found["planned"]["0.weight"] == [8 // world, 3, 3, 3] and found["planned"]["6.weight"] == [4 // world, 16]


def test_a_model_over_one_process_cap_materializes_across_four(tmp_path: Path) -> None:
    whole = _run("whole", 1, tmp_path / "whole.json")  # 512 MiB under a 320 MiB cap
    assert "ResourceError" in whole["refused"] and whole["allocation_failed"]
    sharded = _run("memcap", 4, tmp_path / "memcap.json")
    assert sharded["total_bytes"] == 8 * 4096 * 4096 * 4
    assert sharded["held"] == [8 * 1024 * 4096 * 4] * 4 == [sharded["bytes_per_device"]] * 4  # a quarter each
    single = _run("single", 1, tmp_path / "single.json")
    assert sharded["checksum"] == single["checksum"]


def test_a_mesh_without_a_process_group_is_refused() -> None:
    model = di.compile(di.LazyModel([di.Dense(4)]), "torch")
    with pytest.raises(di.SpecError, match="init_process_group"):
        di.shard_init(model, di.ShapeDtype((1, 3)), di.ShardingPlan.fsdp(), {"data": 2})
    assert not model.initialized
