"""The Python API (``import afloc_bench``): what the command line does, from a script or notebook.

    import afloc_bench as ab

    run = ab.evaluate(models="afloc,center_prior", datasets="demo_ms_cxr")   # a run folder + its record
    run.table()                       # one row per (dataset, model, task, metric, category)
    run.samples("demo_ms_cxr", "afloc")   # per-sample records (pandas)

    ds = ab.load_dataset("demo_ms_cxr")        # samples(), query(sample), card
    model = ab.load_model("afloc")             # an adapter with its weights loaded
    maps = ab.heatmaps(model, ds.samples()[:4], dataset=ds)   # native similarity grids

    ab.score_heatmaps(maps_224, masks_224, categories, protocol="afloc-compat@1")  # your own maps

Every function goes through the same code as ``afloc-bench run`` and ``afloc-bench score``, so the
numbers are the same as the command line's.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunResult:
    """A finished run: its folder and its record (``results.json``, docs/run-records.md)."""

    folder: Path
    record: dict[str, Any]

    def table(self):
        """The summary as a tidy DataFrame: dataset, model, task, metric, category, point, boot_mean,
        lo, hi, n (one row per cell; CI bounds that are undefined are NaN)."""
        import pandas as pd

        rows = [{"dataset": d, "model": m, **row}
                for d, models in self.record["results"].items() for m, rows in models.items() for row in rows]
        cols = ["dataset", "model", "task", "metric", "category", "point", "boot_mean", "lo", "hi", "n"]
        frame = pd.DataFrame(rows, columns=cols)
        for c in ("point", "boot_mean", "lo", "hi"):
            frame[c] = pd.to_numeric(frame[c], errors="coerce")
        return frame

    def samples(self, dataset: str, model: str):
        """Per-sample records of one (dataset, model) pair (docs/run-records.md lists the columns)."""
        import pandas as pd

        from benchmark.records import record_stem

        path = self.folder / "samples" / f"{record_stem(dataset, model)}.parquet"
        if not path.is_file():
            pairs = sorted(p.stem for p in (self.folder / "samples").glob("*.parquet"))
            raise KeyError(f"{path}: no records of {model!r} on {dataset!r} in this run; it has {pairs}")
        return pd.read_parquet(path)

    @classmethod
    def open(cls, folder: str | Path) -> RunResult:
        """A run folder written earlier (by ``evaluate`` or ``afloc-bench run``)."""
        folder = Path(folder)
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a run folder (no results.json)")
        return cls(folder, json.loads(path.read_text()))


def evaluate(models: str | Sequence[str] = "all", datasets: str | Sequence[str] = "demo", *,
             protocol: str = "afloc-compat@1", output: str | Path | None = None, quiet: bool = True,
             **options: Any) -> RunResult:
    """Run ``models`` on ``datasets`` under ``protocol`` (``afloc-bench run``); ``options`` are the
    other run options by their long names (``n_boot``, ``ckpt={"afloc": PATH}``, ``data_root``,
    ``device``, ``precision``, ``limit``, ``model_options``, ``cache``, ...). Without ``output`` the
    run folder is a new temporary folder (``RunResult.folder``)."""
    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner

    if output is None:
        output = tempfile.mkdtemp(prefix="afloc-bench-run-")
    cfg = RunConfig.from_mapping({"models": models, "datasets": datasets, "protocol": protocol,
                                  "output": str(output), "quiet": quiet, **options}, "evaluate()")
    runner = Runner(cfg)
    record = runner.run()
    return RunResult(runner.out, record)


def load_dataset(name: str, data_root: str | None = None, split: str | None = None, **options: Any):
    """A registered dataset read from its official layout (a demo set is generated when missing)."""
    from benchmark.dataset import build_dataset, is_demo
    from benchmark.demo import ensure_demo_data

    if is_demo(name):
        ensure_demo_data([name])
    return build_dataset(name, data_root, split=split, **options)


def load_model(name: str, checkpoint: str | None = None, device: str = "auto", modality: str | None = None,
               **options: Any):
    """A registered model's adapter with its weights loaded (the demo weights when it has them and
    no ``checkpoint`` is given: those for ``modality``'s datasets, e.g. ``pathology``, where the model
    has its own); ``options`` are its ``--model-option`` keys."""
    from benchmark.adapter import build_adapter
    from benchmark.registry import models as model_registry
    from benchmark.run.config import choose_device

    entry = model_registry.entry(name)
    if checkpoint is None and entry.get("needs_checkpoint", False):
        raise ValueError(f"model {name!r} needs a checkpoint: load_model({name!r}, checkpoint=PATH)")
    adapter = build_adapter(name, modality)
    adapter.options.update(options)
    adapter.load(checkpoint, choose_device(device))
    return adapter


def heatmaps(model: Any, samples: Sequence[Any], *, dataset: Any, prompt_set: str = "simple",
             batch_size: int = 16) -> list[np.ndarray]:
    """Native similarity grids of ``model`` (from ``load_model``) for ``samples`` of ``dataset``,
    each for the sample's own query, read the way ``run`` reads them (no cache; a run batches images
    and prompts differently, which moves the last bits)."""
    from benchmark.io.images import read_image

    model.for_task("grounding")
    out: list[np.ndarray] = []
    for start in range(0, len(samples), batch_size):
        part = list(samples[start:start + batch_size])
        batch = model.collate([model.preprocess(read_image(s.image_path, model.decode)) for s in part])
        if hasattr(batch, "to"):
            batch = batch.to(model.device)
        emb = model.encode_images(batch)
        txt = model.encode_texts([dataset.query(s, prompt_set) for s in part])
        out.extend(np.asarray(model.similarity_map(emb, txt), dtype=np.float32))
    return out


def score_heatmaps(heatmaps: np.ndarray, masks: np.ndarray, categories: Sequence[str], *,
                   protocol: str = "afloc-compat@1", labels: Sequence[int] | None = None,
                   scores: Sequence[float] | None = None, image_ids: Sequence[str] | None = None,
                   n_boot: int = 1000, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Score your own maps (``afloc-bench score``): ``heatmaps`` float [N, H, W] (NaN = not
    evaluated) and ``masks`` int [N, H, W] in the same frame, one category per map; ``options``
    are score's flags (``margin``, ``native_grid``, ``pathology``, ``official_dataset``). Returns
    the same dict as ``score --json``. The arrays go through the command's checks and reader."""
    from benchmark.cli.score import score_file

    arrays: dict[str, np.ndarray] = {"heatmaps": np.asarray(heatmaps), "masks": np.asarray(masks),
                                     "categories": np.asarray(categories, dtype=str)}
    for key, value in (("labels", labels), ("scores", scores), ("image_ids", image_ids)):
        if value is not None:
            arrays[key] = np.asarray(value) if key != "image_ids" else np.asarray(value, dtype=str)
    with tempfile.TemporaryDirectory(prefix="afloc-bench-score-") as tmp:
        path = Path(tmp) / "maps.npz"
        np.savez(path, **arrays)
        result = score_file(str(path), protocol, n_boot=n_boot, seed=seed, **options)
    result["input"] = "arrays"
    return result
