"""Build the demo weights the package ships: ``python -m benchmark.training.ship [TARGET ...]``.

Each training target with demo weights in a manifest (afloc, gloria, biovil, convirt, medklip,
classifier) is trained by its own demo recipe from scratch on the demo data (the same
``build_demo`` that ``afloc-bench train`` runs), and the files inference needs are copied to
``weights/demo/<id>/`` with a ``BUILD.json``: the command, the commit, the environment (CPU code
paths included), the training time and the sha256 of every file. Optimizer state is left out.
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


def demo_targets() -> dict[str, str]:
    """``{training target: demo weights id}`` over every model entry that names both."""
    out: dict[str, str] = {}
    for entry in models.entries():
        wid, target = entry.get("demo_weights"), entry.get("train")
        if wid and target:
            if out.get(target, wid) != wid:
                raise ValueError(f"training target {target!r} has two demo weights ids: {out[target]}, {wid}")
            out[target] = wid
    return out


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


def ship(target: str, weights_id: str, out_root: Path, quiet: bool = True) -> Path:
    """Train ``target``'s demo recipe and install the result as ``out_root/<id>`` (``-`` → ``_``)."""
    from benchmark.records import environment

    job = training.get(target)()
    dest = out_root / weights_id.replace("-", "_")
    with tempfile.TemporaryDirectory(prefix=f"ship-{target}-") as tmp:
        t0 = time.time()
        built = Path(job.build_demo(Path(tmp), quiet))
        seconds = round(time.time() - t0, 1)
        staged = Path(tmp) / "ship"
        shutil.copytree(built, staged, ignore=shutil.ignore_patterns(*LEFT_OUT))
        name_no_machine_path(staged, {str(demo_root()): "<demo data>", str(Path(tmp)): "<build folder>"})
        files = shipped_files(staged)
        record = {
            "weights_id": weights_id,
            "target": target,
            "command": f"python -m benchmark.training.ship {target}  (the demo recipe of `afloc-bench train {target}`"
                       " on demo_mimic)",
            "commit": _commit(),
            "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "train_seconds": seconds,
            "environment": environment("cpu"),
            "files": files,
        }
        (staged / BUILD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    targets = demo_targets()
    p = argparse.ArgumentParser(prog="python -m benchmark.training.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help=f"training targets (default: all of {', '.join(sorted(targets))})")
    p.add_argument("--out", default=str(REPO / "weights" / "demo"), help="folder of the shipped demo weights")
    p.add_argument("--show", action="store_true", help="training progress")
    args = p.parse_args(argv)
    unknown = [t for t in args.targets if t not in targets]
    if unknown:
        p.error(f"no demo weights for {', '.join(unknown)}; expected some of {', '.join(sorted(targets))}")
    for target in args.targets or sorted(targets):
        print(f"{target}: training {targets[target]} by its demo recipe ...", flush=True)
        dest = ship(target, targets[target], Path(args.out), quiet=not args.show)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        print(f"{target}: {dest} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
