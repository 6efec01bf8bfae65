"""Golden demo results: the committed references that CI regresses against.

Two references live in ``results/demo/``:

- ``golden-small/``: the sanity models on a small demo collection (generated, loaded by the
  real loaders, scored by ``afloc-compat@1``). Cheap enough for every CI run: any change to the
  generator, a loader, geometry, a metric, the bootstrap or the runner that moves a number
  fails CI until the golden file is regenerated on purpose.
- ``golden-full/``: the main job (``afloc-bench run --models all --datasets demo``) on the shipped
  demo weights, including its per-sample records. The tests re-summarise the stored records (the
  aggregation and bootstrap on real model outputs); CI runs the main job from an empty cache and
  regresses it against this reference at the per-model tolerances of its ``tolerance.json``
  (measured across CPU instruction sets; kept when the reference is regenerated).

Regenerate on purpose with ``python -m benchmark.golden small`` or ``... full RUN_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from benchmark.records import record_stem

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "results" / "demo"
SMALL = {"seed": 0, "n_train": 8, "n_test": 16}
SMALL_ARGS = ["--models", "sanity", "--datasets", "demo", "--protocol", "afloc-compat@1", "--n-boot", "200",
              "--seed", "0", "--no-cache", "--num-workers", "0", "--batch-size", "8"]


def small_run(workdir: str | Path) -> Path:
    """Generate the small demo collection under ``workdir`` and run the sanity models on it."""
    from benchmark.cli.main import main
    from benchmark.demo import generate

    workdir = Path(workdir)
    demo = workdir / "demo"
    if not (demo / "manifest.json").is_file():
        generate(demo, progress=False, **SMALL)
    old = os.environ.get("AFLOC_BENCH_DEMO")
    os.environ["AFLOC_BENCH_DEMO"] = str(demo)
    try:
        out = workdir / "run"
        rc = main(["-q", "run", *SMALL_ARGS, "-o", str(out)])
    finally:
        if old is None:
            os.environ.pop("AFLOC_BENCH_DEMO", None)
        else:
            os.environ["AFLOC_BENCH_DEMO"] = old
    if rc != 0:
        raise RuntimeError(f"small demo run failed with exit code {rc}")
    return out


def resummarize(run_dir: str | Path) -> dict:
    """Recompute every (dataset, model) summary of a run from its stored per-sample records."""
    import pandas as pd

    from benchmark.protocols.base import resolve_protocol

    run_dir = Path(run_dir)
    state = json.loads((run_dir / "results.json").read_text())
    protocol = resolve_protocol(state["protocol"]["id"])
    cfg = state["config"]
    out: dict = {}
    for ds, per_model in state["results"].items():
        unit = state["datasets"][ds].get("resampling_unit", "image")
        for model in per_model:
            stem = record_stem(ds, model)
            pair = json.loads((run_dir / "pairs" / f"{stem}.json").read_text())
            records = pd.read_parquet(run_dir / "samples" / f"{stem}.parquet")
            rows = []
            for task in pair["tasks"]:
                sub = records[records["task"] == task].reset_index(drop=True)
                if sub.empty:
                    continue
                params = pair.get("protocol_params", {}).get(task, {"prompt_set": cfg.get("prompt_set")})
                for r in protocol.summarize(sub, task, n_boot=cfg["n_boot"], seed=cfg["seed"], unit=unit,
                                            params=params):
                    rows.append({"task": task, **r})
            out.setdefault(ds, {})[model] = rows
    return out


def _portable(obj, prefixes: list[tuple[str, str]]):
    """``obj`` with every string that starts with a machine path rewritten to its placeholder."""
    if isinstance(obj, dict):
        return {k: _portable(v, prefixes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, prefixes) for v in obj]
    if isinstance(obj, str):
        for path, name in prefixes:
            if obj == path or obj.startswith(path + os.sep):
                return name + obj[len(path):]
    return obj


def _store(run_dir: Path, dest: Path, with_records: bool, workdir: Path | None = None) -> None:
    """Copy a run into ``dest`` with the machine's paths (the run folder, the cache, the package's
    weights, the small run's work folder) written as ``<run>``, ``<cache>``, ``<package weights>``
    and ``<workdir>``, so the committed references name no one's disk."""
    from benchmark.dataset import cache_home
    from benchmark.resources import weights_dir

    places = [(Path(run_dir), "<run>"), (cache_home(), "<cache>"), (weights_dir(), "<package weights>")]
    places += [(Path(workdir), "<workdir>")] if workdir else []
    prefixes = sorted({(str(p), name) for path, name in places for p in (path, path.resolve())},
                      key=lambda p: -len(p[0]))

    def copy_json(src: Path, dst: Path) -> None:
        dst.write_text(json.dumps(_portable(json.loads(src.read_text()), prefixes), indent=2) + "\n")

    from benchmark.regress import TOLERANCE_FILE

    kept = (dest / TOLERANCE_FILE).read_bytes() if (dest / TOLERANCE_FILE).is_file() else None
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if kept is not None:  # measured for the reference, not made by the run
        (dest / TOLERANCE_FILE).write_bytes(kept)
    copy_json(run_dir / "results.json", dest / "results.json")
    if with_records:
        shutil.copytree(run_dir / "samples", dest / "samples")
        (dest / "pairs").mkdir()
        for f in sorted((run_dir / "pairs").glob("*.json")):
            copy_json(f, dest / "pairs" / f.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.golden", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("small", help="regenerate results/demo/golden-small")
    s.add_argument("--workdir", default=None)
    f = sub.add_parser("full", help="store a finished main-job run as results/demo/golden-full")
    f.add_argument("run_dir")
    args = p.parse_args(argv)
    if args.what == "small":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(args.workdir or tmp)
            run = small_run(workdir)
            _store(run, GOLDEN_DIR / "golden-small", with_records=False, workdir=workdir)
    else:
        _store(Path(args.run_dir), GOLDEN_DIR / "golden-full", with_records=True)
    print(f"golden results written under {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
