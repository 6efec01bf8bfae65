"""Demo weights: what a model runs on when no ``--ckpt`` is given, built once by its own recipe.

A model's manifest entry names its demo weights (``demo_weights: gloria-demo-1``) and the
training target that makes them (``train: gloria``). ``ensure_demo_weights`` returns the cached
folder ``<cache>/models/<weights id>``, building it first when absent with the target's
``build_demo`` (for a ``TrainTask``: the task's ``demo`` config on the shared trainer). The id
changes whenever the recipe, the model or the demo data changes, so a stale folder is never used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from benchmark.dataset import cache_home
from benchmark.registry import training

log = logging.getLogger(__name__)


def demo_weights_dir(weights_id: str) -> Path:

    return cache_home() / "models" / weights_id


def ensure_demo_weights(weights_id: str, target: str, quiet: bool = True) -> Path:
    """The folder of demo weights ``weights_id``, built by training target ``target`` when absent."""

    job = training.get(target)()
    final = demo_weights_dir(weights_id)

    def build(work: Path) -> Path:
        log.info("building the demo weights %s with `afloc-bench train %s` (once; a few minutes on CPU)",
                 weights_id, target)
        return Path(job.build_demo(work, quiet))

    return build_once(final, job.demo_complete, build)


def build_once(final: str | os.PathLike, complete: Any, build: Any) -> Path:
    """Cached folder ``final``, made on first use by ``build(workdir) -> folder`` (e.g. training a
    demo model). ``complete(folder) -> bool`` says whether a folder is usable. Concurrent callers
    wait on a file lock and find the finished folder; the folder appears by one rename, so nobody
    sees a partial one, and the work folder is removed whatever happens."""

    final = Path(final)
    if complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(final):
            return final
        work = final.parent / f".{final.name}.run-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            made = Path(build(work))
            if final.exists():
                shutil.rmtree(final)
            os.replace(made, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


DEMO_TRAIN_THREADS = 2  # the demo models' recorded thread count (float summation order changes with it)


class fixed_threads:
    """Run a demo training with ``DEMO_TRAIN_THREADS`` torch threads, whatever the machine, so the
    cached demo models (and the golden figures) come out the same on a laptop and a 64-core box."""

    def __init__(self, n: int = DEMO_TRAIN_THREADS):
        self.n = n

    def __enter__(self):

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):

        torch.set_num_threads(self.before)
        return False
