"""The protocol contract: per-sample records first, then pooled aggregates with bootstrap CIs.

The runner calls, per sample, ``grounding_record`` (native grid → metric values) or
``classification_record`` (probability → record), collects the records into one table,
optionally calls ``tune`` on the records of ``tuning_split`` (thresholds are never tuned on
the split that is reported), and finally ``summarize`` on the reported split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.sample import Sample

# Keys of each row ``summarize`` returns.
SUMMARY_KEYS = ("metric", "category", "point", "boot_mean", "lo", "hi", "n")
OVERALL = "all"


class Protocol:
    """Base class. Subclasses set ``name`` and ``version`` and implement the hooks."""

    name: str = ""
    version: int = 1
    tasks: tuple[str, ...] = ("grounding", "classification")
    tuning_split: str | None = None
    uses_negatives: bool = False  # grounding records for samples without ground truth (label 0) too
    scores_arrays: bool = False  # implements ``score_chunk`` (bring-your-own heatmaps, `afloc-bench score`)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def grounding_record(self, grid: np.ndarray, sample: Sample, image_size: tuple[int, int],
                         input_geometry: str) -> dict[str, Any]:
        """Native similarity grid of one (image, prompt) → flat dict of per-sample values."""
        raise NotImplementedError

    def grounding_records(self, grids: Sequence[np.ndarray], samples: Sequence[Sample],
                          image_sizes: Sequence[tuple[int, int] | None], input_geometry: str) -> list[Any]:
        """``grounding_record`` of many maps: one dict per sample, or the ``DataError`` that sample
        raised (the runner reports it as skipped). Protocols may compute them in chunks."""
        from benchmark.dataset import DataError

        out: list[Any] = []
        for grid, sample, size in zip(grids, samples, image_sizes):
            try:
                out.append(self.grounding_record(grid, sample, size, input_geometry))
            except DataError as exc:
                out.append(exc)
        return out

    def classification_record(self, score: float, sample: Sample) -> dict[str, Any]:
        return {"score": float(score)}

    def points_record(self, points: Any, sample: Sample, image_size: tuple[int, int]) -> dict[str, Any] | None:
        """Values for the points a reader marked (the human benchmark); None: this protocol scores no points."""
        return None

    def uses_negatives_for(self, samples: list[Sample]) -> bool:
        """Whether these samples' negatives (label 0, no ground truth) get grounding records."""
        return self.uses_negatives

    def needs_tuning_for(self, samples: list[Sample]) -> bool:
        """Whether ``tune`` must run on ``tuning_split`` before these samples are summarised."""
        return bool(self.tuning_split)

    def score_chunk(self, heatmaps: np.ndarray, masks: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """Per-sample values of heatmaps given with their masks (``scores_arrays`` protocols)."""
        raise NotImplementedError(f"protocol {self.id} cannot score heatmap arrays")

    def tune(self, records: pd.DataFrame) -> dict[str, Any]:
        """Fit protocol parameters (e.g. thresholds) on tuning-split records."""
        return {}

    def summarize(self, records: pd.DataFrame, task: str, *, n_boot: int, seed: int, unit: str,
                  params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Pooled per-sample records → rows with ``SUMMARY_KEYS``; category ``"all"`` is overall."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "doc": (self.__doc__ or "").strip()}


def resolve_protocol(spec: str) -> Protocol:
    """``afloc-compat@1`` exactly, or ``afloc-compat`` meaning its latest version."""
    from benchmark.registry import protocols

    if spec in protocols:
        return protocols.get(spec)()
    if "@" not in spec:
        versions = [n for n in protocols.names() if n.split("@")[0] == spec]
        if versions:
            best = max(versions, key=lambda n: int(n.split("@")[1]))
            return protocols.get(best)()
    return protocols.entry(spec).obj()  # unknown: raises UnknownNameError with suggestions
