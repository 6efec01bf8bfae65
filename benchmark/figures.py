"""Figures of a run (matplotlib, Agg): CI bar charts and heatmap overlays.

- ``metric_bars``: one panel per dataset, one bar per model with its 95% CI (paper Fig. 2/3 style);
- ``category_bars``: per-pathology bars for one dataset and metric;
- ``overlays``: heatmaps over the image with the ground truth drawn, models side by side
  (paper Fig. 4/5 style), from the grids a run saved in ``heatmaps/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SANITY = ("random", "uniform", "center_prior")
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
FLOOR_COLOR = "#b0b0b0"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(state: dict[str, Any], metric: str, category: str | None = "all") -> list[dict[str, Any]]:
    out = []
    for ds, per_model in state.get("results", {}).items():
        for model, rows in per_model.items():
            for r in rows:
                if r["metric"] == metric and (category is None or r.get("category") == category) \
                        and r.get("point") is not None:
                    out.append({"dataset": ds, "model": model, **r})
    return out


def _model_order(models: set[str]) -> list[str]:
    return sorted(models, key=lambda m: (m in SANITY, m))


def _colors(models: list[str]) -> dict[str, str]:
    real = [m for m in models if m not in SANITY]
    cmap = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(real)}
    cmap.update({m: FLOOR_COLOR for m in models if m in SANITY})
    return cmap


def _errors(rows: list[dict[str, Any]]) -> np.ndarray:
    lo = [max(0.0, r["point"] - r["lo"]) if r.get("lo") is not None else 0.0 for r in rows]
    hi = [max(0.0, r["hi"] - r["point"]) if r.get("hi") is not None else 0.0 for r in rows]
    return np.array([lo, hi])


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def metric_bars(state: dict[str, Any], metric: str, path: str | Path) -> Path | None:
    """Bars of ``metric`` per dataset × model with 95% CI error bars; None if the run lacks it."""
    rows = _rows(state, metric)
    if not rows:
        return None
    plt = _plt()
    datasets = sorted({r["dataset"] for r in rows})
    models = _model_order({r["model"] for r in rows})
    colors = _colors(models)
    ncols = min(4, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.0, 1.0 + 0.55 * len(models)) * ncols, 3.4 * nrows),
                             squeeze=False, sharey=True)
    flat = axes.ravel()
    for ax in flat[len(datasets):]:
        ax.set_visible(False)
    for ax, ds in zip(flat, datasets):
        sub = [next((r for r in rows if r["dataset"] == ds and r["model"] == m), None) for m in models]
        present = [(m, r) for m, r in zip(models, sub) if r is not None]
        x = np.arange(len(present))
        vals = [r["point"] for _, r in present]
        ax.bar(x, vals, color=[colors[m] for m, _ in present], edgecolor="black", linewidth=0.5,
               yerr=_errors([r for _, r in present]), capsize=3, error_kw={"linewidth": 0.8})
        ax.set_xticks(x, [m for m, _ in present], rotation=40, ha="right", fontsize=8)
        ax.set_title(ds, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    for row in axes:
        row[0].set_ylabel(metric)
    limit = f" (limited run: --limit {state['limit']})" if state.get("limit") else ""
    fig.suptitle(f"{metric}, point and 95% CI, protocol {state.get('protocol', {}).get('id', '?')}{limit}",
                 fontsize=10)
    return _save(fig, path, dpi=130)


def category_bars(state: dict[str, Any], dataset: str, metric: str, path: str | Path) -> Path | None:
    """Per-pathology bars of ``metric`` on ``dataset``, one bar per model, with CIs."""
    rows = [r for r in _rows(state, metric, category=None) if r["dataset"] == dataset and r.get("category") != "all"]
    if not rows:
        return None
    plt = _plt()
    cats = sorted({r["category"] for r in rows})
    models = _model_order({r["model"] for r in rows})
    colors = _colors(models)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cats) * max(1, len(models)) * 0.45 + 2), 3.8))
    for i, m in enumerate(models):
        sub = [next((r for r in rows if r["model"] == m and r["category"] == c), None) for c in cats]
        x = np.arange(len(cats)) + (i - (len(models) - 1) / 2) * width
        vals = [np.nan if r is None else r["point"] for r in sub]
        err = _errors([r if r is not None else {"point": 0.0} for r in sub])
        ax.bar(x, vals, width, color=colors[m], edgecolor="black", linewidth=0.4, yerr=err, capsize=2,
               error_kw={"linewidth": 0.6}, label=m)
    ax.set_xticks(np.arange(len(cats)), cats, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: {metric} per pathology (95% CI)", fontsize=10)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(models)), frameon=False)
    return _save(fig, path, dpi=130)


def _load_saved(run_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``heatmaps/<dataset>__<model>.npz`` of a run → {(dataset, model): arrays}."""
    from benchmark.records import parse_stem

    out = {}
    for p in sorted((Path(run_dir) / "heatmaps").glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            out[parse_stem(p.stem)] = {k: z[k] for k in z.files}
    return out


def overlays(run_dir: str | Path, dataset: str, path: str | Path, n_samples: int = 4,
             smooth_sigma: float | None = 1.5) -> Path | None:
    """Image + ground truth + each model's heatmap in original coordinates, models side by side.

    The saved native grids are smoothed (``smooth_sigma`` on the grid, as AFLoc and BioViL do
    for display), upsampled and mapped back to the original image by the model's input
    geometry; NaN (outside the model's view) is left transparent.
    """
    import json

    from benchmark.geometry.frames import parse_geometry, smooth_grid
    from benchmark.geometry.rasterize import sample_mask
    from benchmark.io.images import read_image
    from benchmark.sample import Sample

    saved = {key: d for key, d in _load_saved(Path(run_dir)).items() if key[0] == dataset}
    if not saved:
        return None
    models = _model_order({model for _, model in saved})
    first = saved[(dataset, models[0])]
    ids = [str(s) for s in first["sample_id"][:n_samples]]
    plt = _plt()
    fig, axes = plt.subplots(len(ids), len(models) + 1, figsize=(2.3 * (len(models) + 1), 2.5 * len(ids)),
                             squeeze=False)
    for row, sid in enumerate(ids):
        i0 = list(first["sample_id"]).index(sid)
        sample = Sample.from_dict(json.loads(str(first["sample_json"][i0])))
        img = read_image(sample.image_path)
        size = img.shape[:2]
        gt = sample_mask(sample, size)
        for col in range(len(models) + 1):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.contour(gt > 0, levels=[0.5], colors="lime", linewidths=1.0)
                ax.set_title(f"{sample.category}\n{str(first['prompt'][i0])[:40]}", fontsize=7)
                continue
            model = models[col - 1]
            d = saved.get((dataset, model))
            if d is None or sid not in list(map(str, d["sample_id"])):
                ax.set_title(f"{model}: n/a", fontsize=7)
                continue
            k = list(map(str, d["sample_id"])).index(sid)
            grid = d["grid"][k].astype(np.float64)
            if smooth_sigma:
                grid = smooth_grid(grid, smooth_sigma)
            hmap = parse_geometry(str(d["input_geometry"])).grid_to_original(grid, size)
            valid = np.isfinite(hmap)
            if valid.any():
                lo, hi = np.nanmin(hmap), np.nanmax(hmap)
                hmap = (hmap - lo) / (hi - lo) if hi > lo else np.zeros_like(hmap)
            ax.imshow(np.ma.masked_invalid(hmap), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.contour(gt > 0, levels=[0.5], colors="white", linewidths=0.8)
            if row == 0:
                ax.set_title(model, fontsize=8)
    fig.suptitle(f"{dataset}: heatmaps (min-max per map) with ground truth", fontsize=9)
    return _save(fig, path, dpi=110)
