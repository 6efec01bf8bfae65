"""An HTML page for a run (jinja2 template ``templates/report.html.j2``): the tables of ``build``,
the figures of ``figures`` in one colour per model, paired comparisons against a reference model,
and a note for everything a figure cannot show (open CI bounds, undefined values, unsaved maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.build import build_tables, paper_layout_tables, render
from benchmark.figures import (
    SANITY,
    category_bars,
    metric_bars,
    overlays,
    run_style,
    threshold_curves,
)
from benchmark.records import atomic_write_text
from benchmark.regress import load_results

MAIN_METRICS = ("iou", "dice", "cnr", "hit", "auroc", "balanced_accuracy")
COMPARE_COLUMNS = ("iou", "dice", "cnr", "hit")
N_BOOT_COMPARE = 1000


def _template():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("benchmark", "templates"), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2")


def default_reference(models: list[str]) -> str | None:
    """AFLoc when the run has it, else the first model that is not a floor."""
    if "afloc" in models:
        return "afloc"
    return next((m for m in models if m not in SANITY), None)


def _flagged_cells(state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Overall cells with a missing CI bound, and cells without a value."""
    open_ci, undefined = [], []
    for ds, per_model in state.get("results", {}).items():
        for model, rows in per_model.items():
            for r in rows:
                if r.get("category") != "all" or "@" in r["metric"]:
                    continue
                name = f"{model} · {ds} · {r['metric']}"
                if r.get("point") is None:
                    undefined.append(name)
                elif r.get("lo") is None or r.get("hi") is None:
                    open_ci.append(name)
    return open_ci, undefined


def paired_comparison(run_dir: Path, dataset: str, reference: str, models: list[str]) -> str | None:
    """HTML table: ``reference − model`` per headline metric, paired over the same samples."""
    import pandas as pd

    from benchmark.compare import compare_frames
    from benchmark.records import record_stem

    def frame(model: str) -> pd.DataFrame | None:
        path = run_dir / "samples" / f"{record_stem(dataset, model)}.parquet"
        if not path.is_file():
            return None
        df = pd.read_parquet(path)
        per_t = [c for c in df.columns if str(c).startswith("iou@")]
        if "iou" not in df and per_t:
            df["iou@mean"] = df[per_t].mean(axis=1)
        return df

    ref = frame(reference)
    if ref is None:
        return None
    rows = []
    for model in models:
        if model == reference:
            continue
        other = frame(model)
        if other is None:
            continue
        for task in (ref["task"].unique() if "task" in ref else [None]):
            fa = ref if task is None else ref[ref["task"] == task].reset_index(drop=True)
            fb = other if task is None else other[other["task"] == task].reset_index(drop=True)
            if fb.empty:
                continue
            wanted = [c for c in (*COMPARE_COLUMNS, "iou@mean") if c in fa and c in fb and fa[c].notna().any()]
            if task == "classification" or ("score" in fa and "label" in fa and task is None):
                wanted.append("auroc")
            if not wanted:
                continue
            for r in compare_frames(fa, fb, metrics=wanted, n_boot=N_BOOT_COMPARE):
                if r["category"] == "all":
                    rows.append({"model": model, "metric": r["metric"], f"{reference}": r["a"], "model value": r["b"],
                                 "difference": r["diff"], "95% CI": _ci_text(r["lo"], r["hi"]),
                                 "p": r["p_value"], "n": r["n"]})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    return table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a", border=0)


def _ci_text(lo: Any, hi: Any) -> str:
    import math

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.3f}"

    return f"[{f(lo)}, {f(hi)}]"


def finetune_html(paths: list[str | Path]) -> str:
    """The fine-tuning tables (``build.finetune_tables``: Supplementary Table 7's layout where the
    paper has one) of the folders written by ``afloc-bench finetune``, as HTML."""
    from benchmark.build import finetune_tables
    from benchmark.regress import finetune_runs

    runs = []
    for p in paths:
        found = finetune_runs(p)
        if not found:
            raise ValueError(f"{p}: no fine-tuning run (expected a folder written by afloc-bench finetune)")
        runs += found
    return render(finetune_tables(runs), "html")


def write_finetune_report(paths: list[str | Path], out_dir: str | Path) -> Path:
    """``out_dir/index.html`` with the fine-tuning tables of ``paths`` only (no evaluation run)."""
    from benchmark.records import now_iso

    out_dir = Path(out_dir)
    page = _template().render(
        run_name=", ".join(Path(p).name for p in paths), protocol="fine-tuning (docs/finetune.md)", harness=_version(),
        commit="", date=now_iso(), n_boot=None, precision=None, warnings=[], legend=[], notes=[], overall=[],
        tables="", datasets=[], reference=None, n_boot_compare=N_BOOT_COMPARE, finetune=finetune_html(paths))
    out = out_dir / "index.html"
    atomic_write_text(out, page)
    return out


def _version() -> str:
    from benchmark import __version__

    return str(__version__)


def write_report(run_dir: str | Path, out_dir: str | Path, n_overlay: int = 4, *,
                 overlay_choice: str | list[str] = "first", reference: str | None = None,
                 finetune: list[str | Path] | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures/``. ``overlay_choice``: best, worst,
    random, first or sample ids (``figures.choose_samples``); ``reference``: the model the others
    are compared with (default AFLoc, else the first model that is not a floor); ``finetune``:
    fine-tuning folders whose tables the page adds. A fine-tuning folder as ``run_dir`` gives a page
    of its tables only."""
    from benchmark.regress import finetune_runs

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if finetune_runs(run_dir):
        return write_finetune_report([run_dir, *(finetune or [])], out_dir)
    ft_tables = finetune_html(list(finetune)) if finetune else None
    state = load_results(run_dir)
    figs = out_dir / "figures"
    style = run_style(state)
    models = style.models
    if reference is not None and reference not in models:
        raise ValueError(f"--reference {reference!r} is not a model of this run ({', '.join(models)})")
    reference = reference or default_reference(models)
    warnings = []
    if state.get("limit"):
        warnings.append(f"Limited run (--limit {state['limit']}): not comparable with full runs.")
    precision = (state.get("config") or {}).get("precision")
    if precision and precision != "fp32":
        warnings.append(f"Encoders ran at {precision}: the parity figures hold for fp32 only.")
    metrics = {r["metric"] for per in state.get("results", {}).values() for rows in per.values() for r in rows}
    shown = [m for m in MAIN_METRICS if m in metrics] or sorted(metrics)[:4]
    overall = []
    for m in shown:
        p = metric_bars(state, m, figs / f"bars_{m}.png", style=style)
        if p:
            overall.append({"file": p.name, "alt": f"{m} per dataset and model"})
    open_ci, undefined = _flagged_cells(state)
    notes = []
    if open_ci:
        notes.append(f"{len(open_ci)} overall cell(s) have a CI with a missing bound (marked open CI on the bars "
                     f"and n/a in the tables): {', '.join(open_ci[:12])}" + (" ..." if len(open_ci) > 12 else ""))
    if undefined:
        notes.append(f"{len(undefined)} overall cell(s) have no value (n/a on the bars, empty in the tables): "
                     f"{', '.join(undefined[:12])}" + (" ..." if len(undefined) > 12 else ""))
    datasets = []
    for ds in sorted(state.get("results", {})):
        entry: dict[str, Any] = {"name": ds, "figures": [], "notes": []}
        p = threshold_curves(state, ds, figs / f"thresholds_{ds}.png", style=style)
        if p:
            entry["figures"].append({"file": p.name, "alt": f"{ds} IoU against the threshold"})
        for m in shown:
            p = category_bars(state, ds, m, figs / f"cat_{ds}_{m}.png", style=style)
            if p:
                entry["figures"].append({"file": p.name, "alt": f"{ds} {m} per pathology"})
        p = overlays(run_dir, ds, figs / f"overlay_{ds}.png", n_samples=n_overlay, choose=overlay_choice,
                     reference=reference, style=style)
        if p:
            entry["figures"].append({"file": p.name, "alt": f"{ds} heatmap overlays"})
        elif not (run_dir / "heatmaps").is_dir() or not any((run_dir / "heatmaps").glob(f"{ds}__*.npz")):
            entry["notes"].append(f"No heatmap overlays: the run saved no maps for {ds} (run with --save-heatmaps N; "
                                  "golden result folders keep no maps).")
        if reference:
            entry["comparison"] = paired_comparison(run_dir, ds, reference, [m for m in models if m in
                                                                               state["results"][ds]])
        datasets.append(entry)
    tables = render(paper_layout_tables([str(run_dir)]) + build_tables([str(run_dir)]), "html")
    page = _template().render(
        run_name=run_dir.name, protocol=str((state.get("protocol") or {}).get("id")),
        harness=str(state.get("harness_version")), commit=str(state.get("git_commit"))[:10],
        date=str(state.get("date")), n_boot=(state.get("config") or {}).get("n_boot"),
        precision=precision if precision and precision != "fp32" else None, warnings=warnings,
        legend=[{"name": m, "color": style.color(m), "floor": m in SANITY} for m in models], notes=notes,
        overall=overall, tables=tables, datasets=datasets, reference=reference, n_boot_compare=N_BOOT_COMPARE,
        finetune=ft_tables)
    out = out_dir / "index.html"
    atomic_write_text(out, page)
    return out
