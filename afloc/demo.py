"""The demo AFLoc checkpoint: trained on the demo MIMIC-style pairs on first use, then cached.

``ensure_demo_checkpoint()`` returns ``<cache>/models/afloc-demo-<DEMO_MODEL_VERSION>``, a
checkpoint folder (``model.safetensors``, ``config.json``, ``tokenizer/``) plus the training
record (``metrics.csv``, ``train_config.json``). Training (``configs/demo.yaml``, a few
minutes on two CPU cores) happens in a temporary sibling folder that is renamed into place, under
a file lock, so concurrent callers wait for one training and nobody sees a partial folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("afloc.demo")
DEMO_MODEL_VERSION = "2"  # bump when the demo recipe, data or model changes


def demo_checkpoint_dir() -> Path:
    from benchmark.dataset import cache_home

    return cache_home() / "models" / f"afloc-demo-{DEMO_MODEL_VERSION}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_demo_checkpoint(quiet: bool = True) -> Path:
    """The cached demo checkpoint folder, training it first when absent."""
    final = demo_checkpoint_dir()
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(final.parent / f".afloc-demo-{DEMO_MODEL_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final):
            return final
        from .train import load_train_config, train

        run = final.parent / f".afloc-demo-{DEMO_MODEL_VERSION}.run-{os.getpid()}"
        shutil.rmtree(run, ignore_errors=True)
        log.info("training the demo AFLoc model into %s (once; a few minutes on CPU)", final)
        try:
            train(load_train_config("demo"), run, quiet=quiet)
            staged = run / "best"
            for f in ("metrics.csv", "train_config.json"):
                if (run / f).is_file():
                    shutil.copy2(run / f, staged / f)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
        finally:
            shutil.rmtree(run, ignore_errors=True)
    return final
