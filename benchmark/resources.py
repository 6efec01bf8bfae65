"""Data files the package ships, found through the import system so that a wheel installed anywhere
and a checkout read the same files: the dataset cards, prompt sets and split lists (the repository's
``datasets/`` folder, installed as the resource package ``afloc_bench_datasets``) and the paper's
tables (``results/paper/``, installed as ``afloc_bench_paper``) and the shipped demo model weights
(``weights/``, installed as ``afloc_bench_weights``). ``setup.py`` maps the folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DATASETS_PACKAGE = "afloc_bench_datasets"
PAPER_PACKAGE = "afloc_bench_paper"
WEIGHTS_PACKAGE = "afloc_bench_weights"


def package_dir(package: str) -> Path:
    """The folder of resource package ``package`` (a namespace package: data only, no code)."""
    spec = importlib.util.find_spec(package)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(loc).is_dir():  # an editable install also lists a placeholder that is no folder
            return Path(loc)
    raise FileNotFoundError(f"resource package {package!r} is not installed with afloc-bench "
                            "(reinstall the package: pip install afloc-bench, or pip install -e . in a checkout)")


def datasets_dir() -> Path:
    """Dataset cards, prompt sets and split lists: ``<this folder>/<dataset>/card.yaml``."""
    return package_dir(DATASETS_PACKAGE)


def paper_dir() -> Path:
    """The paper's tables as data (``index.yaml`` and one CSV per table)."""
    return package_dir(PAPER_PACKAGE)


def weights_dir() -> Path:
    """Shipped model weights: ``<this folder>/demo/<weights id>/`` with a ``BUILD.json`` each."""
    return package_dir(WEIGHTS_PACKAGE)
