"""Speed and memory of the main job and of the metric pipeline.

    python -m benchmark.perf demo [--models all] [--keep DIR]
    python -m benchmark.perf metrics [--n 10000] [--loop-n 1000] [--chunk 32]

``demo`` runs the README's main job (``afloc-bench run --models all --datasets demo``) twice in
fresh processes: from an empty cache (demo data generated, nothing cached), then warm (same cache,
new run folder). It prints each run's wall time against the targets (cold 300 s, warm 120 s on two
idle cores), the demo data's generation time and the slowest (dataset, model) pairs.

``metrics`` times the metric pipeline beside per-sample loops that follow the official code.

Prints, for N synthetic 224×224 heatmaps with AFLoc's 5 thresholds, against the targets:
1. metric throughput (IoU + Dice + CNR, 14-px margin) of the chunked path ``afloc-compat@1``
   uses, in heatmaps per second of CPU time (target >= 3,500), and its ratio to a per-sample,
   per-threshold loop written after the official ``Pipeline.test`` (normalise, threshold,
   ``compute_iou``, ``compute_cnr``, ``compute_dice``) on ``--loop-n`` maps in the same process
   (target >= 10x); wall-clock rates are shown beside;
2. the ``afloc-compat@1`` bootstrap at N: 1,000 replicates of each of the 13 per-sample metrics
   a grounding dataset is summarised with (iou@t, dice@t, iou, dice, cnr), one segment of the
   official seed-0 stream per metric, as the protocol runs it (replicate multiplicities, one
   matrix product per chunk of replicates), divided by the time of only drawing those official
   indices with NumPy's ``RandomState.randint`` (target <= 1.10); beside it the harness's
   canonical bootstrap (one draw for all metrics) and the official pandas loop
   (``df.iloc[choice(N, N)]`` then one mean per column per replicate, once per metric;
   ``--loop-boot`` replicates timed and scaled), and the classification draws
   (``sklearn.utils.resample`` emulation) counted against drawing them;
3. peak traced memory (tracemalloc) of the streaming pass at N/10 and at N, beside the
   official approach of holding every map in memory (measured on ``--loop-n`` maps and
   scaled to N);
4. start-up: wall time of ``afloc-bench ls models``, ``afloc-bench score --help`` and
   ``afloc-bench score`` on 24 small maps without replicates, each in a fresh process
   (``--startup-repeats`` runs after one warm-up, median; bytecode cached as after an install).
Maps and masks are generated chunk by chunk (seeded), outside the timed sections.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np

FRAME = 224


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------
def synthetic_chunks(n: int, chunk: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(heatmaps float32 [B,224,224], masks uint8 (boxes summed), categories) chunks."""
    from benchmark.geometry.frames import bilinear_resize
    cats = np.array(["Atelectasis", "Cardiomegaly", "Pneumonia"])
    for c, start in enumerate(range(0, n, chunk)):
        b = min(chunk, n - start)
        rng = np.random.default_rng([seed, c])
        grids = rng.standard_normal((b, 19, 19)).astype(np.float32)
        maps = bilinear_resize(grids, (FRAME, FRAME))
        masks = np.zeros((b, FRAME, FRAME), dtype=np.uint8)
        for i in range(b):
            for _ in range(int(rng.integers(1, 3))):
                x, y = rng.integers(0, 170, size=2)
                w, h = rng.integers(10, 90, size=2)
                masks[i, y:y + h, x:x + w] += 1
        yield maps, masks, cats[rng.integers(0, 3, size=b)]


# --------------------------------------------------------------------------------------
# The straightforward loop (follows the official per-sample code)
# --------------------------------------------------------------------------------------
def _loop_norm(h: np.ndarray, nan: np.ndarray) -> np.ndarray:
    out = copy.deepcopy(h)
    v = out[~nan]
    v = (v - v.min()) / (v.max() - v.min())
    out[~nan] = v * 2 - 1
    return out


def _loop_iou(g: np.ndarray, p: np.ndarray, nan: np.ndarray) -> float:
    g, p = g[~nan], p[~nan]
    inter, union = np.logical_and(g, p), np.logical_or(g, p)
    if np.sum(p) == 0 or np.sum(g) == 0:
        return np.nan
    return np.sum(inter) / np.sum(union)


def _loop_dice(g: np.ndarray, p: np.ndarray, nan: np.ndarray) -> float:
    g, p = g[~nan], p[~nan]
    inter = np.logical_and(g, p)
    if np.sum(p) == 0 or np.sum(g) == 0:
        return np.nan
    return 2 * np.sum(inter) / (np.sum(p) + np.sum(g))


def _loop_cnr(g: np.ndarray, h: np.ndarray, nan: np.ndarray) -> float:
    h = _loop_norm(h, nan)[~nan]
    g = g[~nan]
    a, b = h[g == 1], h[g == 0]
    s = a.var() + b.var()
    return 0.0 if s == 0 else (a.mean() - b.mean()) / pow(s, 0.5)


def loop_metrics(maps: np.ndarray, masks: np.ndarray, valid: np.ndarray, thresholds) -> np.ndarray:
    out = np.empty((len(maps), 3 * len(thresholds)))
    for j, t in enumerate(thresholds):
        for i in range(len(maps)):
            h = maps[i].copy()
            h[~valid] = np.nan
            nan = np.isnan(h)
            hn = _loop_norm(h, nan)
            p = np.where(hn > t, 1, 0)
            out[i, 3 * j] = _loop_iou(masks[i], p, nan)
            out[i, 3 * j + 1] = _loop_cnr(masks[i], hn, nan)
            out[i, 3 * j + 2] = _loop_dice(masks[i], p, nan)
    return out


def loop_bootstrap(frames, n_boot: int, seed: int = 0) -> Timer:
    """The official ``bootstrap_metric`` for each frame in turn."""
    np.random.seed(seed)
    t = Timer()
    with t:
        for df in frames:
            recs = []
            for _ in range(n_boot):
                ids = np.random.choice(len(df), size=len(df), replace=True)
                rep = df.iloc[ids]
                recs.append({c: rep[c].mean() for c in df.columns})
    return t


# --------------------------------------------------------------------------------------
# The vectorised path
# --------------------------------------------------------------------------------------
class Timer:
    """Wall and CPU (process) seconds: on a shared machine CPU time is the steadier measure."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def stream_metrics(n: int, chunk: int, seed: int = 0, *, timed: bool = True):
    """Score N synthetic maps chunk by chunk; returns (records dict, Timer of the metric code)."""
    from benchmark.geometry.afloc import afloc_margin_valid
    from benchmark.metrics import AFLOC_THRESHOLDS
    from benchmark.protocols.afloc_compat import afloc_scores

    valid = afloc_margin_valid((FRAME, FRAME))
    parts, cats, spent = [], [], Timer()
    for maps, masks, cat in synthetic_chunks(n, chunk, seed):
        with spent:
            maps[:, ~valid] = np.nan
            vals = afloc_scores(maps, masks, AFLOC_THRESHOLDS, with_hit=False)
        parts.append({k: vals[k] for k in vals if k.startswith(("iou@", "dice@", "cnr"))})
        cats.append(cat)
    rec = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rec["category"] = np.concatenate(cats)
    return rec, spent


def torch_rate(n: int, chunk: int, device: str, seed: int = 0) -> float:
    """Heatmaps per second of wall clock of the torch path (``score --device``) on ``device``, chunks
    generated beforehand as in :func:`threaded_rate` (the copy to the device is timed)."""
    from benchmark.geometry.afloc import afloc_margin_valid
    from benchmark.metrics import AFLOC_THRESHOLDS
    from benchmark.protocols.afloc_torch import afloc_scores_torch

    valid = afloc_margin_valid((FRAME, FRAME))
    pool = [(m, k) for m, k, _ in synthetic_chunks(min(n, 16 * chunk), chunk, seed)]
    for m, _ in pool:
        m[:, ~valid] = np.nan
    afloc_scores_torch(pool[0][0], pool[0][1], AFLOC_THRESHOLDS, device)  # warm-up
    t0, done = time.perf_counter(), 0
    for i in range(-(-n // chunk)):
        m, k = pool[i % len(pool)]
        done += len(afloc_scores_torch(m, k, AFLOC_THRESHOLDS, device)["cnr"])
    return done / (time.perf_counter() - t0)


def threaded_rate(n: int, chunk: int, threads: int, seed: int = 0) -> float:
    """Heatmaps per second of wall clock when ``threads`` threads score chunks, as ``afloc-bench
    score`` does (``benchmark.parallel.ordered_map``); 16 chunks are generated beforehand and scored
    in turn up to N maps, so generation is not timed and does not compete for the cores."""
    from benchmark.geometry.afloc import afloc_margin_valid
    from benchmark.metrics import AFLOC_THRESHOLDS
    from benchmark.parallel import ordered_map
    from benchmark.protocols.afloc_compat import afloc_scores

    valid = afloc_margin_valid((FRAME, FRAME))
    pool = [(m, k) for m, k, _ in synthetic_chunks(min(n, 16 * chunk), chunk, seed)]
    items = [pool[i % len(pool)] for i in range(-(-n // chunk))]

    def score(item):
        maps = item[0].copy()
        maps[:, ~valid] = np.nan
        return afloc_scores(maps, item[1], AFLOC_THRESHOLDS, with_hit=False)

    list(ordered_map(score, items[:threads * 2], threads))  # warm-up: each thread's scratch buffers
    t0 = time.perf_counter()
    done = sum(len(v["cnr"]) for v in ordered_map(score, items, threads))
    return done / (time.perf_counter() - t0)


def _record_metrics(rec: dict) -> dict[str, np.ndarray]:
    """The per-sample values ``afloc-compat@1`` summarises for a dataset: iou@t, dice@t (5 each),
    the threshold averages iou and dice, and cnr."""
    import warnings

    out = {k: rec[k] for k in rec if k.startswith(("iou@", "dice@"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["iou"] = np.nanmean(np.stack([rec[k] for k in rec if k.startswith("iou@")]), axis=0)
        out["dice"] = np.nanmean(np.stack([rec[k] for k in rec if k.startswith("dice@")]), axis=0)
    out["cnr"] = rec["cnr"]
    return out


def vector_bootstrap(rec: dict, n_boot: int, seed: int = 0) -> Timer:
    """The harness bootstrap: one index matrix per chunk of replicates applied to every metric
    and category at once (what ``canonical@1`` runs)."""
    from benchmark.protocols.common import category_codes, grouped_replicates

    codes, cats = category_codes(list(rec["category"]))
    values = _record_metrics(rec)
    t = Timer()
    with t:
        grouped_replicates(values, codes, len(cats), np.arange(len(codes)), n_boot, seed)
    return t


def official_draw_bootstrap(rec: dict, n_boot: int, seed: int = 0) -> Timer:
    """``afloc-compat@1``'s bootstrap: the official seed-0 stream, one ``bootci`` call (stream
    segment) per metric, replicate means of every category from the multiplicities."""
    from benchmark.bootstrap import LegacyStream, blas_single_thread, replicate_means
    from benchmark.protocols.common import category_codes, one_hot_values

    codes, cats = category_codes(list(rec["category"]))
    values = _record_metrics(rec)
    mats = [one_hot_values(v, codes, len(cats)) for v in values.values()]
    t = Timer()
    with t, blas_single_thread():
        stream = LegacyStream(seed)
        for mat in mats:
            replicate_means(mat, stream.weights(len(mat), n_boot))
    return t


def official_draws_only(n: int, n_metrics: int, n_boot: int, seed: int = 0) -> Timer:
    """Only drawing the official indices of :func:`official_draw_bootstrap`, with NumPy's own
    ``RandomState.randint`` (the draws of ``np.random.choice(N, N)``), nothing done with them."""
    from benchmark.bootstrap import LegacyStream

    t = Timer()
    with t:
        stream = LegacyStream(seed)
        for _ in range(n_metrics):
            for _ in stream.indices(n, n_boot):
                pass
    return t


def sklearn_draws(n: int, n_boot: int) -> tuple[Timer, Timer]:
    """(multiplicities the classification bootstrap uses, only drawing ``resample``'s indices)."""
    from benchmark.bootstrap import sklearn_resample_counts, sklearn_resample_indices

    counted, drawn = Timer(), Timer()
    with counted:
        for _ in sklearn_resample_counts(n, n_boot):
            pass
    with drawn:
        for _ in sklearn_resample_indices(n, n_boot):
            pass
    return counted, drawn


def _frames(rec: dict):
    import pandas as pd

    from benchmark.protocols.common import category_codes, one_hot_values

    codes, cats = category_codes(list(rec["category"]))
    return [pd.DataFrame(one_hot_values(v, codes, len(cats)), columns=cats) for v in _record_metrics(rec).values()]


def peak_memory(fn, *args, **kwargs) -> tuple[float, object]:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn(*args, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20, out


def _scratch_mib() -> float:
    """Size of the metric and bootstrap buffers this thread keeps for reuse."""
    from benchmark import bootstrap, metrics

    pool = getattr(metrics._SCRATCH, "pool", {}) or {}
    stream = getattr(bootstrap._BUFFERS, "buf", None)
    return (sum(b.nbytes for b in pool.values()) + (stream.nbytes if stream is not None else 0)) / 2**20


STARTUP_COMMANDS = (("ls models", ["ls", "models"]), ("score --help", ["score", "--help"]),
                    ("score, 24 maps, --n-boot 0", ["score", "--input", "{npz}", "--n-boot", "0"]))


def startup_times(repeats: int = 5) -> dict[str, float]:
    """Median wall time of each start-up command, each run in a fresh interpreter (after one
    warm-up run; bytecode is cached in a temporary folder, as it is after an install)."""
    import os
    import statistics
    import subprocess
    import sys
    import tempfile

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="afloc-bench-startup-") as tmp:
        npz = os.path.join(tmp, "preds.npz")
        rng = np.random.default_rng(0)
        masks = np.zeros((24, 48, 48), np.uint8)
        masks[:, 10:30, 12:28] = 1
        np.savez(npz, heatmaps=rng.standard_normal((24, 48, 48)).astype(np.float32), masks=masks,
                 categories=np.array(["A", "B", "C"])[np.arange(24) % 3])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        for label, args in STARTUP_COMMANDS:
            cmd = [sys.executable, "-m", "benchmark.cli.main"] + [a.format(npz=npz) for a in args]
            times = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                if i:  # the first run writes the bytecode
                    times.append(time.perf_counter() - t0)
            out[label] = statistics.median(times)
    return out


METRIC_TARGETS = {"rate_cpu": 3500.0, "ratio_loop": 10.0, "boot_over_draws": 1.10, "startup_s": 1.0}


def run_metrics(n: int, loop_n: int, chunk: int, n_boot: int, loop_boot: int, seed: int, threads: int,
                startup_repeats: int = 5, device: str | None = None) -> dict:
    """All four sections, with BLAS and torch on one thread: generating the synthetic maps
    (bilinear resizing with torch) between the timed chunks would otherwise leave idle worker
    threads spinning on the second core while the metric code, which uses neither, is timed
    (their spinning counts as this process's CPU time and takes the core from it)."""
    from benchmark.bootstrap import blas_single_thread

    torch_threads = _torch_threads(1)
    try:
        with blas_single_thread():
            return _run_metrics(n, loop_n, chunk, n_boot, loop_boot, seed, startup_repeats, threads, device)
    finally:
        _torch_threads(torch_threads)


def _torch_threads(n: int | None) -> int | None:
    """Set torch's intra-op threads to ``n`` when torch is installed; returns the previous number."""
    if n is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def _run_metrics(n: int, loop_n: int, chunk: int, n_boot: int, loop_boot: int, seed: int,
                 startup_repeats: int, threads: int = 1, device: str | None = None) -> dict:
    from benchmark.geometry.afloc import afloc_margin_valid
    from benchmark.metrics import AFLOC_THRESHOLDS

    tg = METRIC_TARGETS
    loop_n = min(loop_n, n)
    print(f"afloc-bench metric pipeline benchmark: N={n} heatmaps {FRAME}x{FRAME}, 5 thresholds, chunk={chunk}")
    # 1. throughput
    stream_metrics(min(n, 4 * chunk), chunk, seed)  # warm-up: imports, scratch buffers
    rec, t_vec = stream_metrics(n, chunk, seed)
    maps, masks, _ = next(synthetic_chunks(loop_n, loop_n, seed + 1))
    valid = afloc_margin_valid((FRAME, FRAME))
    t_loop = Timer()
    with t_loop:
        loop_metrics(maps, masks, valid, AFLOC_THRESHOLDS)
    rate_cpu, rate_wall = n / t_vec.cpu, n / t_vec.wall
    ratio_cpu = rate_cpu / (loop_n / t_loop.cpu)
    print("\n[1] IoU+Dice+CNR throughput (heatmaps/s; CPU time of this process | wall clock)")
    print(f"    chunked path          : {rate_cpu:8.0f} | {rate_wall:8.0f}   ({n} maps; target >= "
          f"{tg['rate_cpu']:.0f}/s of CPU time: {'met' if rate_cpu >= tg['rate_cpu'] else 'NOT met'})")
    print(f"    per-sample loop       : {loop_n / t_loop.cpu:8.0f} | {loop_n / t_loop.wall:8.0f}   ({loop_n} maps)")
    print(f"    ratio                 : {ratio_cpu:7.1f}x | {rate_wall / (loop_n / t_loop.wall):7.1f}x  (target >= "
          f"{tg['ratio_loop']:.0f}x: {'met' if ratio_cpu >= tg['ratio_loop'] else 'NOT met'})")
    if threads > 1:
        one, many = threaded_rate(n, chunk, 1, seed), threaded_rate(n, chunk, threads, seed)
        print(f"    as `score` runs it, wall clock: 1 thread {one:8.0f} | {threads} threads {many:8.0f}   "
              f"({many / one:.2f}x; target >= {tg['rate_cpu']:.0f}/s on the machine's cores: "
              f"{'met' if many >= tg['rate_cpu'] else 'NOT met'})")
    if device:
        print(f"    torch path (score --device {device}), wall clock: {torch_rate(n, 256, device, seed):8.0f} "
              f"(chunks of 256)")
    # 2. bootstrap (after one small warm-up call: imports and thread-pool setup are not timed)
    n_metrics = len(_record_metrics(rec))
    vector_bootstrap(rec, 10, seed)
    official_draw_bootstrap(rec, 1, seed)
    t_boff = official_draw_bootstrap(rec, n_boot, seed)
    t_draw = official_draws_only(n, n_metrics, n_boot, seed)
    t_bvec = vector_bootstrap(rec, n_boot, seed)
    frames = _frames(rec)
    t_bl = loop_bootstrap(frames, loop_boot, seed)
    t_skc, t_skd = sklearn_draws(n, n_boot)
    scale = n_boot / loop_boot
    over = t_boff.cpu / t_draw.cpu
    note = "" if loop_boot == n_boot else f" (timed {loop_boot} replicates, scaled)"
    print(f"\n[2] {n_boot} bootstrap replicates of the {n_metrics} per-sample metrics (iou@t, dice@t, iou, dice, "
          f"cnr) x 3 categories, N={n} (seconds; CPU | wall)")
    print(f"    afloc-compat@1 (official stream, a segment per metric): {t_boff.cpu:8.3f} | {t_boff.wall:8.3f}")
    print(f"    only drawing those indices (RandomState.randint)     : {t_draw.cpu:8.3f} | {t_draw.wall:8.3f}")
    print(f"    bootstrap / draws                                    : {over:8.3f} | "
          f"{t_boff.wall / t_draw.wall:8.3f}  (target <= {tg['boot_over_draws']:.2f}: "
          f"{'met' if over <= tg['boot_over_draws'] else 'NOT met'})")
    print(f"    canonical@1 (one draw for all metrics)               : {t_bvec.cpu:8.3f} | {t_bvec.wall:8.3f}")
    print(f"    pandas loop, official bootstrap_metric x {len(frames):<3}         : {t_bl.cpu * scale:8.3f} | "
          f"{t_bl.wall * scale:8.3f}{note}")
    print(f"    afloc-compat@1 vs the pandas loop                    : {t_bl.cpu * scale / t_boff.cpu:7.1f}x | "
          f"{t_bl.wall * scale / t_boff.wall:7.1f}x")
    print(f"    classification draws (resample emulation), counted   : {t_skc.cpu:8.3f} | {t_skc.wall:8.3f}  "
          f"(only drawing them: {t_skd.cpu:.3f} | {t_skd.wall:.3f})")
    # 3. memory
    small = max(chunk, n // 10)
    mem_small, _ = peak_memory(stream_metrics, small, chunk, seed)
    mem_full, (rec_full, _) = peak_memory(stream_metrics, n, chunk, seed)
    rec_bytes = sum(v.nbytes for v in rec_full.values()) / 2**20

    def hold_all(m: int):
        chunks = list(synthetic_chunks(m, m, seed))
        return sum(c[0].nbytes + c[1].nbytes for c in chunks)

    mem_loop, _ = peak_memory(hold_all, loop_n)
    print("\n[3] peak traced memory")
    print(f"    chunked path, N={small:<6}  : {mem_small:8.1f} MiB")
    print(f"    chunked path, N={n:<6}  : {mem_full:8.1f} MiB  (of which per-sample records {rec_bytes:.1f} MiB)")
    print(f"    all maps in memory (official hmaps), N={loop_n}: {mem_loop:8.1f} MiB -> "
          f"{mem_loop * n / loop_n:.0f} MiB at N={n}")
    scratch = _scratch_mib()
    print(f"    + buffers reused from chunk to chunk (allocated once, not in the peaks): {scratch:.1f} MiB")
    figures = {"n": n, "rate_vec_wall": rate_wall, "rate_vec_cpu": rate_cpu,
               "rate_loop_wall": loop_n / t_loop.wall, "rate_loop_cpu": loop_n / t_loop.cpu,
               "ratio_loop_cpu": ratio_cpu,
               "boot_official_cpu_s": t_boff.cpu, "boot_official_wall_s": t_boff.wall, "draws_only_cpu_s": t_draw.cpu,
               "draws_only_wall_s": t_draw.wall, "boot_over_draws_cpu": over,
               "boot_over_draws_wall": t_boff.wall / t_draw.wall, "boot_vec_cpu_s": t_bvec.cpu,
               "boot_loop_cpu_s": t_bl.cpu * scale, "sklearn_counts_cpu_s": t_skc.cpu, "sklearn_draws_cpu_s": t_skd.cpu,
               "mem_small_mib": mem_small, "mem_full_mib": mem_full, "records_mib": rec_bytes,
               "scratch_mib": scratch}
    # 4. start-up
    if startup_repeats > 0:
        times = startup_times(startup_repeats)
        print(f"\n[4] start-up, fresh process each, median of {startup_repeats} (s, wall; target well under "
              f"{tg['startup_s']:.0f} s)")
        for label, sec in times.items():
            print(f"    afloc-bench {label:28s}: {sec:6.2f}")
        figures["startup_s"] = times
    return figures


DEMO_TARGETS_S = {"cold": 300.0, "warm": 120.0}


def run_demo(models: str, keep: str | None) -> dict:
    """The main job cold then warm, each in its own process; figures printed and returned."""
    import json
    import os
    import re
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="afloc-bench-perf-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AFLOC_BENCH_CACHE": str(work / "cache")}
    figures: dict = {"work": str(work)}
    for phase in ("cold", "warm"):
        out = work / f"run-{phase}"
        cmd = [sys.executable, "-m", "benchmark.cli.main", "run", "--models", models, "--datasets", "demo",
               "-o", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-4000:])
            raise SystemExit(f"the {phase} run failed (exit {proc.returncode}); its folder: {out}")
        pairs = []
        for f in sorted((out / "pairs").glob("*.json")):
            rec = json.loads(f.read_text())
            pairs.append((float(rec.get("seconds") or 0.0), rec["dataset"], rec["model"]))
        execution = json.loads((out / "results.json").read_text()).get("execution") or {}
        figures[phase] = {"wall_s": wall, "pairs_s": sum(p[0] for p in pairs), "n_pairs": len(pairs),
                          "execution": execution}
        target = DEMO_TARGETS_S[phase]
        print(f"[{phase}] main job: {wall:6.1f} s wall  (target {target:.0f} s: {wall / target:.2f}x of it); "
              f"{len(pairs)} pairs, {sum(p[0] for p in pairs):.1f} s in pairs, side by side in "
              f"{execution.get('jobs', 1)} job(s) of {execution.get('threads', '?')} torch thread(s)")
        made = re.search(r"demo datasets generated in ([0-9.]+) s", proc.stdout)
        if made:
            figures["demo_data_s"] = float(made.group(1))
            print(f"        demo data generated in {float(made.group(1)):.1f} s")
        for sec, ds, model in sorted(pairs, key=lambda p: -p[0])[:8]:
            print(f"        {sec:6.1f} s  {model['name'] if isinstance(model, dict) else model} × {ds}")
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("demo", help="the main job's wall time, cold and warm")
    d.add_argument("--models", default="all", help="models to run (default: all, as the README)")
    d.add_argument("--keep", default=None, help="keep the cache and run folders here (default: removed)")
    m = sub.add_parser("metrics", help="metric throughput, bootstrap time, peak memory and start-up time")
    m.add_argument("--n", type=int, default=10_000, help="number of heatmaps (default 10000)")
    m.add_argument("--loop-n", type=int, default=1000, help="heatmaps for the per-sample loop (default 1000)")
    m.add_argument("--chunk", type=int, default=32, help="heatmaps per chunk (default 32: fits in cache)")
    m.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    m.add_argument("--loop-boot", type=int, default=100,
                   help="replicates timed for the pandas loop, scaled to --n-boot (it is linear; default 100)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=None,
                   help="threads for the multi-core figure, as `score` uses (default: the usable cores)")
    m.add_argument("--device", default=None,
                   help="also time the torch path on this device (default: cuda when there is one)")
    m.add_argument("--startup-repeats", type=int, default=5,
                   help="fresh-process runs per start-up command (default 5; 0 skips the start-up timing)")
    a = p.parse_args(argv)
    if a.what == "demo":
        run_demo(a.models, a.keep)
        return 0
    from benchmark.parallel import usable_cores

    device = a.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    run_metrics(a.n, a.loop_n, a.chunk, a.n_boot, min(a.loop_boot, a.n_boot), a.seed, a.threads or usable_cores(),
                a.startup_repeats, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
