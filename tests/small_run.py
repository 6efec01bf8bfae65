"""A small CheXlocalize + MS-CXR demo run: the shared setup of the tests that compare one process with
several (shards, torchrun ranks, side-by-side jobs). The collection is the ``small_run_demo`` fixture."""

from __future__ import annotations

from pathlib import Path

# CheXlocalize tunes on its val split under afloc-compat@1; MS-CXR has a prompt per phrase
SETS = ["chexlocalize", "ms_cxr"]
DATASETS = "demo_chexlocalize,demo_ms_cxr"


def run_small(out: Path, models: str, *extra: str) -> int:
    """``afloc-bench -q run`` of ``models`` on the small sets (40 replicates, batches of two, no cache)."""
    from benchmark.cli.main import main

    return main(["-q", "run", "--models", models, "--datasets", DATASETS, "--n-boot", "40", "--num-workers", "0",
                 "--batch-size", "2", "--no-cache", "-o", str(out), *extra])
