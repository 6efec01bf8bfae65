"""Regression of a run against a reference: a golden run or the paper's tables.

A reference is a set of cells keyed by (dataset, model, task, metric, category) with a value
and, where known, a CI. A run drifts when a reference cell is missing from it, or its point
estimate lies outside the tolerance: ``ci`` (inside the reference CI, within the seed SD of a
multi-seed reference, or equal to the printed rounding when the reference has no CI) or an
absolute number.

Fine-tuning runs (``afloc-bench finetune``: a seed's ``results.json`` or a seeds folder's
``summary.json``) become cells too (``finetune_runs``, ``finetune_cells``): the model carries the
label fraction as the paper writes it, ``afloc[finetune=10%]``, so they meet Supplementary Table 7's
cells and each other's.
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
    sd: float | None = None  # of a fine-tuning cell over several seeds: the seeds' sample SD
    n_seeds: int | None = None  # of a fine-tuning cell: how many seeds its value is the mean of

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


def filter_cells(cells: Iterable[Cell], models: str | None = None, datasets: str | None = None,
                 base_names: bool = False) -> list[Cell]:
    """Keep cells whose model and dataset match comma-separated names or globs; ``base_names``: a
    name also matches its qualified forms (``afloc`` keeps ``afloc[finetune=10%]``)."""
    import fnmatch

    from benchmark.paper import split_name

    def ok(name: str, spec: str | None) -> bool:
        pats = [p.strip() for p in (spec or "").split(",") if p.strip()]
        names = {name, split_name(name)[0]} if base_names else {name}
        return spec is None or any(n == p or fnmatch.fnmatchcase(n, p) for p in pats for n in names)

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
        if ref.sd is not None:
            return abs(value - ref.value) <= ref.sd + 1e-12, f"seed SD ±{ref.sd:.4g} ({ref.n_seeds} seeds)"
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


# -------------------------------------------------------------------------------------------------
# fine-tuning runs
# -------------------------------------------------------------------------------------------------
FINETUNE_FORMATS = {"afloc-bench/finetune-seg": "seg", "afloc-bench/finetune-cls": "cls"}
# per task, the metric a paper table reports first (build's headline column), then the others
FINETUNE_METRICS = {"seg": ("dice", "iou", "dice_positive", "iou_positive"), "cls": ("auroc",)}


@dataclass
class FinetuneRun:
    """One fine-tuning result: a seed's ``results.json`` or a seeds folder's ``summary.json``."""

    path: str
    kind: str  # seg | cls
    model: str
    dataset: str
    fraction: float
    mode: str | None  # cls: linear | full
    seeds: list[int]
    config: dict[str, Any]
    max_epochs: int | None
    test_ids: str | None  # SHA-256 of the test id list, what makes two runs' test sets the same
    metrics: dict[str, dict[str, Any]]  # name -> value, lo, hi (one seed), sd (several), n (test images)
    best_epochs: list[int]
    wall_s: float | None

    @property
    def task(self) -> str:
        return f"finetune-{self.kind}" + (f"/{self.mode}" if self.mode else "")

    @property
    def cell_model(self) -> str:
        return finetune_model(self.model, self.fraction)


def fraction_label(fraction: float) -> str:
    """0.01 → ``1%``, as the paper's tables name label fractions."""
    return f"{round(float(fraction) * 100, 6):g}%"


def finetune_model(model: str, fraction: float) -> str:
    return f"{model}[finetune={fraction_label(fraction)}]"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return doc


def _finetune_file(path: Path) -> Path | None:
    """The record of a fine-tuning folder (``summary.json`` before ``results.json``) or file, else None."""
    files = [path] if path.is_file() else [path / "summary.json", path / "results.json"]
    for f in files:
        if f.is_file() and f.suffix == ".json":
            fmt = str(_read_json(f).get("format", ""))
            if fmt.removesuffix("-summary") in FINETUNE_FORMATS:
                return f
    return None


def finetune_runs(path: str | Path) -> list[FinetuneRun] | None:
    """The fine-tuning results at ``path``: a run folder, a seeds folder, their JSON file, or a folder
    whose subfolders are such folders (one level); None when ``path`` holds no fine-tuning run."""
    p = Path(path)
    f = _finetune_file(p) if p.exists() else None
    if f is not None:
        return [_load_finetune(f)]
    if not p.is_dir() or (p / "results.json").is_file():
        return None
    found = [_finetune_file(c) for c in sorted(p.iterdir()) if c.is_dir()]
    found = [f for f in found if f is not None]
    return [_load_finetune(f) for f in found] or None


def _max_epochs(doc: dict[str, Any], folder: Path) -> int | None:
    """The epoch budget the run had (``--max-epochs`` or the config's), from its record or checkpoint."""
    if doc.get("max_epochs") is not None:
        return int(doc["max_epochs"])
    state = folder / "checkpoint" / "state.json"
    if state.is_file():
        ident = _read_json(state).get("identity") or {}
        if ident.get("max_epochs") is not None:
            return int(ident["max_epochs"])
    cfg = doc.get("config") or {}
    return None if cfg.get("max_epochs") is None else int(cfg["max_epochs"])


def _load_finetune(f: Path) -> FinetuneRun:
    doc = _read_json(f)
    kind = FINETUNE_FORMATS[str(doc["format"]).removesuffix("-summary")]
    missing = [k for k in ("model", "dataset", "fraction", "test") if k not in doc]
    if missing:
        raise ValueError(f"{f}: a fine-tuning record without {', '.join(missing)}")
    test = doc["test"]
    if str(doc["format"]).endswith("-summary"):
        seeds = [int(s) for s in test.get("seeds", [])]
        seed_docs = [(f.parent / r, _read_json(f.parent / r)) for r in doc.get("runs", []) if (f.parent / r).is_file()]
        metrics = {}
        for k, v in test.items():
            if isinstance(v, dict) and "mean" in v:
                n_test = None
                if seed_docs:
                    n_test = ((seed_docs[0][1].get("test") or {}).get(k) or {}).get("n")
                metrics[k] = {"value": v["mean"], "lo": None, "hi": None, "sd": v.get("sd"), "n": n_test,
                              "n_seeds": len(v.get("values") or []) or len(seeds)}
        if len(seed_docs) == 1 and len(seeds) == 1:  # one seed: its bootstrap CI
            one = seed_docs[0][1].get("test") or {}
            for k, m in metrics.items():
                m.update(lo=(one.get(k) or {}).get("ci_low"), hi=(one.get(k) or {}).get("ci_high"))
        first = seed_docs[0] if seed_docs else (f, doc)
        best = [int(d["best_epoch"]) for _, d in seed_docs if d.get("best_epoch") is not None]
        walls = [float(d["wall_s"]) for _, d in seed_docs if d.get("wall_s") is not None]
    else:
        seeds = [int(doc.get("seed", 0))]
        metrics = {k: {"value": v.get("value"), "lo": v.get("ci_low"), "hi": v.get("ci_high"), "sd": None,
                       "n": v.get("n"), "n_seeds": 1}
                   for k, v in test.items() if isinstance(v, dict) and "value" in v}
        first = (f, doc)
        best = [int(doc["best_epoch"])] if doc.get("best_epoch") is not None else []
        walls = [float(doc["wall_s"])] if doc.get("wall_s") is not None else []
    if not metrics:
        raise ValueError(f"{f}: no test metrics (expected test.<metric>.value or .mean)")
    first_doc = first[1]
    return FinetuneRun(
        path=str(f.parent), kind=kind, model=str(doc["model"]), dataset=str(doc["dataset"]),
        fraction=float(doc["fraction"]), mode=doc.get("mode") or first_doc.get("mode"), seeds=seeds,
        config=dict(doc.get("config") or first_doc.get("config") or {}),
        max_epochs=_max_epochs(first_doc, first[0].parent),
        test_ids=((first_doc.get("ids") or {}).get("test") or {}).get("sha256"), metrics=metrics,
        best_epochs=best, wall_s=sum(walls) if walls else None)


def finetune_cells(runs: Iterable[FinetuneRun]) -> list[Cell]:
    """One cell per (run, test metric): ``model[finetune=<fraction>]``, the mean over seeds with the
    CI of one seed or the SD of several."""
    out = []
    for r in runs:
        for k, m in r.metrics.items():
            out.append(Cell(r.dataset, r.cell_model, r.task, k, "all", _num(m["value"]), _num(m["lo"]), _num(m["hi"]),
                            source=r.path, sd=_num(m.get("sd")), n_seeds=m.get("n_seeds")))
    return out


def check_unique(runs: Iterable[FinetuneRun]) -> None:
    """A (task, dataset, model, fraction) may come from one folder only: a table shows one result each."""
    owner: dict[tuple, str] = {}
    for r in runs:
        key = (r.task, r.dataset, r.model, r.fraction)
        if key in owner:
            raise ValueError(f"{r.model} at {fraction_label(r.fraction)} on {r.dataset} ({r.task}) is in both "
                             f"{owner[key]} and {r.path}; give one of them")
        owner[key] = r.path


def _config_key(r: FinetuneRun) -> dict[str, Any]:
    cfg = {k: v for k, v in r.config.items() if k not in ("name", "source", "max_epochs")}
    return {**cfg, "max_epochs": r.max_epochs}


def finetune_mismatches(runs: list[FinetuneRun], refs: list[FinetuneRun] | None = None) -> list[str]:
    """Why fine-tuning results are unlike (empty when comparable). Alone: runs of one task and dataset
    differing in config or epoch budget, or in test set. With ``refs``: each run against the
    reference of its task, dataset, model and fraction (also the seeds)."""
    out: list[str] = []

    def diff(a: FinetuneRun, b: FinetuneRun, seeds: bool) -> None:
        ca, cb = _config_key(a), _config_key(b)
        keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        if keys:
            out.append(f"{a.path} and {b.path}: config differs in {', '.join(keys)}")
        if a.test_ids and b.test_ids and a.test_ids != b.test_ids:
            out.append(f"{a.path} and {b.path}: other test images (ids/test.txt)")
        if seeds and a.seeds != b.seeds:
            out.append(f"{a.path} and {b.path}: seeds {a.seeds} against {b.seeds}")

    if refs is None:
        first: dict[tuple, FinetuneRun] = {}
        for r in runs:
            f = first.setdefault((r.task, r.dataset), r)
            if f is not r:
                diff(f, r, seeds=False)
        return out
    by_key = {(r.task, r.dataset, r.model, r.fraction): r for r in refs}
    for r in runs:
        ref = by_key.get((r.task, r.dataset, r.model, r.fraction))
        if ref is not None:
            diff(r, ref, seeds=True)
    return out


def demo_stand_in(dataset: str) -> str | None:
    """The real dataset a demo dataset stands in for (its registry root ``demo://<name>``), else None."""
    try:
        from benchmark.registry import datasets

        root = str(datasets.entry(dataset).get("root") or "")
    except Exception:  # an unregistered or unloadable name has no stand-in
        return None
    return root.removeprefix("demo://") if root.startswith("demo://") else None
