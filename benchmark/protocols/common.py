"""Helpers shared by the protocol modules: sample facts, category tables, summary rows.

Not a plugin module (leading underscore): nothing here registers anything.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.dataset import AFLOC_MODES
from benchmark.protocols.base import SUMMARY_KEYS

log = logging.getLogger(__name__)

PATHOLOGY = "pathology"
CHEST = "chest_xray"
# Columns the runner writes next to the protocol's values (never metrics).
ID_COLUMNS = ("sample_id", "image_id", "patient_id", "category", "label", "split")


# --------------------------------------------------------------------------------------
# What kind of sample is this?
# --------------------------------------------------------------------------------------
def _norm_name(s: str) -> str:
    return s.lower().replace("-", "_")


def official_dataset(sample: Any) -> str:
    """The official AFLoc dataset switch a sample's evaluation follows: ``sample.meta["afloc_dataset"]``
    (set from the dataset card's ``afloc_mode`` by ``Dataset.samples``), ``GENERIC`` when absent."""
    meta = getattr(sample, "meta", None) or {}
    mode = meta.get("afloc_dataset") or "GENERIC"
    if mode not in AFLOC_MODES:
        raise ValueError(f"sample {getattr(sample, 'sample_id', '?')}: meta['afloc_dataset']={mode!r} is not one of "
                         f"{AFLOC_MODES}")
    return mode


def modality(sample: Any) -> str:
    """``pathology`` or ``chest_xray``: ``sample.meta["modality"]`` (from the dataset card), chest X-ray when absent."""
    meta = getattr(sample, "meta", None) or {}
    m = _norm_name(str(meta.get("modality") or CHEST))
    return PATHOLOGY if m.startswith("path") or m.startswith("histo") else CHEST


def resolve_image_size(sample: Any, image_size: Sequence[int] | None) -> tuple[int, int]:
    size = image_size if image_size is not None else getattr(sample, "image_size", None)
    if size is None:
        from benchmark.dataset import DataError

        raise DataError(getattr(sample, "image_path", None),
                        f"the image size of sample {getattr(sample, 'sample_id', '?')} (loader did not set it)")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------
def first_appearance(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance (dict/category order of the official code)."""
    seen: dict[Any, None] = {}
    for v in values:
        if v not in seen:
            seen[v] = None
    return list(seen)


def category_codes(categories: Sequence[Any], order: Sequence[Any] | None = None) -> tuple[np.ndarray, list[Any]]:
    cats = list(categories)
    order = first_appearance(cats) if order is None else list(order)
    index = {c: i for i, c in enumerate(order)}
    return np.array([index[c] for c in cats], dtype=np.int64), order


def one_hot_values(values: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """[N] values + category codes → [N, K] with each value in its category column, NaN elsewhere."""
    out = np.full((len(values), k), np.nan)
    out[np.arange(len(values)), codes] = values
    return out


def grouped_replicates(columns: dict[str, np.ndarray], codes: np.ndarray, k: int, units: np.ndarray, n_boot: int,
                       seed: int, strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    from benchmark.bootstrap import blas_single_thread

    with blas_single_thread():
        return _grouped_replicates(columns, codes, k, units, n_boot, seed, strata)


def _grouped_replicates(columns: dict[str, np.ndarray], codes: np.ndarray, k: int, units: np.ndarray, n_boot: int,
                        seed: int, strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-category replicate means of several metrics from ONE draw per replicate.

    All metrics are stacked into one ``[sums | counts]`` matrix summed per resampling unit
    (identical columns, e.g. shared NaN patterns, computed once), and each chunk of unit
    multiplicities costs one matrix product. When every unit belongs to one category, units
    are ordered by category and each category multiplies only its own block of columns;
    otherwise categories are one-hot columns. Returns ``name -> [R, K]``.
    """
    from benchmark.bootstrap import to_unit_space, unique_columns, unit_draws

    names = list(columns)
    m = len(names)
    units = np.asarray(units)
    codes = np.asarray(codes)
    _, uinv = np.unique(units, return_inverse=True)
    per_unit = np.zeros((uinv.max() + 1 if len(uinv) else 0, max(k, 1)), dtype=bool)
    per_unit[uinv.reshape(-1), codes] = True
    if m and len(codes) and (per_unit.sum(axis=1) <= 1).all():
        vals = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
        present = ~np.isnan(vals)
        stacked = np.concatenate([np.where(present, vals, 0.0), present.astype(np.float64)], axis=1)
        inv, chunks = unit_draws(units, n_boot, seed, strata=strata, order_by=codes)
        inv = inv.reshape(-1)
        unit_code = np.empty(inv.max() + 1, dtype=np.int64)
        unit_code[inv] = codes
        bounds = np.searchsorted(unit_code, np.arange(k + 1))  # units are sorted by category
        blocks = [unique_columns(to_unit_space(stacked[codes == j], inv[codes == j] - bounds[j]))
                  if bounds[j + 1] > bounds[j] else None for j in range(k)]
        out = np.full((n_boot, m, k), np.nan)
        r0 = 0
        for c in chunks:
            for j, blk in enumerate(blocks):
                if blk is None:
                    continue
                distinct, which = blk
                both = (c[:, bounds[j]:bounds[j + 1]] @ distinct)[:, which]
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[r0:r0 + len(c), :, j] = np.where(both[:, m:] > 0, both[:, :m] / both[:, m:], np.nan)
            r0 += len(c)
        return {n: out[:, i, :] for i, n in enumerate(names)}
    mats = [one_hot_values(np.asarray(columns[n], dtype=np.float64), codes, k) for n in names]
    big = np.concatenate(mats, axis=1) if mats else np.zeros((len(codes), 0))
    present = ~np.isnan(big)
    stacked = np.concatenate([np.where(present, big, 0.0), present.astype(np.float64)], axis=1)
    inv, chunks = unit_draws(units, n_boot, seed, strata=strata)
    distinct, which = unique_columns(to_unit_space(stacked, inv))
    mk = big.shape[1]
    parts = []
    for c in chunks:
        both = (c @ distinct)[:, which]
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(np.where(both[:, mk:] > 0, both[:, :mk] / both[:, mk:], np.nan))
    reps = np.concatenate(parts, axis=0) if parts else np.zeros((n_boot, mk))
    return {n: reps[:, i * k:(i + 1) * k] for i, n in enumerate(names)}


def nanmean(x: Any, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)


def row(metric: str, category: str, point: float, boot_mean: float, lo: float, hi: float, n: int) -> dict[str, Any]:
    vals = (metric, str(category), _f(point), _f(boot_mean), _f(lo), _f(hi), int(n))
    return dict(zip(SUMMARY_KEYS, vals))


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def metric_columns(records: pd.DataFrame, prefixes: Sequence[str]) -> list[str]:
    """Columns that are ``prefix`` or ``prefix@…`` for the given prefixes, in record order."""
    out = []
    for c in records.columns:
        base = str(c).split("@", 1)[0]
        if base in prefixes and c not in out:
            out.append(c)
    return out


def units_for(records: pd.DataFrame, unit: str) -> np.ndarray:
    """Resampling unit id of each record: ``image`` → image_id, ``patient`` → patient_id.

    Records without a patient id fall back to their image id (each becomes its own
    patient); how many did is logged, never silent.
    """
    if unit not in ("image", "patient", "sample"):
        raise ValueError(f"unit must be 'image', 'patient' or 'sample', got {unit!r}")
    if unit == "sample" or ("image_id" not in records and unit == "image"):
        return np.asarray(records["sample_id"] if "sample_id" in records else np.arange(len(records))).astype(str)
    img = (records["image_id"].astype(str).to_numpy() if "image_id" in records
           else records["sample_id"].astype(str).to_numpy())
    if unit == "image":
        return img
    if "patient_id" not in records:
        log.warning("unit='patient' but records have no patient_id column: resampling images instead")
        return img
    pid = records["patient_id"]
    missing = pid.isna() | (pid.astype(str) == "") | (pid.astype(str) == "None")
    if missing.any():
        log.warning("unit='patient': %d of %d records have no patient_id; each of their images is its own unit",
                    int(missing.sum()), len(records))
    return np.where(missing.to_numpy(), np.char.add("image:", img), pid.astype(str).to_numpy())


def finite_count(x: np.ndarray) -> int:
    return int(np.isfinite(np.asarray(x, dtype=np.float64)).sum())


def per_threshold_columns(thresholds: Sequence[float], **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """``{"iou": [N, T], ...}`` → ``{"iou@0.1": [N], ...}``, names from ``metrics.threshold_label``."""
    from benchmark.metrics import threshold_label

    return {f"{name}@{threshold_label(t)}": arr[:, j] for name, arr in arrays.items()
            for j, t in enumerate(thresholds)}
