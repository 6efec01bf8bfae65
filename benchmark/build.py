"""Tables from run records, in md/csv/latex/html, with the paper's numbers beside each cell.

One table per (dataset, task): rows are models (sanity floors marked), columns are metrics,
cells are ``point [lo, hi]``. With paper values: the paper's number, the difference, and ``†``
when the reproduced point lies outside the paper's CI. Limited runs are marked everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.regress import Cell, load_results, run_cells
from benchmark.tables import OPEN_BOUND_NOTE, dataset_line

SANITY = {"random", "uniform", "center_prior"}
OUTSIDE_CI = "†"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _ci(lo: float | None, hi: float | None, digits: int) -> str:
    """`` [lo, hi]``; a missing bound (e.g. an empty bootstrap) prints as n/a."""
    if lo is None and hi is None:
        return ""
    return f" [{'n/a' if lo is None else f'{lo:.{digits}f}'}, {'n/a' if hi is None else f'{hi:.{digits}f}'}]"


def paper_reference(version: str | None) -> dict[tuple, Cell]:
    """Paper cells keyed by (dataset, model, metric, category); empty when the tables are absent."""
    try:
        from benchmark.regress import paper_cells_as_reference

        cells = paper_cells_as_reference("paper:")
    except (ImportError, ValueError, FileNotFoundError):
        return {}
    out: dict[tuple, Cell] = {}
    for c in cells:
        if version and not c.source.startswith(version):
            continue
        out.setdefault((c.dataset, c.model, c.metric, c.category), c)
    return out


def build_tables(run_paths: list[str], *, digits: int = 3, paper_version: str | None = None,
                 with_paper: bool = True, category: str = "all", allow_mismatch: bool = False) -> list[Table]:
    """Tables of one or more runs. A (dataset, model) pair may come from one run only, and runs that
    share a dataset must be like runs (``records.run_mismatches``) unless ``allow_mismatch``."""
    from benchmark.records import run_mismatches

    states = [load_results(p) for p in run_paths]
    majors = {s.get("schema_version") for s in states}
    if len(majors) > 1:
        raise ValueError(f"runs have different schema versions {sorted(majors)}; build them separately")
    owner: dict[tuple[str, str], str] = {}
    for path, st in zip(run_paths, states):
        for ds, per_model in (st.get("results") or {}).items():
            for model in per_model:
                if (ds, model) in owner:
                    raise ValueError(f"{model} on {ds} is in both {owner[(ds, model)]} and {path}; build one of "
                                     "them (a table shows one result per pair)")
                owner[(ds, model)] = str(path)
    for i in range(len(states)):
        for j in range(i + 1, len(states)):
            bad = run_mismatches(states[i], states[j])
            if bad and not allow_mismatch:
                raise ValueError(f"{run_paths[i]} and {run_paths[j]} are unlike runs ({'; '.join(bad)}); pass "
                                 "--allow-mismatch to put them in one table anyway")
    cells: dict[tuple, Cell] = {}
    meta: dict[str, Any] = {"protocols": set(), "limits": set(), "harness": set(), "datasets": {},
                            "prompt_sets": set()}
    for path, s in zip(run_paths, states):
        meta["protocols"].add(s.get("protocol", {}).get("id"))
        meta["prompt_sets"].add((s.get("config") or {}).get("prompt_set") or "simple")
        meta["harness"].add(f"{s.get('harness_version')}@{str(s.get('git_commit', ''))[:10]}")
        if s.get("limit"):
            meta["limits"].add(s["limit"])
        for name, d in s.get("datasets", {}).items():
            meta["datasets"][name] = f"v{d.get('card_version')}, split {d.get('split')}; {dataset_line(name, d)}"
        for c in run_cells(s, source=str(path)):
            if c.category == category and "[" not in c.dataset:
                cells[(c.dataset, c.task, c.model, c.metric)] = c
    ref = paper_reference(paper_version) if with_paper else {}
    limit_mark = f" [LIMITED RUN: --limit {', '.join(map(str, sorted(meta['limits'])))}]" if meta["limits"] else ""
    tables = []
    for ds, task in sorted({(k[0], k[1]) for k in cells}, key=lambda x: (x[0], str(x[1]))):
        models = sorted({k[2] for k in cells if k[0] == ds and k[1] == task}, key=lambda m: (m in SANITY, m))
        metrics = sorted({k[3] for k in cells if k[0] == ds and k[1] == task})
        header = ["model"]
        for m in metrics:
            header.append(m)
            if ref:
                header += [f"{m} paper", f"{m} Δ"]
        rows = []
        for model in models:
            row = [f"{model} (floor)" if model in SANITY else model]
            for m in metrics:
                c = cells.get((ds, task, model, m))
                text = "" if c is None or c.value is None else f"{c.value:.{digits}f}" + _ci(c.lo, c.hi, digits)
                p = ref.get((ds, model, m, category))
                for ps in sorted(meta["prompt_sets"]):
                    p = p or ref.get((f"{ds}[prompt={ps}]", model, m, category))
                if p is not None and c is not None and c.value is not None and p.lo is not None \
                        and p.hi is not None and not (p.lo <= c.value <= p.hi):
                    text += " " + OUTSIDE_CI
                row.append(text)
                if ref:
                    row.append("" if p is None else _fmt(p.value, digits) + _ci(p.lo, p.hi, digits))
                    row.append("" if p is None or c is None or c.value is None else f"{c.value - p.value:+.{digits}f}")
            rows.append(row)
        notes = [f"protocol: {', '.join(sorted(map(str, meta['protocols'])))}",
                 f"dataset: {meta['datasets'].get(ds, ds)}",
                 f"harness: {', '.join(sorted(meta['harness']))}",
                 "cells: point [95% CI]; (floor) = weight-free sanity model"]
        if ref:
            notes.append(f"paper: published value [CI]; Δ = reproduced − paper; {OUTSIDE_CI} = outside the paper's CI")
        if limit_mark:
            notes.append(limit_mark.strip(" []") + ": not comparable with full runs")
        shown = [c for k, c in cells.items() if k[0] == ds and k[1] == task]
        if any(c.value is not None and (c.lo is None) != (c.hi is None) for c in shown):
            notes.append(OPEN_BOUND_NOTE)
        tables.append(Table(f"{ds} · {task}{limit_mark}", header, rows, notes))
    return tables


def render(tables: list[Table], fmt: str = "md") -> str:
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        for t in tables:
            w.writerow([t.title])
            w.writerow(t.header)
            w.writerows(t.rows)
            for n in t.notes:
                w.writerow([f"# {n}"])
            w.writerow([])
        return buf.getvalue()
    from tabulate import tabulate

    tablefmt = {"md": "github", "latex": "latex_booktabs", "html": "html"}[fmt]
    parts = []
    for t in tables:
        body = tabulate(t.rows, headers=t.header, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "md":
            parts.append(f"### {t.title}\n\n{body}\n\n" + "\n".join(f"- {n}" for n in t.notes))
        elif fmt == "latex":
            notes = "\n".join(f"% {n}" for n in t.notes)
            parts.append(f"% {t.title}\n{notes}\n{body}")
        else:
            import html

            notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
            parts.append(f"<h3>{html.escape(t.title)}</h3>\n{body}\n<ul>{notes}</ul>")
    return "\n\n".join(parts) + "\n"
