"""The demo AFLoc checkpoint: trained on the demo MIMIC-style pairs on first use, then cached.

``ensure_demo_checkpoint()`` returns ``<cache>/models/afloc-demo-<DEMO_MODEL_VERSION>``, a
checkpoint folder (``model.safetensors``, ``config.json``, ``tokenizer/``) plus the training
record (``metrics.csv``, ``train_config.json``). Training (``configs/demo.yaml``, a few
minutes on two CPU cores) happens in a temporary sibling folder that is renamed into place, under
a file lock, so concurrent callers wait for one training and nobody sees a partial folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("afloc.demo")
DEMO_MODEL_VERSION = "7"  # bump when the demo recipe, data or model changes


def demo_checkpoint_dir() -> Path:
    from benchmark.dataset import cache_home

    return cache_home() / "models" / f"afloc-demo-{DEMO_MODEL_VERSION}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_demo_checkpoint(quiet: bool = True) -> Path:
    """The cached demo checkpoint folder, training it first when absent."""
    from benchmark.cache import build_once, fixed_threads

    def build(work: Path) -> Path:
        from benchmark.training.config import load_train_config
        from benchmark.training.trainer import train

        log.info("training the demo AFLoc model into %s (once; a few minutes on CPU)", demo_checkpoint_dir())
        run = work / "run"
        with fixed_threads():
            train(load_train_config("demo"), run, quiet=quiet)
        staged = run / "best"
        for f in ("metrics.csv", "train_config.json"):
            if (run / f).is_file():
                shutil.copy2(run / f, staged / f)
        return staged

    return build_once(demo_checkpoint_dir(), _complete, build)
