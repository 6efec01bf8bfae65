"""Console tables of a run: ``point [lo, hi]`` per dataset × model × metric."""

from __future__ import annotations

from typing import Any


def fmt_cell(row: dict[str, Any], digits: int = 3) -> str:
    point = row.get("point")
    if point is None:
        return "n/a"
    lo, hi = row.get("lo"), row.get("hi")
    if lo is None or hi is None:
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


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
    rows = [[r["dataset"] + mark, r["model"], r.get("task", ""), r["metric"], fmt_cell(r), r.get("n")]
            for r in summary_rows(state)]
    title = f"protocol {protocol}; point [95% CI]{'; LIMITED RUN, not comparable' if limit else ''}"
    table = tabulate(rows, headers=["dataset", "model", "task", "metric", "value", "n"], tablefmt=fmt)
    by_model: dict[tuple[str, str], list[str]] = {}
    for p in state.get("skipped_pairs") or []:
        by_model.setdefault((p["model"], p["reason"]), []).append(p["dataset"])
    tail = "".join(f"\nskipped {m} on {len(ds)} dataset(s): {reason}" for (m, reason), ds in by_model.items())
    return f"{title}\n{table}{tail}"
