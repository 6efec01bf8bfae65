"""An HTML page for a run: the tables of ``build`` and the figures of ``figures``."""

from __future__ import annotations

import html
from pathlib import Path

from benchmark.build import build_tables, paper_layout_tables, render
from benchmark.figures import category_bars, metric_bars, overlays
from benchmark.records import atomic_write_text
from benchmark.regress import load_results

MAIN_METRICS = ("iou", "dice", "cnr", "hit", "auroc", "balanced_accuracy")


def write_report(run_dir: str | Path, out_dir: str | Path, n_overlay: int = 4) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = load_results(run_dir)
    figs = out_dir / "figures"
    parts = [f"<h1>afloc-bench run {html.escape(run_dir.name)}</h1>",
             f"<p>protocol <b>{html.escape(str(state.get('protocol', {}).get('id')))}</b>, harness "
             f"{html.escape(str(state.get('harness_version')))} ({html.escape(str(state.get('git_commit'))[:10])}), "
             f"{html.escape(str(state.get('date')))}, n_boot {state.get('config', {}).get('n_boot')}</p>"]
    if state.get("limit"):
        parts.append(f"<p style='color:#b00'><b>Limited run (--limit {state['limit']}): not comparable with "
                     "full runs.</b></p>")
    metrics = sorted({r["metric"] for per in state.get("results", {}).values() for rows in per.values()
                      for r in rows})
    shown = [m for m in MAIN_METRICS if m in metrics] or metrics[:4]
    parts.append("<h2>Overall results</h2>")
    for m in shown:
        p = metric_bars(state, m, figs / f"bars_{m}.png")
        if p:
            parts.append(f"<img src='figures/{p.name}' alt='{m}'>")
    parts.append("<h2>Tables</h2>")
    parts.append(render(paper_layout_tables([str(run_dir)]) + build_tables([str(run_dir)]), "html"))
    for ds in sorted(state.get("results", {})):
        parts.append(f"<h2>{html.escape(ds)}</h2>")
        for m in shown:
            p = category_bars(state, ds, m, figs / f"cat_{ds}_{m}.png")
            if p:
                parts.append(f"<img src='figures/{p.name}' alt='{ds} {m}'>")
        p = overlays(run_dir, ds, figs / f"overlay_{ds}.png", n_samples=n_overlay)
        if p:
            parts.append(f"<img src='figures/{p.name}' alt='{ds} overlays'>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%;margin:6px 0}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>afloc-bench report</title><style>{style}" \
           f"</style></head><body>{''.join(parts)}</body></html>\n"
    out = out_dir / "index.html"
    atomic_write_text(out, page)
    return out
