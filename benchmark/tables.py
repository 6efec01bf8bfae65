"""Console tables of a run: ``point [lo, hi]`` per dataset × model × metric."""

from __future__ import annotations

from typing import Any

# Why a CI bound can be missing (printed n/a): said under every table that has one.
OPEN_BOUND_NOTE = ("n/a bound: undefined. The bootstrap replicates that have no value (e.g. a resample without "
                   "both classes for AUROC) sort last, and the CI reads fixed sorted positions (afloc-compat: 24 "
                   "and 974 of 1,000, as the official code does), which then fall on them")


def dataset_line(name: str, rec: dict[str, Any]) -> str:
    """``demo_rsna: 200 of 203 samples used; 3 skipped by the loader, 0 at run time``."""
    used, total = rec.get("n_samples_used"), rec.get("n_samples_total")
    at_run = rec.get("n_run_skipped") or {}
    at_run = sum(at_run.values()) if isinstance(at_run, dict) else int(at_run)
    return (f"{name}: {used} of {total} samples used; {rec.get('n_skipped', 0)} skipped by the loader, "
            f"{at_run} at run time")


def has_open_bound(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("point") is not None and (r.get("lo") is None) != (r.get("hi") is None) for r in rows)


def fmt_cell(row: dict[str, Any], digits: int = 3) -> str:
    point = row.get("point")
    if point is None:
        return "n/a"
    lo, hi = row.get("lo"), row.get("hi")
    if lo is None and hi is None:
        return f"{point:.{digits}f}"
    def bound(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    return f"{point:.{digits}f} [{bound(lo)}, {bound(hi)}]"


def summary_rows(state: dict[str, Any], category: str = "all") -> list[dict[str, Any]]:
    out = []
    for ds, per_model in state.get("results", {}).items():
        for model, rows in per_model.items():
            for r in rows:
                if r.get("category") == category:
                    out.append({"dataset": ds, "model": model, **r})
    return out


def summary_table(state: dict[str, Any], fmt: str = "simple") -> str:
    """Overall rows of a run as a table; a ``--limit`` run is marked in the title and every row."""
    from tabulate import tabulate

    limit = state.get("limit")
    mark = f" (limit {limit})" if limit else ""
    protocol = state.get("protocol", {}).get("id", "?")
    summary = summary_rows(state)
    rows = [[r["dataset"] + mark, r["model"], r.get("task", ""), r["metric"], fmt_cell(r), r.get("n")]
            for r in summary]
    title = f"protocol {protocol}; point [95% CI]{'; LIMITED RUN, not comparable' if limit else ''}"
    table = tabulate(rows, headers=["dataset", "model", "task", "metric", "value", "n"], tablefmt=fmt)
    by_model: dict[tuple[str, str], list[str]] = {}
    for p in state.get("skipped_pairs") or []:
        by_model.setdefault((p["model"], p["reason"]), []).append(p["dataset"])
    tail = "".join(f"\nskipped {m} on {len(ds)} dataset(s): {reason}" for (m, reason), ds in by_model.items())
    tail += "".join(f"\n{dataset_line(ds, rec)}" for ds, rec in (state.get("datasets") or {}).items())
    if has_open_bound(summary):
        tail += f"\n{OPEN_BOUND_NOTE}"
    return f"{title}\n{table}{tail}"
