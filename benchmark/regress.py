"""Regression of a run against a reference: a golden run or the paper's tables.

A reference is a set of cells keyed by (dataset, model, task, metric, category) with a value
and, where known, a CI. A run drifts when a reference cell is missing from it, or its point
estimate lies outside the tolerance: ``ci`` (inside the reference CI, or equal to the printed
rounding when the reference has no CI) or an absolute number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = ("dataset", "model", "task", "metric", "category")


@dataclass
class Cell:
    dataset: str
    model: str
    task: str | None
    metric: str
    category: str
    value: float | None
    lo: float | None = None
    hi: float | None = None
    digits: int | None = None  # printed precision of a paper value
    source: str = ""
    prompt_set: str | None = None  # of a run's cell: the prompt set its dataset was run with

    def key(self, with_task: bool = True) -> tuple:
        return (self.dataset, self.model, self.task if with_task else None, self.metric, self.category)


def load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no results.json (expected a run folder or its results.json)")
    obj = json.loads(p.read_text())
    if "results" not in obj:
        raise ValueError(f"{p}: not a run record (no 'results' key)")
    return obj


def run_cells(state: dict[str, Any], source: str = "") -> list[Cell]:
    """Cells of a run, one per (dataset, model, task, metric, category), each with the prompt set its
    dataset was run with (what a reference named ``dataset[prompt=<set>]`` asks for)."""
    default_set = (state.get("config") or {}).get("prompt_set") or "simple"
    cells = []
    for ds, per_model in state.get("results", {}).items():
        prompt_set = ((state.get("datasets") or {}).get(ds) or {}).get("prompt_set") or default_set
        for model, rows in per_model.items():
            for r in rows:
                cells.append(Cell(ds, model, r.get("task"), r["metric"], r.get("category", "all"),
                                  r.get("point"), r.get("lo"), r.get("hi"), source=source, prompt_set=prompt_set))
    return cells


def _base_and_prompt_set(dataset: str) -> tuple[str, str | None]:
    """``ms_cxr[prompt=precise]`` → ``("ms_cxr", "precise")``; a plain name → ``(name, None)``."""
    from benchmark.paper import split_name

    base, quals = split_name(dataset)
    return base, quals.get("prompt")


def paper_cells_as_reference(spec: str) -> list[Cell]:
    """``paper:<table id>`` (optionally ``paper:<table id>:<dataset>``) → reference cells.

    Paper values printed as percentages are converted to fractions, the run's unit.
    """
    from benchmark import paper

    parts = spec.split(":")
    table = parts[1] if len(parts) > 1 and parts[1] else None
    dataset = parts[2] if len(parts) > 2 else None
    df = paper.paper_cells(table=table, dataset=dataset)
    if table is None and "table" in df:
        df = df[df["table"] != "text_values"]  # numbers quoted in the prose repeat table cells
    if df.empty:
        raise ValueError(f"no paper cells match {spec!r} (see results/paper/index.yaml)")
    out = []
    for r in df.to_dict("records"):
        scale = 0.01 if str(r.get("unit", "")).lower() in ("percent", "%", "percentage") else 1.0
        val = _num(r.get("value"))
        digits = int(r["decimals"]) if _num(r.get("decimals")) is not None else _digits(r.get("value"))
        out.append(Cell(r["dataset"], r["model"], None, r["metric"], r.get("category") or "all",
                        None if val is None else val * scale,
                        None if _num(r.get("ci_low")) is None else _num(r.get("ci_low")) * scale,
                        None if _num(r.get("ci_high")) is None else _num(r.get("ci_high")) * scale,
                        None if digits is None else digits + (2 if scale == 0.01 else 0),
                        source=f"{r.get('paper_version', '')}/{r.get('table', '')}"))
    return out


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _digits(x: Any) -> int | None:
    s = str(x)
    if _num(s) is None:
        return None
    return len(s.split(".", 1)[1]) if "." in s else 0


def load_reference(spec: str) -> list[Cell]:
    if spec.startswith("paper:"):
        return paper_cells_as_reference(spec)
    return run_cells(load_results(spec), source=spec)


def filter_cells(cells: Iterable[Cell], models: str | None = None, datasets: str | None = None) -> list[Cell]:
    """Keep cells whose model and dataset match comma-separated names or globs."""
    import fnmatch

    def ok(name: str, spec: str | None) -> bool:
        pats = [p.strip() for p in (spec or "").split(",") if p.strip()]
        return spec is None or any(name == p or fnmatch.fnmatchcase(name, p) for p in pats)

    return [c for c in cells if ok(c.model, models) and ok(c.dataset, datasets)]


@dataclass
class Diff:
    ref: Cell
    run_value: float | None
    status: str  # ok, drift, missing
    detail: str = ""


TOLERANCE_FILE = "tolerance.json"


def reference_tolerances(ref: str | Path) -> dict[str, float] | None:
    """Per-model absolute tolerances stored beside a golden run (``tolerance.json``: ``{"models":
    {name: tol}, "default": tol}``, flattened with the default under ``"*"``), or None."""
    folder = Path(ref)
    folder = folder.parent if folder.is_file() else folder
    path = folder / TOLERANCE_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    try:
        out = {str(m): float(t) for m, t in (doc.get("models") or {}).items()}
        out["*"] = float(doc["default"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: expected {{\"default\": number, \"models\": {{name: number}}}} ({exc})") from None
    return out


def compare_cells(run: Iterable[Cell], ref: Iterable[Cell],
                  tolerance: str | float | Mapping[str, float] = "ci") -> list[Diff]:
    """One comparison per reference cell. A reference dataset named ``name[prompt=<set>]`` matches
    the run's ``name`` only when the run used that prompt set. ``tolerance``: ``ci``, one absolute
    tolerance, or one per model (``"*"``: the others; ``reference_tolerances``)."""
    run = list(run)
    by_task = {c.key(True): c for c in run}
    by_any = {c.key(False): c for c in run}
    diffs = []
    for rc in ref:
        if rc.value is None:
            continue
        base, wanted = _base_and_prompt_set(rc.dataset)
        key = (base, *rc.key(True)[1:])
        cell = by_task.get(key) if rc.task is not None else by_any.get((base, rc.model, None, rc.metric, rc.category))
        if cell is not None and wanted is not None and cell.prompt_set != wanted:
            diffs.append(Diff(rc, None, "missing", f"the run used prompt set {cell.prompt_set!r}, not {wanted!r}"))
            continue
        if cell is None or cell.value is None:
            diffs.append(Diff(rc, None, "missing", "not in the run"))
            continue
        tol = tolerance.get(rc.model, tolerance["*"]) if isinstance(tolerance, Mapping) else tolerance
        ok, detail = _within(cell.value, rc, tol)
        diffs.append(Diff(rc, cell.value, "ok" if ok else "drift", detail))
    return diffs


def _within(value: float, ref: Cell, tolerance: str | float) -> tuple[bool, str]:
    if tolerance == "ci":
        if ref.lo is not None and ref.hi is not None:
            return ref.lo <= value <= ref.hi, f"CI [{ref.lo:.4g}, {ref.hi:.4g}]"
        if ref.digits is not None:
            half = 0.5 * 10 ** (-ref.digits)
            return abs(value - ref.value) <= half + 1e-12, f"printed rounding ±{half:g}"
        return abs(value - ref.value) <= 1e-9, "exact (no CI)"
    tol = float(tolerance)
    return abs(value - ref.value) <= tol, f"|Δ| <= {tol:g}"


def diff_table(diffs: list[Diff], only_failures: bool = False) -> str:
    from tabulate import tabulate

    rows = []
    for d in diffs:
        if only_failures and d.status == "ok":
            continue
        r = d.ref
        delta = None if d.run_value is None else d.run_value - r.value
        rows.append([r.dataset, r.model, r.task or "", r.metric, r.category, f"{r.value:.4f}",
                     "" if d.run_value is None else f"{d.run_value:.4f}",
                     "" if delta is None else f"{delta:+.4f}", d.status.upper() if d.status != "ok" else "ok",
                     d.detail])
    return tabulate(rows, headers=["dataset", "model", "task", "metric", "category", "reference", "run", "diff",
                                   "status", "tolerance"])
