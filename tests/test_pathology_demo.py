"""The pathology demo sets: written in their official layouts, read by the real loaders, the same bytes
everywhere (numpy's baseline code paths, OpenCV's optimisations and libjpeg-turbo's SIMD off), and
scored end to end by a run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark import demo
from benchmark.cli.main import main
from benchmark.dataset import build_dataset
from benchmark.registry import datasets

ROOT = Path(__file__).resolve().parents[1]
SETS = ["sicapv2", "wsss4luad", "dhmc_luad", "quilt1m"]
SMALL = {"seed": 0, "n_train": 2, "n_test": 2, "datasets": SETS}
# digest of the pathology files of the small collection (``_digest``); a change on purpose updates it
PINNED = "c3bf012a3f78abc4cc2f057e96567306d3777821d2a1178065c704ef3a68539f"

SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path

mode, out, opts = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
import numpy as np

try:
    umath = np._core._multiarray_umath
except AttributeError:  # numpy 1.x
    umath = np.core._multiarray_umath
active = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
import cv2

if mode == "cv2-plain":
    cv2.setUseOptimized(False)
import benchmark.demo as demo
from benchmark.demo import generator

generator._preload = lambda: {}  # the chest material: the pathology sets use none of it
demo.generate(out, progress=False, workers=1, **opts)
files = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(out.rglob("*")) if p.is_file()}
print(json.dumps({"files": files, "numpy_targets": active, "cv2_optimized": cv2.useOptimized(),
                  "torch": "torch" in sys.modules}))
"""


def _numpy_targets() -> list[str]:
    try:
        umath = np._core._multiarray_umath
    except AttributeError:  # numpy 1.x
        umath = np.core._multiarray_umath
    return [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]


CONFIGS = {
    "numpy-baseline": ("default", {"NPY_DISABLE_CPU_FEATURES": " ".join(_numpy_targets())}),
    "cv2-plain": ("cv2-plain", {"JSIMD_FORCENONE": "1"}),
}


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        if name.split("/")[0] in SETS or name.startswith("provenance/"):
            h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def other_paths(tmp_path_factory):
    """The small collection generated in fresh processes under other code paths (started first: they run
    while the tests below use the in-process collection)."""
    base = tmp_path_factory.mktemp("patho_paths")
    procs = {}
    for name, (mode, extra) in CONFIGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "JSIMD_FORCENONE")}
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        procs[name] = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(base / name), json.dumps(SMALL)],
                                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return procs


@pytest.fixture(scope="module")
def no_chest_material():
    """The generator reads the chest material for its manifest; the pathology sets use none of it."""
    from benchmark.demo import generator

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generator, "_preload", lambda: {})
        yield


@pytest.fixture(scope="module")
def small(tmp_path_factory, other_paths, no_chest_material):
    out = tmp_path_factory.mktemp("patho") / "demo"
    manifest = demo.generate(out, progress=False, workers=1, **SMALL)
    return out, manifest


@pytest.fixture()
def demo_env(small, monkeypatch):
    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small[0]))
    return small[0]


def test_registration():
    names = datasets.resolve("pathology_demo")
    assert sorted(names) == ["demo_dhmc_luad", "demo_sicapv2", "demo_wsss4luad"]
    assert not set(names) & set(datasets.resolve("demo"))
    assert "demo_train" in datasets.entry("demo_quilt1m").tags and "demo_quilt1m" not in datasets.resolve("demo")
    assert set(SETS) <= set(demo.available())


def test_every_set_loads_and_validates(demo_env, capsys):
    rc = main(["validate", "--datasets", "pathology_demo,demo_quilt1m"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 of 4 dataset(s) valid" in out
    for name in ("demo_sicapv2", "demo_wsss4luad", "demo_dhmc_luad", "demo_quilt1m"):
        ds = build_dataset(name)
        assert ds.samples() and ds.skipped == [], (name, ds.skipped[:3])
        assert str(ds.root).startswith(str(demo_env))


def test_every_class_is_present(demo_env):
    from benchmark.datasets.dhmc_luad.loader import CLASSES as DHMC
    from benchmark.datasets.sicapv2.loader import CLASSES as SICAP
    from benchmark.datasets.wsss4luad.loader import CLASSES as WSSS

    for name, classes in (("demo_sicapv2", SICAP), ("demo_wsss4luad", WSSS), ("demo_dhmc_luad", DHMC)):
        positives = [s for s in build_dataset(name).samples() if s.label == 1]
        assert {s.meta["class"] for s in positives} == set(classes), name
    wsss = build_dataset("demo_wsss4luad")
    wsss.samples()
    assert wsss.stats["multi_label_images"] >= 2 and len(wsss.excluded) == wsss.stats["multi_label_images"]
    quilt = build_dataset("demo_quilt1m").samples()
    assert len(quilt) >= 16 and all(len(s.prompts["report"].split()) >= 5 for s in quilt)


def test_sicapv2_masks_exactly_for_the_gleason_patches(demo_env):
    ds = build_dataset("demo_sicapv2")
    for s in ds.samples():
        if s.label != 1:
            assert not s.mask_paths
            continue
        assert s.image_size == (512, 512)
        assert (s.meta["mask_pixels"] > 0) == (s.meta["class"] != "NC"), s.sample_id
        assert bool(s.mask_paths) == (s.meta["class"] != "NC")


def test_sicapv2_spreadsheet_and_images(demo_env):
    import cv2
    import pandas as pd

    root = demo_env / "sicapv2"
    df = pd.read_excel(root / "partition" / "Test" / "Test.xlsx")
    assert list(df.columns) == ["image_name", "NC", "G3", "G4", "G5", "G4C"]
    assert (df[["NC", "G3", "G4", "G5"]].sum(axis=1) == 1).all()
    assert df["image_name"].str.fullmatch(r"\d\dB\d{7}_Block_Region_\d+_\d+_\d+_xini_\d+_yini_\d+\.jpg").all()
    img = cv2.imread(str(root / "images" / df["image_name"][0]), cv2.IMREAD_COLOR)
    assert img.shape == (512, 512, 3) and img.std(axis=(0, 1)).min() > 5  # colour, textured


def test_generating_twice_gives_the_same_bytes(small, tmp_path):
    again = tmp_path / "again"
    demo.generate(again, progress=False, workers=2, **SMALL)
    ref, other = _hashes(small[0]), _hashes(again)
    assert sorted(ref) == sorted(other)
    assert [n for n in ref if ref[n] != other[n]] == []
    kinds = {Path(n).suffix for n in ref}
    assert {".jpg", ".png", ".tif", ".xlsx", ".csv", ".jsonl"} <= kinds


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_same_bytes_under_other_code_paths(small, other_paths, config):
    p = other_paths[config]
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, f"{config}: generation failed\n{stderr[-4000:]}"
    run = json.loads(stdout.strip().splitlines()[-1])
    assert not run["torch"], "the generator must not import torch"
    if config == "numpy-baseline":
        assert run["numpy_targets"] == []
    else:
        assert run["cv2_optimized"] is False
    ref = _hashes(small[0])
    assert sorted(run["files"]) == sorted(ref)
    differ = sorted(n for n in ref if ref[n] != run["files"][n])
    assert not differ, f"{len(differ)} of {len(ref)} files differ under {config}: {differ[:12]}"


def test_the_pathology_digest_is_pinned(small):
    digest = _digest(_hashes(small[0]))
    assert digest == PINNED, f"the pathology demo files changed (or this machine writes other bytes): {digest}"


def test_a_run_scores_sicapv2(demo_env, tmp_path):
    out = tmp_path / "run"
    rc = main(["-q", "run", "--models", "random,uniform", "--datasets", "demo_sicapv2", "--n-boot", "20",
               "-o", str(out), "--no-cache", "--num-workers", "0"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["results"]["demo_sicapv2"]
    assert set(res) == {"random", "uniform"}
    for model, rows in res.items():
        ba = [r for r in rows if r["task"] == "classification" and r["metric"] == "balanced_accuracy"
              and r["category"] == "all"]
        assert len(ba) == 1 and ba[0]["n"] == 8, model
        grounding = [r for r in rows if r["task"] == "grounding" and r["category"] == "all"]
        assert {"iou", "hit"} <= {r["metric"] for r in grounding}, model
    # every Gleason patch is a grounding sample (a constant map, uniform, scores no IoU)
    assert [r["n"] for r in res["random"] if r["category"] == "all" and r["metric"] in ("iou", "hit")] == [6, 6]


def test_the_preview_sheet_reads_every_pathology_set(small, tmp_path):
    from benchmark.demo import preview

    out = preview.contact_sheet(small[0], tmp_path / "sheet.png", per_dataset=2, datasets=list(SETS))
    assert out.is_file() and out.stat().st_size > 10_000
    cells = preview.READERS["sicapv2"](small[0], 2)
    assert cells[0][1].ndim == 3 and all(c[3] for c in cells)  # colour tiles with their class prompt
    assert preview.READERS["quilt1m"](small[0], 1)[0][3] != "None"  # the caption


def test_afloc_runs_its_pathology_demo_weights_on_pathology_sets(demo_env, tmp_path):
    """Without --ckpt, AFLoc on a pathology set is the shipped demo AFLoc-Path (colour, trained on
    demo_quilt1m by ``afloc/configs/pathology_demo.yaml``), on a chest set the chest demo model."""
    from benchmark.adapter import build_adapter
    from benchmark.training.demo_weights import shipped_dir

    assert build_adapter("afloc", "pathology").demo_weights == "afloc-path-demo-1"
    assert build_adapter("afloc", "chest").demo_weights == build_adapter("afloc").demo_weights == "afloc-demo-8"
    out = tmp_path / "run"
    rc = main(["-q", "run", "--models", "afloc", "--datasets", "demo_sicapv2", "--n-boot", "20",
               "-o", str(out), "--no-cache", "--num-workers", "0"])
    assert rc == 0
    pair = json.loads((out / "pairs" / "demo_sicapv2__afloc.json").read_text())
    assert pair["model"]["checkpoint"] == str(shipped_dir("afloc-path-demo-1"))
    assert pair["preprocessing"]["grounding"]["decode"] == "cv2-bgr"  # the colour read of image_flag 1
    built = json.loads((shipped_dir("afloc-path-demo-1") / "train_config.json").read_text())
    assert (built["train"]["dataset"], built["train"]["image_flag"]) == ("demo_quilt1m", 1)
    # stored as float16 (``demo_dtype``), loaded into the float32 model
    import torch
    from safetensors.numpy import load_file

    stored = load_file(str(shipped_dir("afloc-path-demo-1") / "model.safetensors"))
    assert {str(v.dtype) for v in stored.values() if v.dtype.kind == "f"} == {"float16"}
    adapter = build_adapter("afloc", "pathology")
    adapter.load(None, "cpu")
    assert {p.dtype for p in adapter.engine.model.parameters()} == {torch.float32}


@pytest.mark.slow
def test_the_shipped_afloc_path_demo_localises_beyond_the_centre_prior(tmp_path):
    """docs/demo.md's statement: on the full demo_sicapv2 the shipped demo AFLoc-Path's CNR is above
    the centre prior's beyond both CIs, and above its untrained network's."""
    out = tmp_path / "run"
    rc = main(["-q", "run", "--models", "afloc,afloc_untrained,center_prior", "--datasets", "demo_sicapv2",
               "-o", str(out), "--no-cache"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["results"]["demo_sicapv2"]

    def cell(model, metric):
        return next(r for r in res[model] if r["task"] == "grounding" and r["metric"] == metric
                    and r["category"] == "all")

    afloc, prior, untrained = cell("afloc", "cnr"), cell("center_prior", "cnr"), cell("afloc_untrained", "cnr")
    assert afloc["lo"] > prior["hi"] and afloc["lo"] > untrained["hi"], (afloc, prior, untrained)


def test_a_run_record_names_each_modalitys_demo_weights(tmp_path):
    """One model on chest and pathology sets without --ckpt runs two weight sets: the pair records
    carry their own, and the run's model record names both by modality."""
    from types import SimpleNamespace

    from benchmark.run.engine import Runner

    runner = Runner.__new__(Runner)
    runner.cfg = SimpleNamespace(ckpt={})
    runner._weights_by_modality = {}
    chest, path = tmp_path / "chest.safetensors", tmp_path / "path.safetensors"
    chest.write_bytes(b"c")
    path.write_bytes(b"p")

    def record(ckpt, modality):
        return runner._model_record("afloc", SimpleNamespace(checkpoint=str(ckpt), describe=dict), modality)

    assert "checkpoint_by_modality" not in record(chest, "chest")
    assert "checkpoint_by_modality" not in record(chest, "chest")
    both = record(path, "pathology")
    assert both["checkpoint"] == str(path)
    assert both["checkpoint_by_modality"] == {"chest": str(chest), "pathology": str(path)}
