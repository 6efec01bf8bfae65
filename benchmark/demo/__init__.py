"""The embedded default data: chest X-ray phantoms with real reports, in every official dataset format.

No real dataset can be downloaded here, so ``generate`` writes each benchmark dataset in its
official on-disk layout (RSNA csv + DICOM, MS-CXR csv/json, CheXlocalize RLE json, COVID
Rural masks, SIIM RLE csv, ChestX-Det10 json, NIH box csv, MIMIC-CXR image + report) from
real material shipped in ``torchxrayvision`` (OpenI reports with MeSH tags, lung masks,
annotation tables). The real loaders, models, metrics and reports then run unchanged.

Importing this package is cheap; the generator's modules load on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DEMO_VERSION = "3"  # bump whenever the generated files change (3: identical on every machine)
DEFAULT_N_TRAIN = 1000
DEFAULT_N_TEST = 200


def generate(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = DEFAULT_N_TRAIN,
             n_test: int = DEFAULT_N_TEST, datasets: Iterable[str] | None = None, progress: bool = True,
             workers: int | None = None) -> dict:
    """Write the demo datasets under ``out_dir`` and return the manifest (also ``out_dir/manifest.json``).

    Deterministic: the same seed and sizes give byte-identical files. ``datasets`` picks a
    subset of the loader names (default: all); ``workers`` defaults to the available cores.
    """
    from benchmark.demo.generator import generate as _generate

    return _generate(out_dir, seed=seed, n_train=n_train, n_test=n_test, datasets=datasets, progress=progress,
                     workers=workers)


def ensure(out_dir: str | os.PathLike, seed: int = 0, **options) -> Path:
    """``out_dir`` with a complete demo collection of this version and seed, generating it when
    needed (into a temporary sibling folder renamed into place). ``options`` go to ``generate``."""
    from benchmark.demo.generator import ensure as _ensure

    return _ensure(out_dir, seed=seed, **options)


def ensure_demo_data(datasets: Iterable[str] | None = None) -> Path:
    """The demo collection the ``demo_*`` datasets read (``benchmark.dataset.demo_root``) holding the
    registered datasets ``datasets`` (default: every set), each generated on first use."""
    from benchmark.dataset import demo_root, demo_set

    sets = None if datasets is None else sorted({demo_set(d) for d in datasets})
    return ensure(demo_root(), seed=0, datasets=sets)


def available() -> list[str]:
    """Names of the demo datasets (the loaders' registry names)."""
    from benchmark.demo.generator import available_sets

    return available_sets()


__all__ = ["DEMO_VERSION", "DEFAULT_N_TRAIN", "DEFAULT_N_TEST", "generate", "ensure", "ensure_demo_data", "available"]
