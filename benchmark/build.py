"""Tables from run records, in md/latex/html, and every cell as a tidy CSV.

Paper tables (``paper_layout_tables``): each table of the paper that the runs fill at least one
cell of, in the paper's rows and columns, the reproduced ``point [lo, hi]`` beside the published
value. Run tables (``build_tables``): one per (dataset, task), models as rows (sanity floors
marked), the headline metrics as columns (per-threshold ones with ``metrics="all"``), cells
``point [lo, hi]``; beside a metric the paper has numbers for, the paper's value and the
difference. ``†`` marks a reproduced point outside the paper's CI. Limited runs are marked
everywhere. ``tidy_cells``: one row per (dataset, task, model, metric, category).

Fine-tuning tables (``finetune_tables``, ``finetune_tidy``): results of ``afloc-bench finetune``,
encoders × label fractions, in Supplementary Table 7's layout beside its published Dice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.regress import Cell, load_results, run_cells
from benchmark.tables import OPEN_BOUND_NOTE, dataset_line

SANITY = {"random", "uniform", "center_prior"}
OUTSIDE_CI = "†"
# the paper's headline metrics first, in this order; per-threshold ones (``iou@0.3``) are not headline
HEADLINE_ORDER = ("iou", "dice", "cnr", "hit", "auroc", "balanced_accuracy")


def is_headline(metric: str) -> bool:
    return "@" not in metric


def metric_order(metrics) -> list[str]:
    def key(m: str) -> tuple:
        base = m.split("@")[0]
        return ("@" in m, HEADLINE_ORDER.index(base) if base in HEADLINE_ORDER else len(HEADLINE_ORDER), m)

    return sorted(metrics, key=key)


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


def _outside(c: Cell | None, p: Cell | None) -> bool:
    """A reproduced point outside the paper's CI."""
    return (p is not None and c is not None and c.value is not None and p.lo is not None and p.hi is not None
            and not (p.lo <= c.value <= p.hi))


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


def _collect(run_paths: list[str], allow_mismatch: bool) -> tuple[list[Cell], dict[str, Any]]:
    """Every cell of the runs, and what the tables' notes say about them. A (dataset, model) pair
    may come from one run only, and runs that share a dataset must be like runs
    (``records.run_mismatches``) unless ``allow_mismatch``."""
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
    out: list[Cell] = []
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
        out.extend(c for c in run_cells(s, source=str(path)) if "[" not in c.dataset)
    return out, meta


def build_tables(run_paths: list[str], *, digits: int = 3, paper_version: str | None = None,
                 with_paper: bool = True, category: str = "all", allow_mismatch: bool = False,
                 metrics: str = "headline") -> list[Table]:
    """Run tables: one per (dataset, task) of the runs. ``metrics``: ``headline`` (no
    per-threshold columns) or ``all``; ``category``: the category rows shown (default overall)."""
    if metrics not in ("headline", "all"):
        raise ValueError(f"metrics must be 'headline' or 'all', not {metrics!r}")
    found, meta = _collect(run_paths, allow_mismatch)
    cells = {(c.dataset, c.task, c.model, c.metric): c for c in found
             if c.category == category and (metrics == "all" or is_headline(c.metric))}
    ref = paper_reference(paper_version) if with_paper else {}
    limit_mark = f" [LIMITED RUN: --limit {', '.join(map(str, sorted(meta['limits'])))}]" if meta["limits"] else ""
    tables = []
    for ds, task in sorted({(k[0], k[1]) for k in cells}, key=lambda x: (x[0], str(x[1]))):
        models = sorted({k[2] for k in cells if k[0] == ds and k[1] == task}, key=lambda m: (m in SANITY, m))
        metric_names = metric_order({k[3] for k in cells if k[0] == ds and k[1] == task})

        def paper_of(model: str, m: str, ds: str = ds) -> Cell | None:
            p = ref.get((ds, model, m, category))
            for ps in sorted(meta["prompt_sets"]):
                p = p or ref.get((f"{ds}[prompt={ps}]", model, m, category))
            return p

        with_ref = {m for m in metric_names if any(paper_of(model, m) is not None for model in models)}
        header = ["model"]
        for m in metric_names:
            header.append(m)
            if m in with_ref:  # no empty paper columns
                header += [f"{m} paper", f"{m} Δ"]
        rows = []
        for model in models:
            row = [f"{model} (floor)" if model in SANITY else model]
            for m in metric_names:
                c = cells.get((ds, task, model, m))
                text = "" if c is None or c.value is None else f"{c.value:.{digits}f}" + _ci(c.lo, c.hi, digits)
                p = paper_of(model, m)
                if _outside(c, p):
                    text += " " + OUTSIDE_CI
                row.append(text)
                if m in with_ref:
                    row.append("" if p is None else _fmt(p.value, digits) + _ci(p.lo, p.hi, digits))
                    row.append("" if p is None or c is None or c.value is None else f"{c.value - p.value:+.{digits}f}")
            rows.append(row)
        notes = [f"protocol: {', '.join(sorted(map(str, meta['protocols'])))}",
                 f"dataset: {meta['datasets'].get(ds, ds)}",
                 f"harness: {', '.join(sorted(meta['harness']))}",
                 "cells: point [95% CI]; (floor) = weight-free sanity model"]
        if with_ref:
            notes.append(f"paper: published value [CI]; Δ = reproduced − paper; {OUTSIDE_CI} = outside the paper's CI")
        if limit_mark:
            notes.append(limit_mark.strip(" []") + ": not comparable with full runs")
        shown = [c for k, c in cells.items() if k[0] == ds and k[1] == task]
        if any(c.value is not None and (c.lo is None) != (c.hi is None) for c in shown):
            notes.append(OPEN_BOUND_NOTE)
        tables.append(Table(f"{ds} · {task}{limit_mark}", header, rows, notes))
    return tables


def _run_lookup(cells: list[Cell]):
    """Find a run's cell for a paper cell: same model, metric and category, the dataset by its base
    name and, where the paper names one (``ms_cxr[prompt=precise]``), the prompt set it was run with."""
    from benchmark.paper import split_name

    by_key: dict[tuple, list[Cell]] = {}
    for c in cells:
        by_key.setdefault((c.dataset, c.model, c.metric, c.category), []).append(c)

    def lookup(r: dict[str, Any]) -> Cell | None:
        base, quals = split_name(str(r["dataset"]))
        category = r.get("category") if isinstance(r.get("category"), str) and r.get("category") else "all"
        for c in by_key.get((base, str(r["model"]), str(r["metric"]), category), []):
            if "prompt" not in quals or c.prompt_set == quals["prompt"]:
                return c
        return None

    return lookup


def _scale(r: dict[str, Any]) -> float:
    return 100.0 if str(r.get("unit", "")).lower() in ("percent", "%", "percentage") else 1.0


def paper_layout_tables(run_paths: list[str], *, paper_version: str | None = None, allow_mismatch: bool = False
                        ) -> list[Table]:
    """Each paper table the runs fill at least one cell of, in the paper's layout: per paper column,
    the reproduced ``point [lo, hi]`` (in the paper's unit and decimals) and the published value.
    Rows the runs fill no cell of are left out and named in a note."""
    from benchmark import paper

    found, meta = _collect(run_paths, allow_mismatch)
    lookup = _run_lookup(found)
    try:
        index = paper.load_index()
    except (FileNotFoundError, ValueError):
        return []
    tables = []
    for entry in index["tables"]:
        if entry["table"] == "text_values" or (paper_version and entry["version"] != paper_version):
            continue
        cells = paper.paper_cells(table=entry["table"], version=entry["version"])
        if cells.empty or not any(lookup(r) is not None for r in cells.to_dict("records")):
            continue
        decimals = int((entry.get("layout") or {}).get("decimals", 3))

        def reproduced(r: dict[str, Any], decimals: int = decimals) -> str:
            c = lookup(r)
            if c is None or c.value is None:
                return ""
            k = _scale(r)
            lo, hi = (None if c.lo is None else c.lo * k), (None if c.hi is None else c.hi * k)
            p_lo, p_hi = r.get("ci_low"), r.get("ci_high")
            mark = ""
            if p_lo is not None and p_hi is not None and not (pd.isna(p_lo) or pd.isna(p_hi)) \
                    and not (p_lo <= c.value * k <= p_hi):
                mark = " " + OUTSIDE_CI
            return f"{c.value * k:.{decimals}f}" + _ci(lo, hi, decimals) + mark

        import pandas as pd

        run_t = paper.paper_table(entry["id"], cell_fn=reproduced)
        pub_t = paper.paper_table(entry["id"], field="text")
        filled = run_t.apply(lambda row: any(isinstance(v, str) and v for v in row), axis=1)
        dropped = [_label(k) for k in run_t.index[~filled.to_numpy()]]
        run_t, pub_t = run_t[filled.to_numpy()], pub_t[filled.to_numpy()]
        header = [" / ".join(n for n in run_t.index.names if n) or "row"]
        for col in run_t.columns:
            header += [f"{_label(col)} · run", f"{_label(col)} · paper"]
        rows = []
        for key in run_t.index:
            row = [_label(key)]
            for col in run_t.columns:
                rv, pv = run_t.at[key, col], pub_t.at[key, col]
                row += ["" if rv is None or (not isinstance(rv, str) and pd.isna(rv)) else str(rv),
                        "" if pv is None or (not isinstance(pv, str) and pd.isna(pv)) else str(pv)]
            rows.append(row)
        notes = [f"{entry.get('label', entry['id'])} ({entry['id']}): {entry['caption']}",
                 f"protocol: {', '.join(sorted(map(str, meta['protocols'])))}; harness: "
                 f"{', '.join(sorted(meta['harness']))}",
                 f"run: point [95% CI] in the paper's unit; paper: as published; {OUTSIDE_CI} = outside the "
                 "paper's CI"]
        for name in sorted({lookup(r).dataset for r in cells.to_dict("records") if lookup(r) is not None}):
            if name in meta["datasets"]:
                notes.append(f"dataset: {meta['datasets'][name]}")
        if dropped:
            notes.append(f"rows not in the runs (left out): {', '.join(dropped)}")
        if meta["limits"]:
            notes.append(f"LIMITED RUN: --limit {', '.join(map(str, sorted(meta['limits'])))}: not comparable "
                         "with the paper")
        tables.append(Table(f"{entry.get('label', entry['id'])} · {entry['version']}", header, rows, notes))
    return tables


def _label(key: Any) -> str:
    return " / ".join(str(k) for k in key if str(k)) if isinstance(key, tuple) else str(key)


TIDY_COLUMNS = ["dataset", "task", "model", "metric", "category", "point", "lo", "hi", "n", "prompt_set",
                "paper_table", "paper_value", "paper_lo", "paper_hi", "delta", "outside_paper_ci", "run",
                "sd", "n_seeds"]  # sd, n_seeds: fine-tuning cells averaged over seeds


def tidy_cells(run_paths: list[str], *, paper_version: str | None = None, with_paper: bool = True,
               allow_mismatch: bool = False):
    """Every cell of the runs as one row (all metrics and categories), with the paper's value beside
    it where the paper has one: a tidy frame (``TIDY_COLUMNS``) for pandas, R or a spreadsheet."""
    import pandas as pd

    found, meta = _collect(run_paths, allow_mismatch)
    ns = {}
    for path in run_paths:
        for ds, per_model in (load_results(path).get("results") or {}).items():
            for model, rows in per_model.items():
                for r in rows:
                    ns[(ds, model, r.get("task"), r["metric"], r.get("category", "all"))] = r.get("n")
    ref = paper_reference(paper_version) if with_paper else {}
    rows = []
    for c in found:
        p = ref.get((c.dataset, c.model, c.metric, c.category))
        if p is None and c.prompt_set:
            p = ref.get((f"{c.dataset}[prompt={c.prompt_set}]", c.model, c.metric, c.category))
        rows.append({"dataset": c.dataset, "task": c.task, "model": c.model, "metric": c.metric,
                     "category": c.category, "point": c.value, "lo": c.lo, "hi": c.hi,
                     "n": ns.get((c.dataset, c.model, c.task, c.metric, c.category)), "prompt_set": c.prompt_set,
                     "paper_table": None if p is None else p.source, "paper_value": None if p is None else p.value,
                     "paper_lo": None if p is None else p.lo, "paper_hi": None if p is None else p.hi,
                     "delta": None if p is None or c.value is None else c.value - p.value,
                     "outside_paper_ci": None if p is None or p.lo is None else _outside(c, p), "run": c.source})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def render(tables: list[Table], fmt: str = "md") -> str:
    """md, latex (pandas ``Styler.to_latex``, every cell escaped) or html; CSV is ``tidy_cells``."""
    if fmt == "latex":
        import pandas as pd

        parts = []
        for t in tables:
            frame = pd.DataFrame(t.rows, columns=t.header)
            styler = (frame.style.hide(axis="index").format(_latex_symbols, escape="latex")
                      .format_index(_latex_symbols, escape="latex", axis=1))
            body = styler.to_latex(hrules=True, caption=_latex_escape(t.title))
            notes = "\n".join(f"% {n}" for n in t.notes)
            parts.append(f"{notes}\n{body}")
        return "\n\n".join(parts) + "\n"
    from tabulate import tabulate

    if fmt not in ("md", "html"):
        raise ValueError(f"format must be md, latex or html (csv: tidy_cells), not {fmt!r}")
    tablefmt = {"md": "github", "html": "html"}[fmt]
    parts = []
    for t in tables:
        body = tabulate(t.rows, headers=t.header, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "md":
            parts.append(f"### {t.title}\n\n{body}\n\n" + "\n".join(f"- {n}" for n in t.notes))
        else:
            import html

            notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
            parts.append(f"<h3>{html.escape(t.title)}</h3>\n{body}\n<ul>{notes}</ul>")
    return "\n\n".join(parts) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# characters pdflatex cannot typeset from UTF-8 text, written as math (after Styler's escaping)
LATEX_SYMBOLS = {"Δ": r"$\Delta$", OUTSIDE_CI: r"$^\dagger$", "−": "-", "·": r"$\cdot$", "×": r"$\times$",
                 "±": r"$\pm$", "–": "--"}


def _latex_symbols(value: Any) -> str:
    text = str(value)
    for ch, tex in LATEX_SYMBOLS.items():
        text = text.replace(ch, tex)
    return text


def _latex_escape(text: str) -> str:
    """A caption: Styler escapes cells and headers, not the caption."""
    return _latex_symbols("".join(LATEX_SPECIAL.get(ch, ch) for ch in text))


# -------------------------------------------------------------------------------------------------
# fine-tuning runs: Supplementary Table 7's layout
# -------------------------------------------------------------------------------------------------
# encoders that no paper table names: the controls of ``afloc-bench finetune``
CONTROL_LABELS = {"random": "random init (no pretraining)", "imagenet": "ImageNet (supervised)"}


def _model_labels() -> dict[str, str]:
    """The paper's printed name of every model some paper table labels (first label wins)."""
    from benchmark import paper

    out: dict[str, str] = {}
    try:
        index = paper.load_index()
    except (FileNotFoundError, ValueError):
        return out
    for entry in index["tables"]:
        for dim, mapping in (entry.get("labels") or {}).items():
            if dim in ("model", "model:base"):
                for k, v in mapping.items():
                    out.setdefault(str(k), str(v))
    return out


def finetune_paper_entry(dataset: str, metric: str, version: str | None = None) -> dict[str, Any] | None:
    """The paper table of fine-tuning results (models qualified ``[finetune=...]``) for ``metric`` on
    ``dataset`` or on the real dataset a demo dataset stands in for; None when the paper has none."""
    from benchmark import paper
    from benchmark.regress import demo_stand_in

    wanted = {dataset, demo_stand_in(dataset)} - {None}
    try:
        index = paper.load_index()
    except (FileNotFoundError, ValueError):
        return None
    for entry in index["tables"]:
        if entry["table"] == "text_values" or (version and entry["version"] != version):
            continue
        cells = paper.paper_cells(table=entry["table"], version=entry["version"])
        hit = cells[(cells["metric"] == metric) & cells["dataset"].isin(wanted)
                    & cells["model"].map(lambda m: "finetune" in paper.split_name(m)[1])]
        if not hit.empty:
            return entry
    return None


def _ft_text(c: Cell | None, digits: int) -> str:
    """``mean ± SD`` over several seeds, ``point [lo, hi]`` for one."""
    if c is None or c.value is None:
        return ""
    if c.sd is not None and (c.n_seeds or 0) > 1:
        return f"{c.value:.{digits}f} ± {c.sd:.{digits}f}"
    return f"{c.value:.{digits}f}" + _ci(c.lo, c.hi, digits)


def _fraction_order(label: str) -> float:
    return float(label.rstrip("%"))


def finetune_tables(runs, *, digits: int = 3, paper_version: str | None = None, with_paper: bool = True,
                    metrics: str = "headline", allow_mismatch: bool = False) -> list[Table]:
    """Fine-tuning results (``regress.FinetuneRun``) as tables of encoders × label fractions, one per
    task, dataset and metric (``headline``: the first metric of the task, ``all``: every one). Where
    the paper has a table of the metric (Supplementary Table 7: Dice on SIIM), its layout: its
    encoders and fractions in its order and labels, each reproduced cell beside the published one
    (``paper.paper_table`` with a ``cell_fn``); encoders and fractions without runs are left out and
    named under the table, encoders the paper lacks (the controls) come last."""
    from benchmark.regress import FINETUNE_METRICS, check_unique, finetune_cells, finetune_mismatches

    if metrics not in ("headline", "all"):
        raise ValueError(f"metrics must be 'headline' or 'all', not {metrics!r}")
    runs = list(runs)
    check_unique(runs)
    bad = finetune_mismatches(runs)
    if bad and not allow_mismatch:
        raise ValueError(f"unlike fine-tuning runs ({'; '.join(bad)}); pass --allow-mismatch to put them in one "
                         "table anyway")
    labels = _model_labels()
    tables = []
    for task, dataset in sorted({(r.task, r.dataset) for r in runs}):
        group = [r for r in runs if (r.task, r.dataset) == (task, dataset)]
        cells = {(c.model, c.metric): c for c in finetune_cells(group)}
        order = FINETUNE_METRICS[group[0].kind]
        present = {m for r in group for m in r.metrics}
        names = [m for m in order if m in present] + sorted(present - set(order))
        for metric in names[:1] if metrics == "headline" else names:
            tables.append(_finetune_table(group, cells, metric, digits, labels, paper_version, with_paper,
                                          [m for m in bad if any(r.path in m for r in group)]))
    return tables


def _finetune_table(group, cells: dict[tuple, Cell], metric: str, digits: int, labels: dict[str, str],
                    paper_version: str | None, with_paper: bool, mismatches: list[str]) -> Table:
    from benchmark import paper
    from benchmark.regress import finetune_model, fraction_label

    task, dataset = group[0].task, group[0].dataset
    run_models = sorted({r.model for r in group}, key=lambda m: (m in CONTROL_LABELS, m))
    run_fracs = sorted({fraction_label(r.fraction) for r in group}, key=_fraction_order)
    frac_of = {fraction_label(r.fraction): r.fraction for r in group}

    def cell(model: str, frac: str) -> Cell | None:
        return cells.get((finetune_model(model, frac_of[frac]), metric)) if frac in frac_of else None

    entry = finetune_paper_entry(dataset, metric, paper_version) if with_paper else None
    published: dict[tuple[str, str], str] = {}
    paper_models: list[str] = []
    paper_fracs: list[str] = []
    dropped_rows: list[str] = []
    dropped_cols: list[str] = []
    paper_ds = None
    if entry is not None:
        dec = int((entry.get("layout") or {}).get("decimals", digits))
        digits = dec

        def reproduced(r: dict[str, Any]) -> str:
            base, quals = paper.split_name(str(r["model"]))
            if r["metric"] != metric or "finetune" not in quals:
                return ""
            c = cell(base, quals["finetune"])
            p = Cell(r["dataset"], r["model"], None, metric, "all", r["value"], _nan_none(r.get("ci_low")),
                     _nan_none(r.get("ci_high")))
            return _ft_text(c, dec) + (" " + OUTSIDE_CI if _outside(c, p) else "")

        run_t = paper.paper_table(entry["id"], labels="canonical", cell_fn=reproduced)
        pub_t = paper.paper_table(entry["id"], labels="canonical", field="text")
        row_dims = list((entry.get("layout") or {}).get("rows", []))
        if row_dims and row_dims[0].startswith("model[finetune"):  # fractions as rows: encoders become rows
            run_t, pub_t = run_t.T, pub_t.T
        paper_models, paper_fracs = [str(m) for m in run_t.index], [str(f) for f in run_t.columns]
        for m in paper_models:
            for f in paper_fracs:
                published[(m, f)] = str(pub_t.at[m, f])
        paper_ds = sorted({str(r["dataset"]) for r in paper.paper_cells(table=entry["table"],
                                                                        version=entry["version"]).to_dict("records")})
        dropped_rows = [labels.get(m, m) for m in paper_models if m not in run_models]
        dropped_cols = [f for f in paper_fracs if f not in run_fracs]
    models = [m for m in paper_models if m in run_models] + [m for m in run_models if m not in paper_models]
    fracs = [f for f in paper_fracs if f in run_fracs] + [f for f in run_fracs if f not in paper_fracs]

    header = ["Encoder"]
    for f in fracs:
        header += [f"{f} · run", f"{f} · paper"] if entry is not None else [f]
    rows = []
    for m in models:
        row = [labels.get(m) or CONTROL_LABELS.get(m, m)]
        for f in fracs:
            c = cell(m, f)
            p_text = published.get((m, f), "")
            if entry is not None and m in paper_models and f in paper_fracs:
                row.append(str(run_t.at[m, f] or ""))
            else:
                row.append(_ft_text(c, digits))
            if entry is not None:
                row.append(p_text)
        rows.append(row)

    seeds = sorted({len(r.seeds) for r in group})
    budget = sorted({r.max_epochs for r in group if r.max_epochs is not None})
    best = [e for r in group for e in r.best_epochs]
    configs = sorted({str(r.config.get("name") or r.config.get("source") or "?") for r in group})
    notes = []
    if entry is not None:
        notes.append(f"{entry.get('label', entry['id'])} ({entry['id']}): {entry['caption']}")
    notes.append("cells: mean ± SD over seeds (sample SD), or point [95% CI] of one seed (bootstrap over test "
                 "images)" + ("; paper: as published" if entry is not None else ""))
    notes.append(f"runs: {task} on {dataset}, config {', '.join(configs)}, "
                 f"{' / '.join(map(str, seeds))} seed(s) per cell"
                 + (f", at most {' / '.join(map(str, budget))} epochs" if budget else "")
                 + ("" if not best else f" (best epoch {min(best)})" if min(best) == max(best)
                    else f" (best epochs {min(best)}–{max(best)})"))
    if entry is not None and paper_ds and dataset not in paper_ds:
        notes.append(f"the runs are on {dataset}, the paper's cells on {', '.join(paper_ds)}: "
                     "the published values are shown for orientation, not as a target")
    if dropped_rows:
        notes.append(f"rows not in the runs (left out): {', '.join(dropped_rows)}")
    if dropped_cols:
        notes.append(f"columns not in the runs (left out): {', '.join(dropped_cols)}")
    if mismatches:
        notes.append("UNLIKE RUNS (--allow-mismatch): " + "; ".join(mismatches))
    title = (f"{entry.get('label', entry['id'])} · {entry['version']} · {metric} · {dataset}" if entry is not None
             else f"fine-tuning · {dataset} · {task} · {metric}")
    return Table(title, header, rows, notes)


def _nan_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def finetune_tidy(runs, *, paper_version: str | None = None, with_paper: bool = True):
    """Every cell of the fine-tuning runs as one tidy row (``TIDY_COLUMNS``), with the paper's value
    where the paper has the model, fraction and metric (on the dataset or the one a demo dataset
    stands in for)."""
    import pandas as pd

    from benchmark.regress import check_unique, demo_stand_in, finetune_cells

    runs = list(runs)
    check_unique(runs)
    ref = paper_reference(paper_version) if with_paper else {}
    rows = []
    for r in runs:
        for c in finetune_cells([r]):
            p = ref.get((c.dataset, c.model, c.metric, c.category))
            stand_in = demo_stand_in(c.dataset)
            if p is None and stand_in:
                p = ref.get((stand_in, c.model, c.metric, c.category))
            rows.append({"dataset": c.dataset, "task": c.task, "model": c.model, "metric": c.metric,
                         "category": c.category, "point": c.value, "lo": c.lo, "hi": c.hi,
                         "n": r.metrics[c.metric].get("n"), "prompt_set": None,
                         "paper_table": None if p is None else p.source, "paper_value": None if p is None else p.value,
                         "paper_lo": None if p is None else p.lo, "paper_hi": None if p is None else p.hi,
                         "delta": None if p is None or c.value is None else c.value - p.value,
                         "outside_paper_ci": None if p is None or p.lo is None else _outside(c, p), "run": c.source,
                         "sd": c.sd, "n_seeds": c.n_seeds})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)
