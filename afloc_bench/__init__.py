"""afloc-bench from Python: ``evaluate``, ``load_dataset``, ``load_model``, ``heatmaps``,
``score_heatmaps`` and ``RunResult`` (docs/api.md). The command line ``afloc-bench`` does the same."""

from benchmark import __version__
from benchmark.api import RunResult, evaluate, heatmaps, load_dataset, load_model, score_heatmaps

__all__ = ["RunResult", "__version__", "evaluate", "heatmaps", "load_dataset", "load_model", "score_heatmaps"]
