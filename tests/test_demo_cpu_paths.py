"""The demo files do not depend on the CPU's SIMD code paths.

A small collection (every dataset, a few files of each kind: JPEG, PNG, DICOM, JSON, CSV) is
generated in fresh processes, each with its own material cache (so the lung-mask selection is
redone too), under

- (a) numpy's and OpenCV's default code paths,
- (b) numpy held to its baseline code paths (``NPY_DISABLE_CPU_FEATURES`` naming every
  dispatch target numpy enabled on this CPU),
- (c) OpenCV's optimisations off (``cv2.setUseOptimized(False)``) and libjpeg-turbo's SIMD
  off (``JSIMD_FORCENONE=1``),

and the sha256 of every file must agree. None of them may import torch. The digest of the
whole collection is also pinned, so another machine (CI) that writes other bytes fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"seed": 0, "n_train": 2, "n_test": 2}

# the collection's digest (see ``tree_digest``) under DEMO_VERSION; a change on purpose bumps both
PINNED = {"version": "3", "sha256": "d0e02de638321c752730d0e4c763f60c39d11058fc9002d5cb518257c9f126b0"}

SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path

mode, out = sys.argv[1], Path(sys.argv[2])
import numpy as np

try:
    umath = np._core._multiarray_umath
except AttributeError:  # numpy 1.x
    umath = np.core._multiarray_umath
active = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
import cv2

if mode == "cv2-plain":
    cv2.setUseOptimized(False)
    assert not cv2.useOptimized()
import benchmark.demo as demo

demo.generate(out, progress=False, workers=1, **json.loads(sys.argv[3]))
files = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(out.rglob("*")) if p.is_file()}
print(json.dumps({"files": files, "numpy_targets": active, "cv2_optimized": cv2.useOptimized(),
                  "torch": "torch" in sys.modules, "version": demo.DEMO_VERSION}))
"""


def numpy_dispatch_targets() -> list[str]:
    """The dispatch targets numpy enabled on this CPU (beyond its baseline)."""
    import numpy as np

    try:
        umath = np._core._multiarray_umath
    except AttributeError:  # numpy 1.x
        umath = np.core._multiarray_umath
    return [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]


def tree_digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


CONFIGS = {
    "default": ("default", {}),
    "numpy-baseline": ("default", {"NPY_DISABLE_CPU_FEATURES": " ".join(numpy_dispatch_targets())}),
    "cv2-plain": ("cv2-plain", {"JSIMD_FORCENONE": "1"}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("cpu_paths")
    procs = {}
    for name, (mode, extra) in CONFIGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "JSIMD_FORCENONE")}
        env.update(extra)
        env["AFLOC_BENCH_CACHE"] = str(base / f"cache-{name}")  # the material is selected afresh in each
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode, str(base / name), json.dumps(SMALL)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, f"{name}: generation failed\n{stderr[-4000:]}"
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def test_the_configurations_really_differ(runs):
    assert runs["numpy-baseline"]["numpy_targets"] == []
    assert runs["cv2-plain"]["cv2_optimized"] is False
    assert runs["default"]["cv2_optimized"] is True
    assert not any(r["torch"] for r in runs.values()), "the generator must not import torch"


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "default"])
def test_every_file_is_identical_under_other_code_paths(runs, config):
    ref, other = runs["default"]["files"], runs[config]["files"]
    kinds = {Path(n).suffix for n in ref}
    assert {".jpg", ".png", ".dcm", ".json", ".csv", ".txt", ".jsonl"} <= kinds
    assert sorted(ref) == sorted(other)
    differ = sorted(n for n in ref if ref[n] != other[n])
    assert not differ, f"{len(differ)} of {len(ref)} files differ under {config}: {differ[:12]}"


def test_the_collection_digest_is_pinned(runs):
    run = runs["default"]
    assert run["version"] == PINNED["version"], "DEMO_VERSION changed: update PINNED with the new digest"
    assert tree_digest(run["files"]) == PINNED["sha256"], (
        "the demo files changed (or this machine writes other bytes): if on purpose, bump DEMO_VERSION and "
        f"pin {tree_digest(run['files'])}")
