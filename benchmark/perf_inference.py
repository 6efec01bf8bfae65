"""Inference speed of ``afloc-bench run`` against a bare forward loop of the same network.

    python -m benchmark.perf_inference [--models afloc,gloria,biovil,medklip,convirt,gradcam:densenet121]
        [--dataset demo_ms_cxr] [--n 64] [--batch-size 16] [--device auto] [--precision fp32]
        [--channels-last] [--compare-precision bf16] [--repeats 3]

Per model, in one process and on the same device, batch size and precision:

* ``run``: a whole ``Runner.run()`` of the model on the first ``--n`` samples of a grounding
  dataset with the cache off and no bootstrap: file decoding in DataLoader workers, the model's
  preprocessing, image and text encoding, similarity maps, metrics and the run records. The
  model is loaded (and warmed up on one batch) beforehand, as a long run amortises its load.
* ``bare``: the network alone on the same inputs, already preprocessed and on the device:
  ``encode_images`` then ``similarity_map`` for each batch, the prompts encoded once.

It prints heatmaps/s of both and their ratio (target: ``run`` within 1.5x of ``bare``). With
``--compare-precision P`` it also prints how far precision P moves the same batch's maps
(largest difference of min-max normalised maps, their correlation) and zero-shot scores against
fp32, on the same weights. Runs on CPU (small ``--n``) and, where there is one, on a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODELS = "afloc,gloria,biovil,medklip,convirt,gradcam:densenet121"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _runner(model: str, dataset: str, n: int, args: argparse.Namespace, out: Path, precision: str | None = None):
    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner

    cfg = RunConfig(models=[model], datasets=[dataset], n_boot=0, limit=n, cache=False, quiet=True,
                    output=str(out), device=args.device, precision=precision or args.precision,
                    channels_last=args.channels_last, batch_size=args.batch_size, num_workers=args.num_workers,
                    save_heatmaps=0)
    cfg.normalise()
    return Runner(cfg)


def _maps_written(out: Path, model: str, dataset: str) -> int:
    """Per-sample records the run wrote (one per map scored)."""
    import pandas as pd

    from benchmark.records import record_stem

    return len(pd.read_parquet(out / "samples" / f"{record_stem(dataset, model)}.parquet"))


def _inputs(runner, adapter, dataset: str, n: int, batch_size: int):
    """The first ``n`` samples' model inputs (decoded, preprocessed, collated, on the device) and queries."""
    from benchmark.io.images import read_image

    ds = runner.dataset(dataset)
    samples = ds.samples()[:n]
    adapter.for_task("grounding")
    batches = []
    for start in range(0, len(samples), batch_size):
        part = samples[start:start + batch_size]
        batch = adapter.collate([adapter.preprocess(read_image(s.image_path, adapter.decode)) for s in part])
        batches.append((runner.numerics.batch_to_device(batch, runner.device),
                        [ds.query(s, runner.cfg.prompt_set) for s in part]))
    return batches


def bare_loop(runner, adapter, batches) -> tuple[float, int]:
    """Seconds and maps of the network alone over ``batches`` (prompts encoded once)."""
    queries = list({(q.text, q.finding): q for _, qs in batches for q in qs}.values())
    where = {(q.text, q.finding): i for i, q in enumerate(queries)}
    num = runner.numerics
    with num.autocast():
        txt_all = num.to_float32(adapter.encode_texts(queries))
    _sync(runner.device)
    t0, maps = time.perf_counter(), 0
    for batch, qs in batches:
        with num.autocast():
            emb = num.to_float32(adapter.encode_images(batch))
        txt = adapter.take(txt_all, [where[(q.text, q.finding)] for q in qs])
        out = adapter.similarity_map(emb, txt)
        maps += len(out)
    _sync(runner.device)
    return time.perf_counter() - t0, maps


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Best of ``--repeats`` alternating timings of ``run`` and ``bare`` (a shared machine's noise
    lands on both)."""
    with tempfile.TemporaryDirectory() as tmp:
        warm = _runner(model, args.dataset, args.batch_size, args, Path(tmp) / "warm")
        adapter = warm._adapter(model)
        warm.run()  # loads the model, generates a demo set if needed, warms up kernels
        t_run = t_bare = float("inf")
        batches = None
        for r in range(args.repeats):
            timed = _runner(model, args.dataset, args.n, args, Path(tmp) / f"timed-{r}")
            timed._adapters[model] = adapter
            _sync(timed.device)
            t0 = time.perf_counter()
            timed.run()
            _sync(timed.device)
            t_run = min(t_run, time.perf_counter() - t0)
            n_run = _maps_written(Path(tmp) / f"timed-{r}", model, args.dataset)
            if batches is None:
                batches = _inputs(timed, adapter, args.dataset, args.n, args.batch_size)
                bare_loop(timed, adapter, batches[:1])  # warm-up
            t, n_bare = bare_loop(timed, adapter, batches)
            t_bare = min(t_bare, t)
        row = {"model": model, "device": timed.device, "precision": args.precision, "batch": args.batch_size,
               "maps": n_run, "run_maps_per_s": n_run / t_run, "bare_maps_per_s": n_bare / t_bare,
               "run_over_bare": (t_run / n_run) / (t_bare / n_bare)}
        if args.compare_precision:
            row.update(precision_shift(model, args, Path(tmp) / "cmp", batches, adapter))
        return row


def precision_shift(model: str, args: argparse.Namespace, out: Path, batches, adapter) -> dict[str, Any]:
    """Maps and scores of one batch at fp32 and at ``--compare-precision``, same weights."""
    from benchmark.metrics import minmax_normalize

    got = {}
    for prec in ("fp32", args.compare_precision):
        runner = _runner(model, args.dataset, args.batch_size, args, out / prec, precision=prec)
        batch, qs = batches[0]
        num = runner.numerics
        with num.autocast():
            emb = num.to_float32(adapter.encode_images(batch))
            txt = num.to_float32(adapter.encode_texts(qs))
        maps = np.asarray(adapter.similarity_map(emb, txt), dtype=np.float32)
        scores = None
        if "zeroshot_cls" in adapter.capabilities:
            try:
                scores = np.asarray(adapter.score(emb, txt, adapter.take(txt, list(range(len(qs)))[::-1])),
                                    dtype=np.float64)
            except (NotImplementedError, RuntimeError, ValueError):
                scores = None
        got[prec] = (minmax_normalize(maps.astype(np.float64), low=0.0), scores)
    (a, sa), (b, sb) = got["fp32"], got[args.compare_precision]
    corr = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b)]
    shift = {f"{args.compare_precision}_map_max_abs": float(np.nanmax(np.abs(a - b))),
             f"{args.compare_precision}_map_min_corr": float(np.nanmin(corr))}
    if sa is not None and sb is not None:
        shift[f"{args.compare_precision}_score_max_abs"] = float(np.max(np.abs(sa - sb)))
    return shift


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf_inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated models (default {DEFAULT_MODELS})")
    p.add_argument("--dataset", default="demo_ms_cxr", help="a grounding dataset (default demo_ms_cxr)")
    p.add_argument("--n", type=int, default=64, help="samples timed per model (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="alternating timings; the best of each is kept")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compare-precision", default=None, choices=("bf16", "fp16"),
                   help="also measure how far this precision moves maps and scores against fp32")
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        row = measure(model, args)
        rows.append(row)
        extra = "".join(f"  {k} {v:.4g}" for k, v in row.items() if k.startswith(("bf16", "fp16")))
        print(f"{model:10s} {row['device']:6s} {row['precision']} batch {row['batch']}: run "
              f"{row['run_maps_per_s']:8.1f} maps/s, bare {row['bare_maps_per_s']:8.1f} maps/s, "
              f"run/bare time per map {row['run_over_bare']:.2f}x (target <= 1.5){extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
