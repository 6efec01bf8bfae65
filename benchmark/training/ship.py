"""Build the demo weights the package ships: ``python -m benchmark.training.ship [TARGET|WEIGHTS ...]``.

Each set of demo weights a manifest names (``demo_weights``, and ``demo_weights_by_modality``: AFLoc's
pathology model) is trained by its target's demo recipe from scratch on the demo data (the same
``build_demo`` that ``afloc-bench train`` runs), and the files inference needs are copied to
``weights/demo/<id>/`` with a ``BUILD.json``: the command, the commit, the environment (CPU code
paths included), the training time and the sha256 of every file. Optimizer state is left out; a set
whose entry says ``demo_dtype: float16`` stores its floating tensors in half precision.
Another build on another kind of CPU is another draw (float summation order), not the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmark.dataset import demo_root
from benchmark.registry import models, training
from benchmark.training.demo_weights import BUILD_FILE, file_sha256

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = {"optimizer.safetensors", "last.pt"}  # training state, not needed for inference


def demo_targets() -> dict[str, tuple[str, str]]:
    """``{demo weights id: (training target, recipe)}`` over every model entry that names both."""
    from benchmark.adapter import demo_weights_of

    out: dict[str, tuple[str, str]] = {}
    for entry in models.entries():
        for modality in (None, *sorted(entry.get("demo_weights_by_modality") or {})):
            wid, target, config = demo_weights_of(entry, modality)
            if wid and target:
                if out.get(wid, (target, config)) != (target, config):
                    raise ValueError(f"demo weights {wid!r} named with two recipes: {out[wid]}, {(target, config)}")
                out[wid] = (target, config)
    return out


def storage_dtypes() -> dict[str, str]:
    """``{demo weights id: dtype}`` for the sets a manifest stores in another float type
    (``demo_dtype: float16``: half the bytes; the models load them into float32)."""
    out: dict[str, str] = {}
    for entry in models.entries():
        variants = [dict(entry.fields)] + list((entry.get("demo_weights_by_modality") or {}).values())
        for v in variants:
            if v.get("demo_weights") and v.get("demo_dtype"):
                out[v["demo_weights"]] = str(v["demo_dtype"])
    return out


def store_as(folder: Path, dtype: str) -> None:
    """Rewrite every ``*.safetensors`` in ``folder`` with its floating tensors as ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    if dtype != "float16":
        raise ValueError(f"demo_dtype {dtype!r}: only float16 is supported")
    for path in sorted(folder.rglob("*.safetensors")):
        tensors = load_file(str(path))
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}, str(path))


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


TEXT_SUFFIXES = (".json", ".csv", ".yaml", ".txt")


def name_no_machine_path(folder: Path, placeholders: dict[str, str]) -> None:
    """Replace this machine's folders in the text files of ``folder`` (training records name the
    data and build folders) by placeholders, so that the shipped files name no machine path."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text()
            new = text
            for real, placeholder in sorted(placeholders.items(), key=lambda kv: -len(kv[0])):
                new = new.replace(json.dumps(real)[1:-1], placeholder).replace(real, placeholder)
            if new != text:
                path.write_text(new)


def shipped_files(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file in ``folder`` but the build record."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != BUILD_FILE}


def ship(target: str, weights_id: str, out_root: Path, quiet: bool = True, config: str = "demo") -> Path:
    """Train ``target``'s recipe ``config`` and install the result as ``out_root/<id>`` (``-`` → ``_``)."""
    from benchmark.records import environment

    job = training.get(target)()
    dest = out_root / weights_id.replace("-", "_")
    with tempfile.TemporaryDirectory(prefix=f"ship-{target}-") as tmp:
        t0 = time.time()
        built = Path(job.build_demo(Path(tmp), quiet, config=config))
        seconds = round(time.time() - t0, 1)
        staged = Path(tmp) / "ship"
        shutil.copytree(built, staged, ignore=shutil.ignore_patterns(*LEFT_OUT))
        dtype = storage_dtypes().get(weights_id)
        if dtype:
            store_as(staged, dtype)
        name_no_machine_path(staged, {str(demo_root()): "<demo data>", str(Path(tmp)): "<build folder>"})
        files = shipped_files(staged)
        record = {
            "weights_id": weights_id,
            "target": target,
            "command": f"python -m benchmark.training.ship {weights_id}  (the {config} recipe of `afloc-bench train "
                       f"{target}` on {_recipe_dataset(target, config)})",
            "commit": _commit(),
            "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "train_seconds": seconds,
            "stored_dtype": dtype or "as trained (float32)",
            "environment": environment("cpu"),
            "files": files,
        }
        (staged / BUILD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, dest)
    return dest


def _recipe_dataset(target: str, config: str) -> str:
    try:
        from benchmark.training.config import load_train_config

        return load_train_config(config, target).dataset
    except (ValueError, FileNotFoundError):  # a trainer of its own (the classifier): demo_mimic
        return "demo_mimic"


def main(argv: list[str] | None = None) -> int:
    weights = demo_targets()
    p = argparse.ArgumentParser(prog="python -m benchmark.training.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="TARGET|WEIGHTS",
                   help="demo weights ids, or training targets (all their weights); default: all of "
                        f"{', '.join(sorted(weights))}")
    p.add_argument("--out", default=str(REPO / "weights" / "demo"), help="folder of the shipped demo weights")
    p.add_argument("--show", action="store_true", help="training progress")
    args = p.parse_args(argv)
    chosen: list[str] = []
    for name in args.names or sorted(weights):
        found = [name] if name in weights else [w for w, (t, _) in sorted(weights.items()) if t == name]
        if not found:
            p.error(f"no demo weights or training target {name!r}; expected some of {', '.join(sorted(weights))}")
        chosen.extend(w for w in found if w not in chosen)
    for wid in chosen:
        target, config = weights[wid]
        print(f"{wid}: training {target} by its {config} recipe ...", flush=True)
        dest = ship(target, wid, Path(args.out), quiet=not args.show, config=config)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        print(f"{wid}: {dest} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
