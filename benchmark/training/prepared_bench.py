"""Data-loading throughput of training batches from a prepared folder vs from the image files.

``python -m benchmark.training.prepared_bench [--n 200] [--n-full 48] [--full-size 3000x2500]`` builds, in a
temporary folder, (1) a ``demo_mimic`` collection of ``--n`` pairs (small phantom JPEGs) and (2) ``--n-full``
synthetic full-size JPEGs (MIMIC-CXR-JPG's images are about 2500x3000, quality 95), prepares each with
``benchmark.training.prepared.write_prepared`` and times, in this process, the image part of
``PretrainingData`` batches (frames -> model input tensors, stacked) read both ways. Both sources are
read once before timing, so both are timed from the page cache: the difference is the decode and
resize that the prepared table saves, not disk speed. One thread by default, as one DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_xrays(folder: Path, n: int, height: int, width: int, seed: int = 0) -> list[tuple[str, str]]:
    """Full-size chest-X-ray-like JPEGs (smooth anatomy-scale shading plus film noise, quality 95; about
    1.5 MB at 3000x2500, as MIMIC-CXR-JPG's files) and a report each: what matters is the decode cost."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pairs = []
    for i in range(n):
        cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.45, 0.55)
        body = 180 * np.exp(-(((xx - cx) / (0.35 * width)) ** 2 + ((yy - cy) / (0.45 * height)) ** 2))
        lungs = sum(70 * np.exp(-(((xx - cx + s * 0.18 * width) / (0.12 * width)) ** 2
                                  + ((yy - cy) / (0.25 * height)) ** 2)) for s in (-1, 1))
        img = body - lungs + rng.normal(0, 2, (height, width)).astype(np.float32)
        path = folder / f"cxr{i:04d}.jpg"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        pairs.append((str(path), "There is a small left pleural effusion. The heart size is normal."))
    return pairs


def batch_rate(data: Any, batch: int, repeats: int) -> tuple[float, list[float]]:
    """Median samples/s of stacking every item's model input, batch by batch, over ``repeats`` passes
    (after one untimed pass)."""
    import torch

    batches = [list(range(s, min(s + batch, len(data)))) for s in range(0, len(data), batch)]

    def one_pass() -> float:
        t0 = time.perf_counter()
        for b in batches:
            torch.stack([data.image(i) for i in b])
        return len(data) / (time.perf_counter() - t0)

    one_pass()
    rates = [one_pass() for _ in range(repeats)]
    return statistics.median(rates), rates


def measure(name: str, pairs: list, work: Path, *, batch: int, repeats: int, num_proc: int) -> dict[str, Any]:
    from afloc.inference import to_model_input
    from benchmark.io.images import image_size
    from benchmark.training.data import PretrainingData
    from benchmark.training.prepared import load_prepared, write_prepared

    t0 = time.perf_counter()
    write_prepared(pairs, work / name, num_proc=num_proc, meta={"dataset": name, "split": "train"}, progress=False)
    prep_s = time.perf_counter() - t0
    prepared = load_prepared(work / name, 224)
    files = PretrainingData(pairs, None, frame_input=to_model_input)
    table = PretrainingData(prepared.pairs(), None, frame_input=to_model_input, frames=prepared.frames)
    if len(files) != len(table):
        raise RuntimeError(f"{name}: {len(files)} items from the files, {len(table)} from the table")
    import torch

    if not all(torch.equal(files.image(i), table.image(i)) for i in (0, len(files) - 1)):
        raise RuntimeError(f"{name}: prepared frames differ from the decoded ones")
    decode, decode_all = batch_rate(files, batch, repeats)
    mapped, mapped_all = batch_rate(table, batch, repeats)
    h, w = image_size(pairs[0][0] if isinstance(pairs[0], tuple) else pairs[0].image_path)
    sizes = [os.path.getsize(p[0] if isinstance(p, tuple) else p.image_path) for p in pairs]
    return {"set": name, "n": len(files), "image": f"{h}x{w}", "mean_file_kB": round(np.mean(sizes) / 1024, 1),
            "files_samples_per_s": round(decode, 1), "prepared_samples_per_s": round(mapped, 1),
            "ratio": round(mapped / decode, 1), "files_runs": [round(r, 1) for r in decode_all],
            "prepared_runs": [round(r, 1) for r in mapped_all], "prepare_images_per_s": round(len(pairs) / prep_s, 1),
            "prepared_MB": round(sum(f.stat().st_size for f in (work / name).glob("*.arrow")) / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.training.prepared_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="demo_mimic pairs (default 200)")
    p.add_argument("--n-full", type=int, default=48, help="full-size synthetic JPEGs (default 48; 0: none)")
    p.add_argument("--full-size", default="3000x2500", help="HEIGHTxWIDTH of those (default 3000x2500)")
    p.add_argument("--batch", type=int, default=32, help="items per batch (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1: one worker)")
    p.add_argument("--num-proc", type=int, default=1, help="processes for preparing (default 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    height, width = (int(v) for v in args.full_size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepared-bench-") as tmp:
        work = Path(tmp)
        from benchmark.demo import generate

        os.environ["AFLOC_BENCH_DEMO"] = str(work / "demo")
        generate(work / "demo", seed=0, n_train=args.n, n_test=4, datasets=["mimic_cxr"], progress=False, workers=1)
        from benchmark.training.data import pairs_from_dataset

        demo_pairs, _ = pairs_from_dataset("demo_mimic", "train")
        rows.append(measure("demo_mimic", demo_pairs, work, batch=args.batch, repeats=args.repeats,
                            num_proc=args.num_proc))
        if args.n_full:
            full = synthetic_xrays(work / "full", args.n_full, height, width)
            rows.append(measure(f"synthetic {height}x{width} JPEG", full, work, batch=args.batch,
                                repeats=args.repeats, num_proc=args.num_proc))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
               "python": platform.python_version(), "torch": torch.__version__}
    print(f"image part of PretrainingData batches of {args.batch} (224x224 letterbox -> model input, stacked); "
          f"{machine['cores']} cores, {args.threads} thread(s); median of {args.repeats} passes")
    head = ("set", "n", "image HxW (mean file)", "files samples/s", "prepared samples/s", "ratio", "prepare img/s")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['image']} ({r['mean_file_kB']} kB) | {r['files_samples_per_s']} | "
              f"{r['prepared_samples_per_s']} | {r['ratio']}x | {r['prepare_images_per_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
