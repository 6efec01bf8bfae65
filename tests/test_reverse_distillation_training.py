"""ReContrast (``recontrast``) and RD++ (``rdpp``) on the shared trainer: the normal-image selection
(``select_labels``), a few demo training steps whose checkpoint folder the adapters load (and whose
weights decide the maps), and the paper recipes' network and optimiser groups, built without weights."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from benchmark.adapter import Query, build_adapter
from benchmark.training.config import TrainConfig, load_train_config

TASKS = ("recontrast", "rdpp")
NORMAL = {"No Finding": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: small convolutions gain nothing from more, and a busy machine costs them much."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from benchmark.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, n_train=12, n_test=4, datasets=["mimic_cxr"], progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    """Each task's demo recipe run for two steps on the small demo set: ``{task: run folder}``."""
    from benchmark.training.trainer import train

    mp = pytest.MonkeyPatch()
    mp.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    runs = {}
    try:
        for task in TASKS:
            cfg = dataclasses.replace(load_train_config("demo", task), epochs=2, max_steps=2, batch_size=4,
                                      device="cpu")
            runs[task] = tmp_path_factory.mktemp(task) / "run"
            train(cfg, runs[task], quiet=True)
    finally:
        mp.undo()
    return runs


def _demo_pairs(small_demo, monkeypatch):
    from benchmark.training.data import dataset_pairs

    monkeypatch.setenv("AFLOC_BENCH_DEMO", str(small_demo))
    return dataset_pairs("demo_mimic", "train")[0]


def _normal_paths(pairs) -> list[str]:
    return [str(p.image_path) for p in pairs if (p.labels or {}).get("No Finding") == 1.0]


# -- the normal-image selection ------------------------------------------------------------------------------
def test_select_labels_keeps_exactly_the_no_finding_pairs(small_demo, monkeypatch):
    from benchmark.training.data import select_pairs

    pairs = _demo_pairs(small_demo, monkeypatch)
    normal = _normal_paths(pairs)
    assert 0 < len(normal) < len(pairs)  # the set has abnormal studies: without the filter they are trained on
    kept, counts = select_pairs(pairs, NORMAL)
    assert [str(p.image_path) for p in kept] == normal
    assert counts["n_selected"] == len(normal) and counts["n_not_selected"] == len(pairs) - len(normal)
    assert all(p.labels["No Finding"] == 1.0 for p in kept)
    unlabelled = [dataclasses.replace(pairs[0], labels=None)]
    assert select_pairs(unlabelled, NORMAL)[0] == []  # no label table: nothing counts as normal


def test_select_labels_option_is_checked():
    assert TrainConfig.from_mapping({"select_labels": {"No Finding": "1"}}).select_labels == {"No Finding": 1.0}
    for bad in ({}, ["No Finding"], {"No Finding": "yes"}):
        with pytest.raises(ValueError, match="select_labels"):
            TrainConfig.from_mapping({"select_labels": bad})
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig.from_mapping({"optimizer": "sgd"})


def test_image_only_tasks_keep_images_whose_report_has_no_usable_sentence():
    from benchmark.training.data import Pair, PretrainingData
    from benchmark.training.task import get_task

    pairs = [Pair("a.png", "Normal.", {"No Finding": 1.0}), Pair("b.png", "No acute process.", {"No Finding": 1.0})]
    task = get_task("recontrast")
    assert task.uses_captions is False
    kw = dict(image_fn=task.image_fn)
    assert len(PretrainingData(pairs, None, **kw)) == 1  # a text objective drops the one-word report
    data = PretrainingData(pairs, None, captions=False, **kw)
    assert len(data) == 2 and data.caption(0, 0) == ""


@pytest.mark.parametrize("task", TASKS)
def test_the_recipes_train_on_normal_images(task):
    for spec in ("paper", "demo"):
        assert load_train_config(spec, task).select_labels == {"No Finding": 1.0}


# -- demo training, checkpoint folder, adapter --------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_demo_run_trains_on_the_normal_pairs_only(task, trained, small_demo, monkeypatch):
    run = trained[task]
    doc = json.loads((run / "train_config.json").read_text())
    normal = _normal_paths(_demo_pairs(small_demo, monkeypatch))
    assert doc["train_data"]["n_pairs"] == doc["train_data"]["n_selected"] == len(normal)
    assert doc["train_data"]["n_not_selected"] == 12 - len(normal)
    assert doc["model"]["width"] == 8 and doc["model"]["image_size"] == 128
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["trainer"]["global_step"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 3 and all(np.isfinite(float(r.split(",")[4])) for r in rows[1:])


def _maps(task: str, folder, images) -> tuple[np.ndarray, object]:
    adapter = build_adapter(task)
    adapter.load(str(folder), "cpu")
    batch = adapter.collate([adapter.preprocess(i) for i in images])
    emb = adapter.encode_images(batch)
    maps = np.asarray(adapter.similarity_map(emb, adapter.encode_texts([Query("Small left pleural effusion", None)])))
    return maps, adapter


@pytest.mark.parametrize("task", TASKS)
def test_the_adapter_loads_the_folder_and_its_weights_decide_the_map(task, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 260), dtype=np.uint8), rng.integers(0, 256, (200, 240), dtype=np.uint8)]
    folder = trained[task] / "best"
    assert json.loads((folder / "config.json").read_text())["format"] == f"afloc-bench/{task}"
    maps, adapter = _maps(task, folder, images)
    assert maps.shape == (2, 128, 128) and np.isfinite(maps).all()  # the folder's image_size
    assert adapter.input_geometry == "resize:128x128"
    report = adapter.describe()["key_report"]
    assert report["n_module"] == report["n_file"] and not report["missing"] and not report["unexpected"]
    assert np.allclose(maps, _maps(task, folder / "model.safetensors", images)[0])  # the weights file names it too

    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    sd = load_file(str(changed / "model.safetensors"))
    key = "decoder.layer3.0.conv3.weight"
    sd[key] = sd[key] + 0.5 * torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(1))
    save_file(sd, str(changed / "model.safetensors"))
    assert not np.allclose(maps, _maps(task, changed, images)[0])


@pytest.mark.parametrize("task", TASKS)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(task):
    from benchmark.training.task import get_task

    t = get_task(task)
    model, tok = t.build(load_train_config("demo", task))
    assert set(tok(["a", "b"])) == {"attention_mask"}  # no text model: the captions are ignored
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same RD++ noise and transport permutation each time
        return t.loss_terms(model, {"images": x}, contextlib.nullcontext())["loss"]

    before = float(loss().detach())
    for step in range(3):
        t.global_step = step
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < before


# -- the paper recipes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, n_keys, rates", [
    ("recontrast", 864, {2e-3: ("bottleneck.", "decoder."), 1e-5: ("encoder.",)}),
    ("rdpp", 618, {5e-3: ("bn.", "decoder."), 1e-3: ("proj.",)}),
])
def test_paper_recipe_builds_the_official_network(task, n_keys, rates, tmp_path, monkeypatch):
    """On the meta device (no weights drawn, nothing downloaded): the official key set, and one optimiser
    group per official learning rate with exactly the parts the official optimisers update."""
    from benchmark.training.task import get_task
    from benchmark.training.trainer import param_groups

    cfg = load_train_config("paper", task)
    assert (cfg.dataset, cfg.amp, cfg.pretrained_vision) == ("mimic_cxr", "off", "imagenet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no ImageNet file there: refused, not downloaded
    with torch.device("meta"), pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        get_task(task).build(cfg)
    with torch.device("meta"):
        model, _ = get_task(task).build(dataclasses.replace(cfg, pretrained_vision=None))
    assert model.cfg.official and model.cfg.image_size == 256
    assert len(model.state_dict()) == n_keys
    with torch.device("meta"):
        adapter_net = type(model)()  # what the adapter builds for an official checkpoint
    assert list(model.state_dict()) == list(adapter_net.state_dict())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, cfg.lr, cfg.lr_by_prefix)
    assert {g["lr"] for g in groups} == set(rates)
    for g in groups:
        assert all(names[id(p)].startswith(rates[g["lr"]]) for p in g["params"])
    trained = sum(len(g["params"]) for g in groups)
    assert trained == sum(1 for n, p in model.named_parameters() if n.startswith(sum(rates.values(), ())))
