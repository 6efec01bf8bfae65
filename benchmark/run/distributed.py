"""``afloc-bench run`` under ``torchrun``: each rank runs one shard, rank 0 joins them.

Ranks agree on the run folder (rank 0's), write their shards under ``<run>/shards/rank-<i>``,
meet at a barrier (gloo, so it works on CPU-only machines too) and rank 0 merges. A rank's
device is ``cuda:<LOCAL_RANK>`` when the run's device is ``auto`` and torch sees GPUs.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

# ranks that finish early wait at the barrier for the slowest one: allow a long evaluation
BARRIER_TIMEOUT = timedelta(days=7)


def launched_ranks() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` when launched by torchrun with several processes."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str, local_rank: int) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def run_ranks(cfg: Any) -> tuple[dict[str, Any] | None, Path]:
    """Run this rank's shard; on rank 0 also merge. Returns (merged results or None, run folder)."""
    import torch.distributed as dist

    from benchmark.run.config import default_output_dir
    from benchmark.run.engine import Runner
    from benchmark.run.shards import merge

    rank, world, local = launched_ranks()
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        folder = [str(Path(cfg.output) if cfg.output else default_output_dir())]
        dist.broadcast_object_list(folder, src=0)  # one run folder, rank 0's (a default one has a timestamp)
        out = Path(folder[0])
        shards = [out / "shards" / f"rank-{r}" for r in range(world)]
        shard_cfg = dataclasses.replace(cfg, shard=f"{rank}/{world}", output=str(shards[rank]),
                                        device=rank_device(cfg.device, local), quiet=cfg.quiet or rank != 0)
        Runner(shard_cfg).run()
        dist.barrier()
        state = merge(shards, out) if rank == 0 else None
        dist.barrier()
        return state, out
    finally:
        dist.destroy_process_group()
