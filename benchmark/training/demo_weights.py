"""Demo weights: what a model runs on when no ``--ckpt`` is given, shipped with the package.

A model's manifest entry names its demo weights (``demo_weights: gloria-demo-2``) and the
training target that makes them (``train: gloria``). The package ships each set, built once by that
target's demo recipe (``python -m benchmark.training.ship``), under ``weights/demo/<id>/`` with a
``BUILD.json`` (command, commit, environment, sha256 of every file); ``ensure_demo_weights`` returns
it after checking the hashes, so nothing trains on first use and every machine runs the same weights.
Without a shipped set (a recipe being developed) the target's ``build_demo`` builds one into
``<cache>/models/<weights id>`` once. The id changes whenever the recipe, the model or the demo data
changes, so a stale folder is never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from benchmark.dataset import cache_home
from benchmark.io.checkpoints import CheckpointError
from benchmark.registry import training
from benchmark.resources import weights_dir

BUILD_FILE = "BUILD.json"

log = logging.getLogger(__name__)


def demo_weights_dir(weights_id: str) -> Path:

    return cache_home() / "models" / weights_id


def shipped_dir(weights_id: str) -> Path:
    """Where the package keeps demo weights ``weights_id`` (folder names are package names: ``_`` for ``-``)."""

    return weights_dir() / "demo" / weights_id.replace("-", "_")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_demo_weights(weights_id: str) -> Path | None:
    """The shipped folder of ``weights_id`` after checking every file against its ``BUILD.json``,
    or None when the package ships no such set. A file that does not match is an error naming it."""

    folder = shipped_dir(weights_id)
    build = folder / BUILD_FILE
    if not build.is_file():
        return None
    try:
        files = json.loads(build.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(build, f"unreadable build record of the shipped demo weights ({exc})") from None
    for name, sha in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(path, "missing from the shipped demo weights (reinstall afloc-bench)")
        if file_sha256(path) != sha:
            raise CheckpointError(path, "does not match the sha256 in BUILD.json: the shipped demo weights are "
                                        "damaged (reinstall afloc-bench)")
    return folder


def ensure_demo_weights(weights_id: str, target: str, quiet: bool = True, config: str = "demo") -> Path:
    """The folder of demo weights ``weights_id``: the shipped one, else built once by training target
    ``target``'s recipe ``config``."""

    shipped = shipped_demo_weights(weights_id)
    if shipped is not None:
        return shipped
    job = training.get(target)()
    final = demo_weights_dir(weights_id)

    def build(work: Path) -> Path:
        log.warning("the package ships no demo weights %s: building them with `afloc-bench train %s` (recipe %s; "
                    "once; a few minutes on CPU)", weights_id, target, config)
        return Path(job.build_demo(work, quiet, config=config))

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
