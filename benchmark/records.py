"""Run records: atomic file writes, results.json schema, env.json, per-sample parquet.

A run folder holds (schema documented in ``docs/run-records.md``)::

    results.json              the run's numbers and everything needed to reproduce them
    env.json                  package versions and device
    config.resolved.yaml      the resolved configuration
    samples/<dataset>__<model>.parquet   one row per sample (per-sample records)
    pairs/<dataset>__<model>.json        per-pair summary, written as each pair finishes (resume)
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULT_ROW_KEYS = ("task", "metric", "category", "point", "boot_mean", "lo", "hi", "n")
RESULTS_REQUIRED_KEYS = ("schema_version", "harness_version", "git_commit", "date", "config", "protocol",
                         "datasets", "models", "results", "skipped_pairs", "limit")


def record_stem(dataset: str, model: str) -> str:
    """File stem of a (dataset, model) pair: ``<dataset>__<model>`` with characters that some file
    systems refuse (``gradcam:densenet121``'s colon on Windows) percent-encoded."""
    from urllib.parse import quote

    return f"{quote(dataset, safe='+-._~')}__{quote(model, safe='+-._~')}"


def parse_stem(stem: str) -> tuple[str, str]:
    """(dataset, model) of a record file stem (older runs with a raw colon read the same)."""
    from urllib.parse import unquote

    if "__" not in stem:
        raise ValueError(f"record file stem {stem!r} is not <dataset>__<model>")
    ds, model = stem.split("__", 1)
    return unquote(ds), unquote(model)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write to a uniquely named hidden sibling then rename, so readers never see a partial file.
    The file gets the mode a plain ``open`` gives (0666 less the umask); the parent folder is made
    when missing. ``durable=False`` skips the fsync, for files whose reader detects a torn write
    (the cache, which writes tens of thousands of entries a run: no mkstemp, no extra calls)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{os.urandom(6).hex()}.tmp")  # unique across processes
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(folder or ".", exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet_atomic(df: Any, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def nan_to_none(x: Any) -> Any:
    """JSON has no NaN: store missing numbers as null."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    try:
        import numpy as np

        if isinstance(x, np.floating):
            return None if np.isnan(x) else float(x)
        if isinstance(x, np.integer):
            return int(x)
    except ImportError:  # pragma: no cover
        pass
    return x


def git_commit(repo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the harness checkout (``unknown`` outside git)."""
    repo_dir = str(repo_dir or Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


ENV_PACKAGES = ("afloc-bench", "numpy", "scipy", "pandas", "scikit-learn", "torch", "torchvision", "transformers",
                "tokenizers", "open_clip_torch", "grad-cam", "opencv-python-headless", "pydicom", "pycocotools",
                "pyarrow", "safetensors", "torchxrayvision")


def cpu_simd() -> dict[str, Any]:
    """The SIMD code paths numpy, OpenCV and torch take on this CPU. They decide the last bits of
    the rendered demo data and of CPU training (AVX2 and AVX-512 paths round differently), so a
    run compared against a golden file made on another kind of CPU drifts a little."""
    out: dict[str, Any] = {}
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

        out["numpy"] = list(__cpu_baseline__) + [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    except Exception:  # noqa: BLE001 - a private numpy table; absent in other numpy versions
        out["numpy"] = None
    try:
        import cv2

        out["opencv"] = [f.lstrip("*") for f in cv2.getCPUFeaturesLine().split() if not f.endswith("?")]
    except Exception:  # noqa: BLE001 - OpenCV is optional here
        out["opencv"] = None
    try:
        import torch

        out["torch"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        out["torch"] = None
    return out


def environment(device: str | None = None) -> dict[str, Any]:
    """What env.json records: interpreter, platform, CPU code paths, package versions, device."""
    versions = {}
    for name in ENV_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "device": device,
        "cpu_simd": cpu_simd(),
    }
    try:
        import torch

        env["torch"] = {
            "version": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "num_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        }
    except ImportError:
        env["torch"] = None
    return env


def validate_results(obj: dict[str, Any]) -> list[str]:
    """Problems with a results.json object (empty list = valid against schema 1)."""
    problems = [f"missing key {k!r}" for k in RESULTS_REQUIRED_KEYS if k not in obj]
    if obj.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version {obj.get('schema_version')!r} != {SCHEMA_VERSION}")
    for ds, per_model in (obj.get("results") or {}).items():
        for model, rows in per_model.items():
            if not isinstance(rows, list):
                problems.append(f"results[{ds}][{model}] is not a list")
                continue
            for i, row in enumerate(rows):
                missing = [k for k in RESULT_ROW_KEYS if k not in row]
                if missing:
                    problems.append(f"results[{ds}][{model}][{i}] lacks {missing}")
    return problems


# Per-dataset fields of two run records that must agree before their numbers are compared.
COMPARED_DATASET_FIELDS = ("sample_hash", "prompt_set", "card_version", "split")


def run_mismatches(a: dict[str, Any], b: dict[str, Any], datasets: list[str] | None = None) -> list[str]:
    """Why two run records are unlike (empty when their numbers can be compared): limit, protocol,
    harness version, and per shared dataset its samples (hash), prompt set, card version and split."""
    out = []
    for what, x, y in (("limit", a.get("limit"), b.get("limit")),
                       ("protocol", (a.get("protocol") or {}).get("id"), (b.get("protocol") or {}).get("id")),
                       ("harness_version", a.get("harness_version"), b.get("harness_version"))):
        if x != y:
            out.append(f"{what}: {x!r} against {y!r}")
    da, db = a.get("datasets") or {}, b.get("datasets") or {}
    for ds in sorted(set(da) & set(db) if datasets is None else set(datasets) & set(da) & set(db)):
        for f in COMPARED_DATASET_FIELDS:
            x, y = da[ds].get(f), db[ds].get(f)
            if x != y:
                short = (lambda v: v[:12] + "…" if isinstance(v, str) and len(v) > 16 else v)
                out.append(f"{ds} {f}: {short(x)!r} against {short(y)!r}")
    return out


def limit_note(*states: dict[str, Any]) -> str:
    """A line marking limited runs (``--limit``), empty when none is."""
    limits = sorted({s["limit"] for s in states if s.get("limit")})
    return f"LIMITED RUN (--limit {', '.join(map(str, limits))}): not comparable to a full run" if limits else ""
