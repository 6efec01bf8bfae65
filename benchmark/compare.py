"""Paired comparison of two runs: same samples, same resampled indices for both models.

Why paired: two models scored on the same images are correlated; resampling the same
units for both (rather than relying on two runs sharing a seed and a row order, as
CheXlocalize's human-benchmark comparison does) gives a CI of the *difference* that is
much tighter than two separate CIs, and it stays valid when row orders differ.

For each dataset present in both runs, samples are aligned by ``sample_id``; for each
metric only the pairs where both runs have a value are used. The aggregate is the one of
``canonical@1``: per-category means and their macro average. The difference ``A − B`` gets
its full-data value, a percentile CI over resampled units (image or patient), a
two-sided bootstrap p-value ``min(1, 2·min(P*(Δ≤0), P*(Δ≥0)))`` and a Benjamini–Hochberg
q-value across every overall row of the comparison. With ``score`` and ``label`` columns
(classification runs) the AUROC difference is compared the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.bootstrap import DEFAULT_N_BOOT, bh_fdr, bootstrap_p_value, percentile_ci, unit_weights
from benchmark.metrics import auroc_weighted
from benchmark.protocols import common as C
from benchmark.protocols.base import OVERALL
from benchmark.records import limit_note, parse_stem, run_mismatches

log = logging.getLogger(__name__)

METRIC_PREFIXES = ("iou", "dice", "cnr", "hit", "box_acc")
RESULT_COLUMNS = ("dataset", "model_a", "model_b", "metric", "category", "a", "b", "diff", "lo", "hi",
                  "p_value", "q_value", "n", "n_only_a", "n_only_b")


def _error(path: Any, expected: str) -> Exception:
    from benchmark.dataset import DataError

    return DataError(path, expected)


@dataclass
class RunSamples:
    """The per-sample tables of one run folder and its protocol id."""

    root: Path
    protocol: str | None
    tables: dict[tuple[str, str], Path]  # (dataset, model) -> parquet path
    state: dict[str, Any] | None = None  # its results.json, when there is one


def load_run(run_dir: str | Path) -> RunSamples:
    root = Path(run_dir)
    sdir = root / "samples"
    if not sdir.is_dir():
        raise _error(root, "a run folder with a samples/ directory of <dataset>__<model>.parquet files")
    tables: dict[tuple[str, str], Path] = {}
    for p in sorted(sdir.glob("*.parquet")):
        try:
            ds, model = parse_stem(p.stem)
        except ValueError:
            raise _error(p, "a per-sample file named <dataset>__<model>.parquet") from None
        tables[(ds, model)] = p
    if not tables:
        raise _error(sdir, "at least one <dataset>__<model>.parquet file")
    protocol, state = None, None
    rj = root / "results.json"
    if rj.is_file():
        try:
            state = json.loads(rj.read_text())
        except (ValueError, OSError) as exc:
            raise _error(rj, f"a readable results.json ({exc})") from exc
        protocol = (state.get("config") or {}).get("protocol")
    return RunSamples(root, protocol, tables, state)


def pair_tables(a: RunSamples, b: RunSamples, dataset: str | None = None) -> list[tuple[str, str, str, Path, Path]]:
    """(dataset, model_a, model_b, path_a, path_b) for every comparable pair.

    A dataset with one model in each run pairs those two; otherwise models are paired by
    name. Datasets present in only one run are logged.
    """
    out = []
    ds_a = sorted({d for d, _ in a.tables})
    ds_b = sorted({d for d, _ in b.tables})
    for ds in ds_a:
        if dataset is not None and ds != dataset:
            continue
        if ds not in ds_b:
            log.warning("dataset %s is only in %s", ds, a.root)
            continue
        ma = sorted(m for d, m in a.tables if d == ds)
        mb = sorted(m for d, m in b.tables if d == ds)
        if len(ma) == 1 and len(mb) == 1:
            out.append((ds, ma[0], mb[0], a.tables[(ds, ma[0])], b.tables[(ds, mb[0])]))
        else:
            for m in ma:
                if m in mb:
                    out.append((ds, m, m, a.tables[(ds, m)], b.tables[(ds, m)]))
    for ds in ds_b:
        if ds not in ds_a and (dataset is None or ds == dataset):
            log.warning("dataset %s is only in %s", ds, b.root)
    return out


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in C.metric_columns(df, METRIC_PREFIXES) if pd.api.types.is_numeric_dtype(df[c])]


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, unit: str = "image",
                   level: float = 0.95) -> list[dict[str, Any]]:
    """Paired bootstrap of ``A − B`` for each metric (overall and per category)."""
    from benchmark.bootstrap import blas_single_thread

    with blas_single_thread():
        return _compare_frames(a, b, metrics=metrics, n_boot=n_boot, seed=seed, unit=unit, level=level)


def _compare_frames(a: pd.DataFrame, b: pd.DataFrame, *, metrics: Sequence[str] | None, n_boot: int, seed: int,
                    unit: str, level: float) -> list[dict[str, Any]]:
    for name, df in (("A", a), ("B", b)):
        if "sample_id" not in df or "category" not in df:
            raise ValueError(f"run {name}: per-sample records need 'sample_id' and 'category' columns")
        if df["sample_id"].duplicated().any():
            raise ValueError(f"run {name}: duplicated sample_id values")
    joined = a.merge(b, on="sample_id", how="inner", suffixes=("__a", "__b"))
    n_only_a = int((~a["sample_id"].isin(b["sample_id"])).sum())
    n_only_b = int((~b["sample_id"].isin(a["sample_id"])).sum())
    if n_only_a or n_only_b:
        log.warning("%d samples only in A and %d only in B are left out of the paired comparison", n_only_a, n_only_b)
    if len(joined) == 0:
        return []
    base = pd.DataFrame({
        "sample_id": joined["sample_id"],
        "image_id": joined["image_id__a"] if "image_id__a" in joined else joined["sample_id"],
        "patient_id": joined["patient_id__a"] if "patient_id__a" in joined else None,
        "category": joined["category__a"],
    })
    units = C.units_for(base, unit)
    common = [m for m in metric_columns(a) if m in set(metric_columns(b))]
    if metrics:
        missing = [m for m in metrics if m not in common and m != "auroc"]
        if missing:
            raise ValueError(f"metrics {missing} are not per-sample columns of both runs; common: {common}")
        common = [m for m in metrics if m in common]
    cats = C.first_appearance(base["category"])
    codes, _ = C.category_codes(base["category"].tolist(), cats)
    k = len(cats)
    rows: list[dict[str, Any]] = []
    pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    columns: dict[str, np.ndarray] = {}
    for m in common:
        va = joined[f"{m}__a"].to_numpy(dtype=np.float64)
        vb = joined[f"{m}__b"].to_numpy(dtype=np.float64)
        both = np.isfinite(va) & np.isfinite(vb)
        if not both.any():  # a metric of the other task (a sample has one row per task)
            continue
        va, vb = np.where(both, va, np.nan), np.where(both, vb, np.nan)
        pairs[m] = (va, vb, both)
        columns[f"{m}\0a"], columns[f"{m}\0b"] = va, vb
    # the same unit draws for A and B, all metrics in one matrix product per chunk
    reps = C.grouped_replicates(columns, codes, k, units, n_boot, seed) if columns else {}
    for m in pairs:
        va, vb, both = pairs[m]
        ra, rb = reps[f"{m}\0a"], reps[f"{m}\0b"]
        rep = np.column_stack([ra - rb, C.nanmean(ra, axis=1) - C.nanmean(rb, axis=1)])
        pa = np.array([C.nanmean(va[codes == j]) for j in range(k)])
        pb = np.array([C.nanmean(vb[codes == j]) for j in range(k)])
        _emit(rows, m, cats, pa, pb, C.nanmean(pa), C.nanmean(pb), rep, level,
              [int(both[codes == j].sum()) for j in range(k)], int(both.sum()), n_only_a, n_only_b)
    want_auc = metrics is None or "auroc" in metrics
    ok = np.zeros(len(joined), dtype=bool)
    if want_auc and all(c in joined for c in ("score__a", "score__b", "label__a")):
        y = joined["label__a"].to_numpy(dtype=np.float64)
        sa = joined["score__a"].to_numpy(dtype=np.float64)
        sb = joined["score__b"].to_numpy(dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(sa) & np.isfinite(sb)
    if ok.any():  # scored samples (the classification task)
        weights = list(unit_weights(units, n_boot, seed))
        pa, pb = np.full(k, np.nan), np.full(k, np.nan)
        rep = np.full((n_boot, k + 1), np.nan)
        ra_all = np.full((n_boot, k), np.nan)
        rb_all = np.full((n_boot, k), np.nan)
        for j in range(k):
            sel = ok & (codes == j)
            if not sel.any():
                continue
            one = np.ones((1, int(sel.sum())))
            pa[j] = auroc_weighted(y[sel], sa[sel], one)[0]
            pb[j] = auroc_weighted(y[sel], sb[sel], one)[0]
            r0 = 0
            for w in weights:
                ra_all[r0:r0 + len(w), j] = auroc_weighted(y[sel], sa[sel], w[:, sel])
                rb_all[r0:r0 + len(w), j] = auroc_weighted(y[sel], sb[sel], w[:, sel])
                r0 += len(w)
        rep[:, :k] = ra_all - rb_all
        rep[:, k] = C.nanmean(ra_all, axis=1) - C.nanmean(rb_all, axis=1)
        _emit(rows, "auroc", cats, pa, pb, C.nanmean(pa), C.nanmean(pb), rep, level,
              [int((ok & (codes == j)).sum()) for j in range(k)], int(ok.sum()), n_only_a, n_only_b)
    return rows


def _by_task(fa: pd.DataFrame, fb: pd.DataFrame):
    """Split run records by their ``task`` column (a sample has one row per task)."""
    if "task" not in fa or "task" not in fb:
        yield fa, fb
        return
    for task in C.first_appearance(fa["task"]):
        ga, gb = fa[fa["task"] == task], fb[fb["task"] == task]
        if len(gb):
            yield ga.reset_index(drop=True), gb.reset_index(drop=True)


def _emit(rows: list, metric: str, cats: list, pa: np.ndarray, pb: np.ndarray, all_a: float, all_b: float,
          rep: np.ndarray, level: float, n_cat: list[int], n_all: int, n_only_a: int, n_only_b: int) -> None:
    k = len(cats)
    bm, lo, hi = percentile_ci(rep, level)
    p = bootstrap_p_value(rep)
    rows.append({"metric": metric, "category": OVERALL, "a": all_a, "b": all_b,
                 "diff": all_a - all_b, "lo": lo[k], "hi": hi[k], "p_value": p[k], "n": n_all,
                 "n_only_a": n_only_a, "n_only_b": n_only_b})
    for j in range(k):
        rows.append({"metric": metric, "category": str(cats[j]), "a": pa[j], "b": pb[j], "diff": pa[j] - pb[j],
                     "lo": lo[j], "hi": hi[j], "p_value": p[j], "n": n_cat[j],
                     "n_only_a": n_only_a, "n_only_b": n_only_b})


def compare_runs(run_a: str | Path, run_b: str | Path, *, metric: str | Sequence[str] | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, unit: str = "image",
                 dataset: str | None = None, allow_mismatch: bool = False) -> pd.DataFrame:
    """Compare two run folders; one row per dataset × metric × category (``all`` first).

    Runs that differ in what makes numbers comparable (``records.run_mismatches``: limit, protocol,
    harness version, and per compared dataset its samples, prompt set, card version and split) are
    refused unless ``allow_mismatch``; the differences are then in ``df.attrs["mismatches"]``."""
    a, b = load_run(run_a), load_run(run_b)
    pairs = pair_tables(a, b, dataset)
    mismatches = []
    if a.state is not None and b.state is not None:
        mismatches = run_mismatches(a.state, b.state, sorted({p[0] for p in pairs}))
    elif a.protocol and b.protocol and a.protocol != b.protocol:
        mismatches = [f"protocol: {a.protocol!r} against {b.protocol!r}"]
    if mismatches and not allow_mismatch:
        raise ValueError(f"{run_a} and {run_b} are unlike runs ({'; '.join(mismatches)}); pass --allow-mismatch "
                         "to compare them anyway")
    metrics = [metric] if isinstance(metric, str) else (list(metric) if metric else None)
    out: list[dict[str, Any]] = []
    for ds, ma, mb, pa, pb in pairs:
        try:
            fa, fb = pd.read_parquet(pa), pd.read_parquet(pb)
        except Exception as exc:
            raise _error(f"{pa} / {pb}", f"readable parquet files ({exc})") from exc
        for ga, gb in _by_task(fa, fb):
            for r in compare_frames(ga, gb, metrics=metrics, n_boot=n_boot, seed=seed, unit=unit):
                out.append({"dataset": ds, "model_a": ma, "model_b": mb, **r})
    df = pd.DataFrame(out, columns=[c for c in RESULT_COLUMNS if c != "q_value"])
    overall = df["category"] == "all"
    df["q_value"] = np.nan
    if overall.any():
        df.loc[overall, "q_value"] = bh_fdr(df.loc[overall, "p_value"].to_numpy())
    df = df[list(RESULT_COLUMNS)]
    df.attrs["mismatches"] = mismatches
    df.attrs["limit_note"] = limit_note(*[r.state for r in (a, b) if r.state is not None])
    return df
