"""`afloc-bench score`: score bring-your-own heatmaps (preds.npz) under a protocol."""

from __future__ import annotations

import argparse
import json
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.cli import n_boot_arg

if TYPE_CHECKING:  # numpy is imported where it is used: `score --help` needs none of it
    import numpy as np

HELP = "score bring-your-own heatmaps (preds.npz) under a protocol"

DESCRIPTION = """\
Score heatmaps you computed yourself with the same metric pipeline as `afloc-bench run`.

Input: an .npz file (numpy.savez / savez_compressed, no pickled objects) with
  heatmaps    float [N, H, W]   any range; NaN marks pixels not to evaluate
  masks       int   [N, H, W]   ground truth in the SAME frame as the heatmaps;
                                nonzero = lesion (2 where two boxes overlap is allowed:
                                afloc-compat counts it twice in Dice, as the official code)
  categories  str   [N]         category of each sample (numpy unicode array)
  labels      int   [N]         optional: 0/1 finding present, for classification metrics
  scores      float [N]         optional: zero-shot probabilities, for classification metrics
  image_ids   str   [N]         optional: image of each sample (resampling unit; default:
                                every sample is its own image)
With --native-grid, heatmaps may be native similarity grids [N, h, w] of any size.

Steps applied (maps are taken to be in the evaluation frame already):
  afloc-compat@1  [--native-grid: Gaussian sigma 1.5 on the grid, bilinear to H x W]
                  -> 14-px NaN margin (default; --no-margin or --pathology turn it off;
                  the margin is AFLoc's set_margin: side int(448*min(H,W)/512), centred)
                  -> min-max to [-1,1] over valid pixels -> map > t for
                  t in np.arange(0.1,0.6,0.1) (--pathology: np.arange(-1,0,0.1))
                  -> IoU, Dice (NaN if prediction or mask empty), signed CNR,
                  pointing game -> official aggregation and seed-0 pooled bootstrap.
  canonical@1     [--native-grid] -> [--margin] -> min-max [-1,1] -> t = 0.1..0.5
                  -> IoU/Dice (empty prediction = 0), CNR, pointing game (ties)
                  -> macro over categories, percentile CI over resampled images.
  chexlocalize@1  [--native-grid: bilinear only] -> min-max [0,1] -> Otsu -> IoU on true
                  positives, hit rate -> CheXlocalize bootstrap over images.
No protocol smooths or upsamples maps unless --native-grid is given.

Output: a table on stdout and, with --json, for each metric (iou, dice, cnr, hit and the
per-threshold iou@t, dice@t where the protocol has them) and each category plus "all":
point estimate, bootstrap mean, CI low and high, and n. n counts the maps that have a value for
that metric and category: a value that is undefined for a map (afloc-compat's IoU and Dice when
the thresholded map or the mask is empty, CNR when a region is empty) is left out of the mean and
of n, so n can differ between metrics and thresholds.

Maps of a dataset the harness loads, keyed by sample id, score as a run instead:
  afloc-bench score --dataset ms_cxr --data-root /data/ms_cxr --input maps.npz -o runs/mine
maps.npz then holds sample_id [N], grid [N, h, w] and input_geometry (the format a run keeps its
heatmaps in; baselines/byo/README.md); the run folder it writes is what `afloc-bench run --models
byo --ckpt byo=maps.npz` writes, so compare, build, report and regress accept it.
"""

GROUNDING_KEYS = ("heatmaps", "masks", "categories")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", required=True, help="preds.npz (format above), or with --dataset the maps")
    parser.add_argument("--dataset", default=None,
                        help="score maps keyed by sample id on this registered dataset, as a run (see above)")
    parser.add_argument("--data-root", default=None, help="with --dataset: its root (or a template with {dataset})")
    parser.add_argument("-o", "--output", default=None, help="with --dataset: the run folder to write")
    parser.add_argument("--protocol", "-p", default="afloc-compat@1", help="protocol id (default: afloc-compat@1)")
    parser.add_argument("--n-boot", type=n_boot_arg, default=1000,
                        help="bootstrap replicates (default 1000; 0 = points only, no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0, the official one)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--unit", choices=("image", "patient"), default="image",
                        help="resampling unit for canonical@1 (patient needs patient_ids in the npz)")
    margin = parser.add_mutually_exclusive_group()
    margin.add_argument("--margin", dest="margin", action="store_true", default=None,
                        help="apply AFLoc's 14-px NaN margin (afloc-compat default for chest X-ray)")
    margin.add_argument("--no-margin", dest="margin", action="store_false", help="do not apply the margin")
    parser.add_argument("--pathology", action="store_true",
                        help="pathology rules (afloc-compat: no margin, thresholds np.arange(-1,0,0.1))")
    parser.add_argument("--native-grid", action="store_true",
                        help="heatmaps are native grids: smooth (sigma 1.5) and upsample them to the mask size")
    parser.add_argument("--official-dataset", default="GENERIC",
                        choices=("GENERIC", "MS_CXR", "MS_CXR_CLS", "RSNA_GROUNDING", "COVID_RURAL",
                                 "SICAPV2_GROUNDING"),
                        help="afloc-compat: official dataset switch; MS_CXR adds the per-threshold IoU bootstraps "
                             "before iou/cnr/dice in the seed-0 stream, as the official run does")
    parser.add_argument("--official-rounding", action="store_true",
                        help="afloc-compat: round like the official CSV files (3 decimals; 4 for classification)")
    parser.add_argument("--chunk", type=int, default=32, help="heatmaps processed per chunk (memory bound)")
    parser.add_argument("--device", default=None,
                        help="afloc-compat: count on this torch device (cuda, cuda:1, cpu) instead of NumPy; "
                             "IoU, Dice and hit are the same, CNR agrees to about 1e-6 (default: NumPy)")
    parser.add_argument("--threads", type=_threads, default=None,
                        help="chunks scored at once, one per core (default: the cores this process may use); "
                             "the values do not depend on it")


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return n


# --------------------------------------------------------------------------------------
# Reading the npz without loading the heatmaps at once
# --------------------------------------------------------------------------------------
def _error(path: str, expected: str) -> Exception:
    from benchmark.dataset import DataError

    return DataError(path, expected)


def npz_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran flag of one member of an .npz, read from its header only."""
    import numpy as np

    with zipfile.ZipFile(path) as zf:
        name = key + ".npy"
        if name not in zf.namelist():
            raise _error(path, f"an array named {key!r} (found {sorted(n[:-4] for n in zf.namelist())})")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype, fortran


def iter_npz_chunks(path: str, key: str, chunk: int) -> Iterator[np.ndarray]:
    """Stream the first axis of one .npz member in chunks (the member is never fully loaded)."""
    import numpy as np

    shape, dtype, fortran = npz_header(path, key)
    if dtype.hasobject:
        raise _error(path, f"{key!r} as a numeric array, not Python objects (save with numpy.savez, no pickles)")
    if fortran or len(shape) == 0:
        arr = _load_small(path, key)
        for s in range(0, len(arr), chunk):
            yield arr[s:s + chunk]
        return
    per = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        for s in range(0, shape[0], chunk):
            n = min(chunk, shape[0] - s)
            buf = f.read(n * per)
            if len(buf) != n * per:
                raise _error(path, f"{key!r} with {shape[0]} entries; the file is truncated")
            yield np.frombuffer(buf, dtype=dtype).reshape((n,) + tuple(shape[1:]))


def _load_small(path: str, key: str) -> np.ndarray:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except ValueError as exc:
        raise _error(path, f"{key!r} as a plain array (object arrays need pickle, which is refused): {exc}") from exc


def read_inputs(path: str) -> dict[str, Any]:
    """Validate the npz and return its small arrays plus heatmap/mask shapes."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise _error(path, "file not found (expected an .npz file of heatmaps, masks and categories)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except zipfile.BadZipFile as exc:
        raise _error(path, "an .npz file written by numpy.savez or numpy.savez_compressed") from exc
    missing = [k for k in GROUNDING_KEYS if k not in names]
    if missing:
        raise _error(path, f"arrays {list(GROUNDING_KEYS)}; missing {missing}")
    hshape, hdtype, _ = npz_header(path, "heatmaps")
    mshape, mdtype, _ = npz_header(path, "masks")
    if len(hshape) != 3:
        raise _error(path, f"'heatmaps' of shape [N, H, W], got {hshape}")
    if hdtype.kind not in "fiu":
        raise _error(path, f"'heatmaps' of a numeric dtype, got {hdtype}")
    if len(mshape) != 3 or mshape[0] != hshape[0]:
        raise _error(path, f"'masks' of shape [N, H, W] with N = {hshape[0]}, got {mshape}")
    if mdtype.kind not in "iub":
        raise _error(path, f"'masks' of an integer dtype (0 = background, 1 = lesion, 2 = overlap), got {mdtype}")
    out: dict[str, Any] = {"n": hshape[0], "heatmap_shape": hshape, "mask_shape": mshape}
    cats = _load_small(path, "categories")
    if cats.shape != (hshape[0],) or cats.dtype.kind not in "US":
        raise _error(path, f"'categories' as a string array of shape [{hshape[0]}], got {cats.dtype} {cats.shape}")
    out["categories"] = cats.astype(str)
    for key, kind in (("labels", "iub"), ("scores", "fiu"), ("image_ids", "USiu"), ("patient_ids", "USiu")):
        if key in names:
            a = _load_small(path, key)
            if a.shape != (hshape[0],) or a.dtype.kind not in kind:
                raise _error(path, f"{key!r} of shape [{hshape[0]}] ({kind} dtype), got {a.dtype} {a.shape}")
            out[key] = a
    if "labels" in out:
        bad = sorted({int(v) for v in out["labels"] if int(v) not in (0, 1)})
        if bad:
            raise _error(path, f"'labels' of 0 or 1 (absent, present); found {bad[:10]}")
    if "scores" in out and not np.all(np.isfinite(out["scores"].astype(np.float64))):
        n_bad = int((~np.isfinite(out["scores"].astype(np.float64))).sum())
        raise _error(path, f"'scores' that are all finite probabilities; {n_bad} are NaN or infinite")
    return out


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------
def score_file(path: str, protocol_id: str, *, n_boot: int = 1000, seed: int = 0, margin: bool | None = None,
               pathology: bool = False, native_grid: bool = False, official_dataset: str = "GENERIC",
               official_rounding: bool = False, unit: str = "image", chunk: int = 32,
               quiet: bool = True, threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Score ``path`` under ``protocol_id``; returns the JSON-ready result. Chunks are scored on
    ``threads`` threads (default: every usable core), with the same values as one thread."""
    import numpy as np
    import pandas as pd

    from benchmark.protocols.base import resolve_protocol

    proto = resolve_protocol(protocol_id)
    pathology = pathology or official_dataset == "SICAPV2_GROUNDING"
    if not proto.scores_arrays:
        raise _error(path, f"a protocol that can score arrays; {proto.id} cannot")
    if device is not None and proto.name != "afloc-compat":
        raise ValueError(f"--device: the torch path scores afloc-compat@1 only, not {proto.id}")
    info = read_inputs(path)
    n = info["n"]
    if not native_grid and info["heatmap_shape"][1:] != info["mask_shape"][1:]:
        raise _error(path, f"heatmaps of the masks' size {info['mask_shape'][1:]} (got {info['heatmap_shape'][1:]}); "
                           "pass --native-grid for native grids")
    from benchmark.parallel import ordered_map, usable_cores
    from benchmark.progress import Progress

    parts: list[dict[str, np.ndarray]] = []
    chunks = zip(iter_npz_chunks(path, "heatmaps", chunk), iter_npz_chunks(path, "masks", chunk))
    bar = Progress(n, "scoring", unit="map", enabled=not quiet)

    def checked():  # read and checked in order here; scored on the pool
        done = 0
        for hm, mk in chunks:
            if mk.dtype.kind == "i" and np.any(mk < 0):  # unsigned and boolean masks cannot be negative
                raise _error(path, "'masks' with values >= 0")
            inf = np.isinf(hm).reshape(len(hm), -1).any(1) if hm.dtype.kind == "f" else None  # integers: never
            if inf is not None and inf.any():
                raise _error(path, f"'heatmaps' without infinite values (NaN marks a pixel that is not evaluated); "
                                   f"map {done + int(np.argmax(inf))} has one")
            done += len(hm)
            yield hm, np.asarray(mk)

    def scored(pair):
        hm, mk = pair
        extra = {"device": device} if device is not None else {}
        return proto.score_chunk(hm, mk, margin=margin, native_grid=native_grid, pathology=pathology, **extra)

    # a GPU is fed by one thread; NumPy scores on every core
    for part in ordered_map(scored, checked(), (1 if device not in (None, "cpu") else threads or usable_cores())):
        parts.append(part)
        bar.update(len(next(iter(part.values()))))
    bar.close()
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    ids = np.array([f"score/{i}" for i in range(n)])
    image_ids = info.get("image_ids", ids).astype(str)
    rec = pd.DataFrame({"sample_id": ids, "image_id": image_ids,
                        "patient_id": info.get("patient_ids", image_ids).astype(str),
                        "category": info["categories"], "split": "test"})
    if "labels" in info:
        rec["label"] = info["labels"].astype(np.int64)
    for k, v in values.items():
        rec[k] = v
    params: dict[str, Any] = {}
    if proto.name == "afloc-compat":
        rec["afloc_dataset"] = official_dataset
        rec["modality"] = "pathology" if pathology else "chest_xray"
        params.update(afloc_dataset=official_dataset, official_rounding=official_rounding)
    rows = proto.summarize(rec, "grounding", n_boot=n_boot, seed=seed, unit=unit, params=params)
    result: dict[str, Any] = {
        "protocol": proto.id, "input": str(path), "n": int(n), "n_boot": n_boot, "seed": seed,
        "unit": unit if proto.name == "canonical" else "protocol-defined",
        "options": {"margin": margin, "pathology": pathology, "native_grid": native_grid,
                    "official_dataset": official_dataset, "official_rounding": official_rounding},
        "metrics": _nest(rows),
    }
    if "labels" in info and "scores" in info and "classification" in proto.tasks:
        crec = rec[["sample_id", "image_id", "patient_id", "category", "label"]].copy()
        crec["score"] = info["scores"].astype(np.float64)
        if proto.name == "afloc-compat":
            crec["modality"] = rec["modality"]
        cparams = dict(params)
        if proto.name == "afloc-compat":
            # multi-class balanced accuracy needs every class scored per image (image_ids given)
            cparams["softmax"] = bool(pathology and "image_ids" in info)
        crows = proto.summarize(crec, "classification", n_boot=n_boot, seed=seed, unit=unit, params=cparams)
        result["classification"] = _nest(crows)
    return result


def _clean(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def _nest(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["metric"], {})[r["category"]] = {
            k: _clean(r[k]) for k in ("point", "boot_mean", "lo", "hi", "n")}
    return out


def _print_table(result: dict[str, Any]) -> None:
    from tabulate import tabulate

    table = []
    for section in ("metrics", "classification"):
        for metric, cats in result.get(section, {}).items():
            for cat, v in cats.items():
                table.append([metric, cat] + [v[k] for k in ("point", "boot_mean", "lo", "hi", "n")])
    print(f"{result['protocol']}  n={result['n']}  n_boot={result['n_boot']}  seed={result['seed']}")
    print(tabulate(table, headers=["metric", "category", "point", "boot_mean", "lo", "hi", "n"], floatfmt=".4f"))
    print("n: maps with a value for that metric (an undefined value, e.g. IoU of an empty thresholded map under "
          "afloc-compat, is left out)")


def run_on_dataset(args: argparse.Namespace) -> int:
    """``--dataset``: the maps scored by the run engine as the model ``byo``, into a run folder."""
    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner
    from benchmark.tables import summary_table

    cfg = RunConfig(models=["byo"], datasets=[args.dataset], protocol=args.protocol, n_boot=args.n_boot,
                    seed=args.seed, ckpt={"byo": args.input}, data_root=args.data_root, output=args.output,
                    quiet=bool(getattr(args, "quiet", False)))
    cfg.normalise()
    runner = Runner(cfg)
    state = runner.run()
    print(summary_table(state))
    print(f"\nrun record: {runner.out / 'results.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from benchmark.dataset import DataError

    if args.dataset is not None:
        return run_on_dataset(args)
    if args.output is not None or args.data_root is not None:
        print("afloc-bench score: error: -o/--output and --data-root go with --dataset (maps keyed by sample id); "
              "for preds.npz use --json", file=sys.stderr)
        return 2
    try:
        result = score_file(args.input, args.protocol, n_boot=args.n_boot, seed=args.seed, margin=args.margin,
                            pathology=args.pathology, native_grid=args.native_grid,
                            official_dataset=args.official_dataset, official_rounding=args.official_rounding,
                            unit=args.unit, chunk=args.chunk, quiet=getattr(args, "quiet", False),
                            threads=args.threads, device=args.device)
    except DataError as exc:
        print(f"afloc-bench score: error: {exc}", file=sys.stderr)
        return 2
    _print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(args.json) + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return 0
