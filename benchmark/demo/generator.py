"""Generation of the whole demo collection: plan, render in parallel, write tables, manifest last."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from benchmark.dataset import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROVENANCE = "provenance"


def writers() -> dict:
    """Folder name → demo writer, for every dataset entry of the manifests with a ``demo_writer``."""
    from benchmark.registry import datasets, import_object

    out = {}
    for e in datasets.entries():
        spec = e.get("demo_writer")
        if spec:
            w = import_object(spec, f"demo writer of dataset {e.name!r} ({e.source})")()
            out[w.name] = w
    return dict(sorted(out.items(), key=lambda kv: kv[1].code))


def available_sets() -> list[str]:
    return list(writers())


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _preload() -> dict:
    """Read the real material once in the parent, so forked workers share it."""
    from benchmark.demo import anatomy, material

    reps = material.reports()
    shapes = material.lung_shapes()
    material.canonical_lung_frame()
    tables = material.boxes()
    material.rsna_box_sets()
    siim = material.siim_positive_rles()
    import numpy as np

    anatomy._noise_tile(np.random.default_rng(0), 8, 8)
    anatomy._vessel_bank()
    return {"openi_reports": len(reps), "openi_normal_reports": sum(r.is_normal for r in reps),
            "v7labs_lung_pairs_used": len(shapes), "siim_positive_images": len(siim),
            "box_tables": {k: int(len(v)) for k, v in sorted(tables.items())}}


def _render_task(task):
    seed, root, name, job = task
    from benchmark.demo.writer import job_rng

    s = writers()[name]
    return s.render(job, job_rng(seed, s.code, job), Path(root) / name)


def generate(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
             datasets: Iterable[str] | None = None, progress: bool = True, workers: int | None = None) -> dict:
    """Write the demo datasets under ``out_dir`` (one folder per loader name) and return the manifest."""
    from benchmark.demo import DEFAULT_N_TEST, DEFAULT_N_TRAIN, DEMO_VERSION
    from benchmark.demo.writer import Context

    SETS = writers()

    n_train = DEFAULT_N_TRAIN if n_train is None else int(n_train)
    n_test = DEFAULT_N_TEST if n_test is None else int(n_test)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be at least 1 (got {n_train}, {n_test})")
    names = list(SETS) if datasets is None else [d.strip() for d in datasets if d.strip()]
    unknown = [d for d in names if d not in SETS]
    if unknown:
        raise DataError(None, f"unknown demo dataset(s) {unknown}; expected some of {list(SETS)}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # its absence marks an incomplete generation
    for name in names:  # a stale folder would mix old files into a new generation
        shutil.rmtree(out / name, ignore_errors=True)
        (out / PROVENANCE / f"{name}.jsonl").unlink(missing_ok=True)
    material = _preload()
    ctx = Context(out=out, seed=int(seed), n_train=n_train, n_test=n_test)
    plans = {name: SETS[name].plan(ctx) for name in names}
    tasks = [(int(seed), str(out), name, job) for name in names for job in plans[name]]
    results = _run(tasks, workers, progress)
    manifest_sets = {}
    k = 0
    (out / PROVENANCE).mkdir(exist_ok=True)
    for name in names:
        jobs = plans[name]
        res = results[k:k + len(jobs)]
        k += len(jobs)
        counts = SETS[name].write(ctx, jobs, res)
        missing = sum(len(r["provenance"]["missing"]) for r in res)
        with open(out / PROVENANCE / f"{name}.jsonl", "w") as fh:
            for r in res:
                fh.write(json.dumps(r["provenance"], sort_keys=True) + "\n")
        manifest_sets[name] = {"title": SETS[name].title, "counts": counts, "findings_not_drawn": missing}
    manifest = {"generator": "afloc-bench demo", "version": DEMO_VERSION, "seed": int(seed), "n_train": n_train,
                "n_test": n_test, "datasets": manifest_sets, "material": material,
                "orientation": "radiological: image left = patient's right"}
    from benchmark.demo.encode import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _run(tasks: list, workers: int | None, progress: bool) -> list[dict]:
    from benchmark.progress import Progress

    if workers is None:
        workers = 1 if len(tasks) < 24 else _cpus()
    bar = Progress(len(tasks), "demo images", unit="img", enabled=progress)
    out: list[dict] = []
    try:
        if workers <= 1:
            for t in tasks:
                out.append(_render_task(t))
                bar.update()
            return out
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        chunk = max(1, len(tasks) // (workers * 16))
        with mp.get_context(method).Pool(workers) as pool:
            for r in pool.imap(_render_task, tasks, chunksize=chunk):
                out.append(r)
                bar.update()
        return out
    finally:
        bar.close()


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure(out_dir: str | os.PathLike, seed: int = 0, **kwargs) -> Path:
    """The demo data folder holding the sets ``datasets`` (default: all), generating the missing ones.

    Each set depends only on the seed, its own code and the sizes, so a set generated later is the
    same bytes as one generated with the others: a run generates only the sets it reads. A
    collection of another version, seed or size is regenerated. New sets are written into a
    temporary sibling folder, moved into place and only then listed in the manifest, so a reader
    never sees a half-written set and an interrupted run leaves nothing behind. A lock file
    serialises concurrent callers (e.g. the ranks of a distributed training run): the second one
    finds the sets complete and returns.
    """
    from benchmark.demo import DEMO_VERSION

    out = Path(out_dir).expanduser()
    given = kwargs.pop("datasets", None)
    wanted = list(writers()) if given is None else [d.strip() for d in given if d.strip()]
    sizes = {k: int(kwargs[k]) for k in ("n_train", "n_test") if kwargs.get(k) is not None}  # none: as found

    def missing() -> list[str] | None:
        """The wanted sets not yet in the collection; None when it is of another version or seed, or of
        sizes other than those asked for."""
        m = read_manifest(out)
        if not (m and m.get("version") == DEMO_VERSION and m.get("seed") == seed
                and all(m.get(k) == v for k, v in sizes.items())):
            return None
        return [d for d in wanted if d not in m.get("datasets", {})]

    if missing() == []:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        todo = missing()
        if todo == []:
            return out
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        names = wanted if todo is None else todo
        if todo is not None:  # sets added to a collection take its sizes
            m = read_manifest(out)
            kwargs.update(n_train=m["n_train"], n_test=m["n_test"])
        log.info("generating the demo datasets %s into %s (once; version %s)", ", ".join(names), out, DEMO_VERSION)
        t0 = time.monotonic()
        try:
            manifest = generate(tmp, seed=seed, datasets=names, **kwargs)
            if todo is None:
                if out.exists():
                    os.replace(out, old)
                os.replace(tmp, out)
            else:
                _merge_sets(tmp, out, names, manifest)
            log.info("demo datasets generated in %.1f s", time.monotonic() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return out


def _merge_sets(new: Path, out: Path, names: list[str], manifest: dict) -> None:
    """Move the sets ``names`` generated in ``new`` into the collection ``out``, then list them in its manifest."""
    from benchmark.demo.encode import atomic_write_text

    current = read_manifest(out) or {}
    (out / PROVENANCE).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.rmtree(out / name, ignore_errors=True)  # left by an interrupted merge; not in the manifest
        os.replace(new / name, out / name)
        os.replace(new / PROVENANCE / f"{name}.jsonl", out / PROVENANCE / f"{name}.jsonl")
    merged = {**manifest, "datasets": {**current.get("datasets", {}), **manifest["datasets"]}}
    merged["datasets"] = dict(sorted(merged["datasets"].items()))
    atomic_write_text(out / MANIFEST, json.dumps(merged, indent=2, sort_keys=True) + "\n")


class _lock:
    """An exclusive advisory lock on ``path`` (a no-op where ``fcntl`` is unavailable)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
        return False
