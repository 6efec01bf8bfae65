"""Demo checkpoints of the re-implemented baselines, trained on the demo pairs on first use.

``ensure_demo_model("gloria")`` returns ``<cache>/models/gloria-demo-<version>``: the checkpoint
folder the task's ``save`` writes (what ``--ckpt gloria=FOLDER`` loads) plus the training record
(``metrics.csv``, ``train_config.json``). Training runs the task's ``demo`` config
(``baselines/configs/<task>-demo.yaml``) on the shared trainer, in a work folder renamed into
place under a lock (``benchmark.cache.build_once``), as the demo AFLoc model does.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("baselines.demo")

# bump a model's version when its demo recipe, model or data changes
DEMO_VERSIONS = {"gloria": "1", "convirt": "1", "biovil": "1", "medklip": "1"}


def demo_model_dir(task: str) -> Path:
    from benchmark.dataset import cache_home

    return cache_home() / "models" / f"{task}-demo-{DEMO_VERSIONS[task]}"


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "train_config.json").is_file()


def ensure_demo_model(task: str, quiet: bool = True) -> Path:
    """The cached demo checkpoint folder of ``task``, training it first when absent."""
    from benchmark.cache import build_once, fixed_threads

    if task not in DEMO_VERSIONS:
        raise ValueError(f"no demo model for {task!r}; expected one of {sorted(DEMO_VERSIONS)}")

    def build(work: Path) -> Path:
        from benchmark.training.config import load_train_config
        from benchmark.training.trainer import train

        log.info("training the demo %s model into %s (once; a few minutes on CPU)", task, demo_model_dir(task))
        run = work / "run"
        with fixed_threads():
            train(load_train_config("demo", task), run, quiet=quiet)
        staged = run / "best"
        for f in ("metrics.csv", "train_config.json"):
            if (run / f).is_file():
                shutil.copy2(run / f, staged / f)
        return staged

    return build_once(demo_model_dir(task), _complete, build)
