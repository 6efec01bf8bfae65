"""Figures of a run (matplotlib, Agg): CI bar charts, threshold curves and heatmap overlays.

- ``metric_bars``: one panel per dataset, one bar per model with its 95% CI (paper Fig. 2/3 style),
  one legend for the figure;
- ``category_bars``: per-pathology bars for one dataset and metric (n under each category);
- ``threshold_curves``: IoU (or Dice) against the binarisation threshold, one line per model;
- ``overlays``: heatmaps over the image with the ground truth drawn, models side by side
  (paper Fig. 4/5 style), from the grids a run saved in ``heatmaps/``, with a colour bar.

Every figure of a report takes its colours from one ``ModelStyle``: each model keeps its colour
in every figure, and the three weight-free floors are greys with their own hatching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SANITY = ("random", "uniform", "center_prior")
FLOOR_STYLE = {"center_prior": ("#525252", "xx"), "random": ("#969696", "//"), "uniform": ("#d0d0d0", "..")}
OPEN_BOUND = "open CI"  # marks a bar whose CI misses a bound


def _palette() -> list[str]:
    """60 distinct colours: matplotlib's tab20, tab20b and tab20c (the dark and light of each hue
    kept apart, so neighbours in a run differ)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    out: list[str] = []
    for name in ("tab20", "tab20b", "tab20c"):
        cols = [to_hex(c) for c in colormaps[name].colors]
        out += cols[0::2] + cols[1::2]
    return out


@dataclass
class ModelStyle:
    """Colour and hatch of each model of a run, the same in every figure."""

    models: list[str]
    colors: dict[str, str] = field(default_factory=dict)
    hatches: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_models(cls, models) -> ModelStyle:
        ordered = _model_order(set(models))
        palette = _palette()
        real = [m for m in ordered if m not in SANITY]
        style = cls(ordered)
        for i, m in enumerate(real):
            style.colors[m] = palette[i % len(palette)]
            style.hatches[m] = "" if i < len(palette) else "--"
        for m in ordered:
            if m in SANITY:
                style.colors[m], style.hatches[m] = FLOOR_STYLE[m]
        return style

    def color(self, model: str) -> str:
        return self.colors.get(model, "#000000")

    def legend_handles(self, models):
        from matplotlib.patches import Patch

        return [Patch(facecolor=self.color(m), hatch=self.hatches.get(m, ""), edgecolor="black", linewidth=0.5,
                      label=f"{m} (floor)" if m in SANITY else m) for m in models]


def run_style(state: dict[str, Any]) -> ModelStyle:
    return ModelStyle.for_models({m for per in state.get("results", {}).values() for m in per})


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
                if r["metric"] == metric and (category is None or r.get("category") == category):
                    out.append({"dataset": ds, "model": model, **r})
    return out


def _model_order(models: set[str]) -> list[str]:
    return sorted(models, key=lambda m: (m in SANITY, m))


def _errors(rows: list[dict[str, Any]]) -> np.ndarray:
    lo = [max(0.0, r["point"] - r["lo"]) if r.get("lo") is not None else 0.0 for r in rows]
    hi = [max(0.0, r["hi"] - r["point"]) if r.get("hi") is not None else 0.0 for r in rows]
    return np.array([lo, hi])


def _open_bound(r: dict[str, Any] | None) -> bool:
    return r is not None and r.get("point") is not None and (r.get("lo") is None or r.get("hi") is None)


def _flag_bars(ax, xs, rows) -> int:
    """Write what a bar cannot show above it: a CI with a missing bound, a value that is undefined."""
    flagged = 0
    for x, r in zip(xs, rows):
        if r is None:
            continue
        if r.get("point") is None:
            ax.annotate("n/a", (x, 0), ha="center", va="bottom", fontsize=6, color="#b00000")
            flagged += 1
        elif _open_bound(r):
            ax.annotate(OPEN_BOUND, (x, r["point"]), ha="center", va="bottom", fontsize=6, color="#b00000",
                        rotation=90, xytext=(0, 3), textcoords="offset points")
            flagged += 1
    return flagged


def _save(fig, path: str | Path, dpi: int, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def metric_bars(state: dict[str, Any], metric: str, path: str | Path, style: ModelStyle | None = None
                ) -> Path | None:
    """Bars of ``metric`` per dataset × model with 95% CI error bars and one legend; None if the run
    lacks the metric. A missing CI bound and an undefined value are written on the bar."""
    rows = _rows(state, metric)
    if not any(r.get("point") is not None for r in rows):
        return None
    style = style or run_style(state)
    plt = _plt()
    datasets = sorted({r["dataset"] for r in rows})
    models = [m for m in style.models if any(r["model"] == m for r in rows)]
    ncols = min(4, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.2, 0.8 + 0.32 * len(models)) * ncols, 3.0 * nrows + 0.9),
                             squeeze=False, sharey=True)
    flat = axes.ravel()
    for ax in flat[len(datasets):]:
        ax.set_visible(False)
    for ax, ds in zip(flat, datasets):
        present = [(m, next((r for r in rows if r["dataset"] == ds and r["model"] == m), None)) for m in models]
        present = [(m, r) for m, r in present if r is not None]
        x = np.arange(len(present))
        vals = [np.nan if r.get("point") is None else r["point"] for _, r in present]
        ok = [r if r.get("point") is not None else {"point": 0.0} for _, r in present]
        bars = ax.bar(x, vals, color=[style.color(m) for m, _ in present], edgecolor="black", linewidth=0.5,
                      yerr=_errors(ok), capsize=2, error_kw={"linewidth": 0.8})
        for patch, (m, _) in zip(bars.patches, present):  # the floors' hatching
            patch.set_hatch(style.hatches.get(m) or "")
        _flag_bars(ax, x, [r for _, r in present])
        ax.set_xticks([])
        ax.set_title(ds, fontsize=9)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    for row in axes:
        row[0].set_ylabel(metric)
    limit = f" (limited run: --limit {state['limit']})" if state.get("limit") else ""
    fig.suptitle(f"{metric}, point and 95% CI, protocol {state.get('protocol', {}).get('id', '?')}{limit}",
                 fontsize=10)
    fig.legend(handles=style.legend_handles(models), loc="lower center", ncol=min(6, len(models)), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.035 * (-(-len(models) // 6)), 1, 1))
    return _save(fig, path, dpi=130, layout=False)


def category_bars(state: dict[str, Any], dataset: str, metric: str, path: str | Path,
                  style: ModelStyle | None = None) -> Path | None:
    """Per-pathology bars of ``metric`` on ``dataset``, one bar per model, with CIs and each
    category's n. None where there is nothing to compare: fewer than two categories, or every value 0."""
    rows = [r for r in _rows(state, metric, category=None) if r["dataset"] == dataset and r.get("category") != "all"]
    cats = sorted({r["category"] for r in rows})
    values = [r["point"] for r in rows if r.get("point") is not None]
    if len(cats) < 2 or not values or all(v == 0 for v in values):
        return None
    style = style or run_style(state)
    plt = _plt()
    models = [m for m in style.models if any(r["model"] == m for r in rows)]
    width = 0.8 / len(models)
    n_of = {c: max((int(r.get("n") or 0) for r in rows if r["category"] == c), default=0) for c in cats}
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.11 * len(cats) * len(models) + 3)), 4.2))
    for i, m in enumerate(models):
        sub = [next((r for r in rows if r["model"] == m and r["category"] == c), None) for c in cats]
        x = np.arange(len(cats)) + (i - (len(models) - 1) / 2) * width
        vals = [np.nan if r is None or r.get("point") is None else r["point"] for r in sub]
        err = _errors([r if r is not None and r.get("point") is not None else {"point": 0.0} for r in sub])
        ax.bar(x, vals, width, color=style.color(m), hatch=style.hatches.get(m) or None, edgecolor="black",
               linewidth=0.4, yerr=err, capsize=1.5, error_kw={"linewidth": 0.6})
        _flag_bars(ax, x, sub)
    ax.set_xticks(np.arange(len(cats)), [f"{c}\n(n={n_of[c]})" for c in cats], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: {metric} per pathology (95% CI)", fontsize=10)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=style.legend_handles(models), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)  # beside the axes: never over the whiskers
    return _save(fig, path, dpi=130)


def threshold_curves(state: dict[str, Any], dataset: str, path: str | Path, metric: str = "iou",
                     style: ModelStyle | None = None) -> Path | None:
    """``metric@t`` against the threshold t, one line per model with its CI band; None without
    per-threshold values."""
    rows: list[dict[str, Any]] = []
    for per_ds, per_model in state.get("results", {}).items():
        if per_ds != dataset:
            continue
        for model, rs in per_model.items():
            rows += [{"model": model, **r} for r in rs if r.get("category") == "all"
                     and str(r["metric"]).startswith(f"{metric}@") and r.get("point") is not None]
    if not rows:
        return None
    style = style or run_style(state)
    plt = _plt()
    models = [m for m in style.models if any(r["model"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for m in models:
        pts = sorted(((float(r["metric"].split("@", 1)[1]), r) for r in rows if r["model"] == m),
                     key=lambda t: t[0])
        t = [p[0] for p in pts]
        ax.plot(t, [p[1]["point"] for p in pts], marker="o", markersize=3, color=style.color(m),
                linestyle="--" if m in SANITY else "-", linewidth=1.2, label=f"{m} (floor)" if m in SANITY else m)
        lo = [np.nan if p[1].get("lo") is None else p[1]["lo"] for p in pts]
        hi = [np.nan if p[1].get("hi") is None else p[1]["hi"] for p in pts]
        ax.fill_between(t, lo, hi, color=style.color(m), alpha=0.12, linewidth=0)
    ax.set_xlabel("threshold on the min-max normalised map")
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: {metric} against the threshold (95% CI bands)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path, dpi=130)


def _load_saved(run_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``heatmaps/<dataset>__<model>.npz`` of a run → {(dataset, model): arrays}."""
    from benchmark.records import parse_stem

    out = {}
    for p in sorted((Path(run_dir) / "heatmaps").glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            out[parse_stem(p.stem)] = {k: z[k] for k in z.files}
    return out


def sample_scores(run_dir: str | Path, dataset: str, model: str) -> tuple[str | None, dict[str, float]]:
    """``(metric, {sample id: score})``: each sample's headline localisation score in a run's records,
    ``iou`` (the mean over the thresholds where the protocol records ``iou@t``), else ``cnr``, else
    ``hit``; ``(None, {})`` without records."""
    import pandas as pd

    from benchmark.records import record_stem

    path = Path(run_dir) / "samples" / f"{record_stem(dataset, model)}.parquet"
    if not path.is_file():
        return None, {}
    df = pd.read_parquet(path)
    if "task" in df:
        df = df[df["task"] == "grounding"]
    per_t = [c for c in df.columns if str(c).startswith("iou@")]
    for name, values in (("iou", df["iou"] if "iou" in df else (df[per_t].mean(axis=1) if per_t else None)),
                         ("cnr", df.get("cnr")), ("hit", df.get("hit"))):
        if values is not None and values.notna().any():
            return name, {str(i): float(v) for i, v in zip(df["sample_id"], values) if pd.notna(v)}
    return None, {}


def choose_samples(ids: list[str], scores: dict[str, float], how: str | list[str], n: int, seed: int = 0
                   ) -> list[str]:
    """Which saved samples to draw: ``best``/``worst`` by score, ``random`` (seeded), ``first`` or a
    list of sample ids (each must be among the saved ones)."""
    if isinstance(how, (list, tuple)):
        missing = [i for i in how if i not in ids]
        if missing:
            raise ValueError(f"--overlays: sample ids {missing} have no saved maps; saved: {ids[:10]}"
                             + (" ..." if len(ids) > 10 else "") + " (run with a larger --save-heatmaps)")
        return list(how)
    if how == "first":
        return ids[:n]
    if how == "random":
        rng = np.random.default_rng(seed)
        return [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))]
    if how in ("best", "worst"):
        scored = [i for i in ids if i in scores]
        scored.sort(key=lambda i: scores[i], reverse=how == "best")
        return (scored + [i for i in ids if i not in scores])[:n]
    raise ValueError(f"--overlays must be best, worst, random, first or a comma-separated list of sample ids, "
                     f"got {how!r}")


def overlays(run_dir: str | Path, dataset: str, path: str | Path, n_samples: int = 4,
             smooth_sigma: float | None = 1.5, choose: str | list[str] = "first", reference: str | None = None,
             style: ModelStyle | None = None) -> Path | None:
    """Image + ground truth + each model's heatmap in original coordinates, models side by side,
    with a colour bar and each map's own score (the run's per-sample record).

    ``choose`` picks among the samples whose maps the run saved (``choose_samples``; best/worst
    by the ``reference`` model's score). The saved native grids are smoothed (``smooth_sigma`` on
    the grid, as AFLoc and BioViL do for display), upsampled and mapped back to the original image
    by the model's input geometry; NaN (outside the model's view) is left transparent.
    """
    import json

    from benchmark.geometry.frames import parse_geometry, smooth_grid
    from benchmark.geometry.rasterize import sample_mask
    from benchmark.io.images import read_image
    from benchmark.sample import Sample

    saved = {key: d for key, d in _load_saved(Path(run_dir)).items() if key[0] == dataset}
    if not saved:
        return None
    order = style.models if style else _model_order({model for _, model in saved})
    models = [m for m in order if (dataset, m) in saved]
    ref = reference if reference in models else models[0]
    first = saved[(dataset, ref)]
    all_ids = [str(s) for s in first["sample_id"]]
    scores = {m: sample_scores(run_dir, dataset, m) for m in models}
    ids = choose_samples(all_ids, scores[ref][1], choose, n_samples)
    plt = _plt()
    fig, axes = plt.subplots(len(ids), len(models) + 1, figsize=(2.3 * (len(models) + 1) + 0.8, 2.5 * len(ids)),
                             squeeze=False)
    image = None
    for row, sid in enumerate(ids):
        i0 = all_ids.index(sid)
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
                ax.set_title(f"{sid}\n{sample.category}: {str(first['prompt'][i0])[:36]}", fontsize=6)
                continue
            model = models[col - 1]
            d = saved.get((dataset, model))
            if d is None or sid not in list(map(str, d["sample_id"])):
                ax.set_title(f"{model}: not saved", fontsize=7)
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
            image = ax.imshow(np.ma.masked_invalid(hmap), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.contour(gt > 0, levels=[0.5], colors="white", linewidths=0.8)
            name, sc = scores[model]
            score = f"{name} {sc[sid]:.2f}" if sid in sc else "no score"
            ax.set_title(f"{model}\n{score}" if row == 0 else score, fontsize=7, color=style.color(model)
                         if style and model not in SANITY else "black")
    if image is not None:
        cbar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        cbar.set_label("map, min-max per image", fontsize=7)
        cbar.ax.tick_params(labelsize=6)
    how = choose if isinstance(choose, str) else "chosen ids"
    fig.suptitle(f"{dataset}: heatmaps (min-max per map) with ground truth; samples: {how}"
                 + (f" by {ref}" if how in ("best", "worst") else ""), fontsize=9)
    return _save(fig, path, dpi=110, layout=False)
