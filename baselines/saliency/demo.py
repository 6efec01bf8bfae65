"""The demo saliency classifier: trained on the demo MIMIC-style pairs on first use, then cached.

The saliency baselines (Grad-CAM, Grad-CAM++, Eigen-CAM) need a CheXpert-style multi-label
classifier. On the embedded default there is no released one, so the first run trains a small
DenseNet (``arch="tiny"``, 224×224 resized input) on the image-level labels of ``demo_mimic``'s
training split (``mimic-cxr-2.0.0-chexpert.csv``, the report-derived labels, never a box or a
mask) with the fixed recipe below, about three minutes on two CPU cores, and caches it under
``<cache>/models/classifier-demo-<DEMO_CLASSIFIER_VERSION>/classifier.pt``. Training happens in
a temporary sibling folder renamed into place under a file lock, like the demo AFLoc model.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_CLASSIFIER_VERSION = "1"  # bump when the recipe or the demo data changes
RECIPE = {"arch": "tiny", "input_geometry": "resize:224x224", "epochs": 12, "batch_size": 16, "lr": 1e-3,
          "seed": 0, "val_fraction": 0.1}


def demo_classifier_dir() -> Path:
    from benchmark.dataset import cache_home

    return cache_home() / "models" / f"classifier-demo-{DEMO_CLASSIFIER_VERSION}"


def ensure_demo_classifier(quiet: bool = True) -> Path:
    """Path of the cached demo ``classifier.pt``, training it first when absent."""
    from benchmark.cache import build_once

    def build(work: Path) -> Path:
        from baselines.saliency.train import train_classifier
        from benchmark.dataset import demo_root
        from benchmark.demo import ensure

        ensure(demo_root())
        log.info("training the demo saliency classifier into %s (once; a few minutes on CPU)", demo_classifier_dir())
        run = work / "run"
        train_classifier("demo_mimic", None, run, split="train", resume=False,
                         progress=False if quiet else None, **RECIPE)
        (run / "last.pt").unlink(missing_ok=True)  # optimizer state: not needed for inference
        return run

    return build_once(demo_classifier_dir(), lambda f: (f / "classifier.pt").is_file(), build) / "classifier.pt"
