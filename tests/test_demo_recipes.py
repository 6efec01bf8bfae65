"""Every demo recipe still trains: each shipped demo config runs a few steps on a small demo_mimic and
the model it writes loads in its adapter and draws maps. The `slow` test builds one whole demo
model the way `python -m benchmark.training.ship` does and, on the kind of CPU that built the
shipped set, checks that the rebuild is the same bytes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmark.adapter import Query, build_adapter
from benchmark.registry import models
from benchmark.training.ship import demo_targets

TRAINER_TARGETS = ("afloc", "gloria", "biovil", "convirt", "medklip", "recontrast", "rdpp")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from benchmark.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, n_train=12, n_test=4, datasets=["mimic_cxr", "quilt1m"], progress=False,
             workers=1)
    return root


def _model_of(target: str) -> str:
    return next(e.name for e in models.entries() if e.get("train") == target and e.get("demo_weights"))


def test_every_demo_weights_target_is_covered_here():
    recipes = set(demo_targets().values())
    assert recipes == {*((t, "demo") for t in (*TRAINER_TARGETS, "classifier")), ("afloc", "pathology_demo")}


@pytest.mark.parametrize("target,config", [(t, "demo") for t in TRAINER_TARGETS] + [("afloc", "pathology_demo")])
def test_demo_recipe_trains_a_few_steps_and_the_model_runs(target, config, small_demo, tmp_path, monkeypatch):
    import torch

    from benchmark.training.config import load_train_config
    from benchmark.training.trainer import train

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    torch.set_num_threads(1)
    cfg = load_train_config(config, target)
    short = {"epochs": 1, "max_steps": 2, "batch_size": 4, "device": "cpu"}
    if cfg.select_labels:  # trained on the normal images only: fewer of the 12
        short["batch_size"] = 2
    if cfg.text_pretrain:
        short["text_pretrain"] = {**cfg.text_pretrain, "steps": 2, "batch_size": 4}
    cfg = dataclasses.replace(cfg, **short)
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary, target
    folder = tmp_path / "run" / "best"
    assert (folder / "model.safetensors").is_file()
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["trainer"]["global_step"] == 2, state["trainer"]

    adapter = build_adapter(_model_of(target))
    adapter.load(str(folder), "cpu")
    colour = cfg.image_flag == 1  # the pathology recipe trains on colour frames and its model reads them
    assert adapter.decode == ("cv2-bgr" if colour else adapter.decode)
    shape = (300, 260, 3) if colour else (300, 260)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    batch = adapter.collate([adapter.preprocess(image)])
    query = Query("There is a right lower lobe opacity.", "Opacity")
    maps = np.asarray(adapter.similarity_map(adapter.encode_images(batch), adapter.encode_texts([query])))
    assert maps.ndim == 3 and len(maps) == 1 and np.isfinite(maps).all()


def test_demo_classifier_recipe_trains_an_epoch_and_runs(small_demo, tmp_path, monkeypatch):
    from baselines.saliency.train import DEMO_RECIPE, train_classifier

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    recipe = {**DEMO_RECIPE, "epochs": 1}
    train_classifier("demo_mimic", None, tmp_path / "run", split="train", resume=False, progress=False, **recipe)
    ckpt = tmp_path / "run" / "classifier.safetensors"
    adapter = build_adapter("gradcam:densenet121")
    adapter.load(str(ckpt), "cpu")
    assert adapter.input_geometry == DEMO_RECIPE["input_geometry"]
    image = np.random.default_rng(0).integers(0, 256, (300, 260), dtype=np.uint8)
    emb = adapter.encode_images(adapter.collate([adapter.preprocess(image)]))
    maps = adapter.similarity_map(emb, adapter.encode_texts([Query("cardiomegaly", "Cardiomegaly")]))
    assert maps.shape[0] == 1 and np.isfinite(maps).all()


@pytest.mark.slow
def test_a_whole_demo_build_matches_the_shipped_one_on_the_same_kind_of_cpu(tmp_path):
    """The MedKLIP demo (the shortest build) from scratch, as the package's was built."""
    from benchmark.records import environment
    from benchmark.training import demo_weights as dw
    from benchmark.training.ship import ship

    wid = next(w for w, (t, _c) in demo_targets().items() if t == "medklip")
    built = ship("medklip", wid, tmp_path)
    record = json.loads((built / dw.BUILD_FILE).read_text())
    shipped = json.loads((dw.shipped_dir(wid) / dw.BUILD_FILE).read_text())
    assert set(record["files"]) == set(shipped["files"])
    adapter = build_adapter("medklip")
    adapter.load(str(built), "cpu")
    if environment("cpu")["cpu_simd"] == shipped["environment"]["cpu_simd"]:
        assert record["files"]["model.safetensors"] == shipped["files"]["model.safetensors"]
