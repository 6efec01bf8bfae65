"""MedKLIP on the shared trainer: CheXpert labels → entity labels, MedKLIP's masked cross-entropy,
a tiny training run with resume, the checkpoint folder the adapter loads, and the adapter's
no-checkpoint default (the demo model)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import one_thread, synthetic_pairs  # noqa: E402,F401  (fixture)

from benchmark.training.config import TrainConfig, load_train_config  # noqa: E402
from benchmark.training.data import Pair  # noqa: E402
from benchmark.training.trainer import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
WORDPIECE = Path(__file__).parent / "fixtures" / "baselines" / "wordpiece"
TINY = {"width": 4, "d_model": 16, "nhead": 2, "num_layers": 2, "dim_feedforward": 32, "input_size": 64,
        "init": "torch"}
COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
           "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
           "Pneumothorax", "Support Devices"]


def _labels(**known) -> dict:
    d = {c: None for c in COLUMNS}
    d.update({k.replace("_", " "): v for k, v in known.items()})
    return d


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(task="medklip", preset="demo", vocab=str(WORDPIECE), model=dict(TINY), pretrained_vision=None,
                batch_size=4, epochs=2, lr=1e-3, betas=(0.9, 0.999), grad_clip=None, num_workers=0, log_every=1,
                device="cpu", select_best=False)
    base.update(kw)
    return TrainConfig(**base)


def labelled_pairs(folder: Path, n: int) -> list[Pair]:
    base = synthetic_pairs(folder, n)
    out = []
    for i, (path, report) in enumerate(base):
        lab = _labels(Lung_Opacity=1.0, Pleural_Effusion=0.0) if i % 2 else _labels(No_Finding=1.0, Edema=-1.0)
        out.append(Pair(path, report, lab))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo-preset run: 2 epochs, then resumed to 3 (shared by the tests below)."""
    torch.set_num_threads(1)  # (module scope: the one_thread fixture has not run yet)
    root = tmp_path_factory.mktemp("medklip_run")
    pairs = labelled_pairs(root / "img", 8)
    kw = dict(quiet=True, train_pairs=pairs, val_pairs=pairs[:4])
    first = train(tiny_cfg(epochs=2), root / "run", **kw)
    resumed = train(tiny_cfg(epochs=3), root / "run", resume=True, **kw)
    return {"root": root, "run": root / "run", "pairs": pairs, "first": first, "resumed": resumed}


# -- labels ------------------------------------------------------------------------------------
def test_chexpert_columns_map_onto_entities_as_documented():
    from baselines.medklip.model import ENTITIES
    from baselines.medklip.task import entity_labels

    lab = entity_labels(_labels(Pleural_Effusion=1.0, Lung_Opacity=0.0, Lung_Lesion=1.0, Support_Devices=0.0,
                                No_Finding=1.0, Pneumothorax=-1.0, Enlarged_Cardiomediastinum=1.0))
    got = {ENTITIES[i]: v for i, v in enumerate(lab) if v != -1}
    assert got == {"effusion": 1, "opacity": 0, "nodule": 1, "mass": 1, "lesion": 1, "device": 0, "tube": 0,
                   "line": 0, "catheter": 0, "normal": 1, "enlarge": 1}  # uncertain pneumothorax and blanks: unknown
    one = {"Pneumonia": "pneumonia", "Cardiomegaly": "cardiomegaly", "Edema": "edema", "Atelectasis": "atelectasis",
           "Consolidation": "consolidation", "Fracture": "fracture", "Pneumothorax": "pneumothorax"}
    for col, ent in one.items():
        lab = entity_labels({col: 1.0})
        assert [ENTITIES[i] for i, v in enumerate(lab) if v == 1] == [ent]
    assert entity_labels(None) == [-1] * 75 and entity_labels({"Pleural Other": 1.0}) == [-1] * 75
    assert entity_labels({"Edema": float("nan")}) == [-1] * 75
    with pytest.raises(ValueError, match="unknown CheXpert column 'Lung opacity'"):
        entity_labels({"Lung opacity": 1.0})
    with pytest.raises(ValueError, match="expected 1.0, 0.0, -1.0 or blank"):
        entity_labels({"Edema": 2.0})


def test_every_demo_label_column_is_understood():
    """The demo's CheXpert table (from OpenI MeSH tags) uses only columns the table maps or skips on purpose."""
    from baselines.medklip.task import CHEXPERT_TO_ENTITIES, UNMAPPED_COLUMNS
    from benchmark.demo.reports import CHEXPERT_COLUMNS, KIND_LABELS

    assert set(CHEXPERT_COLUMNS) == set(CHEXPERT_TO_ENTITIES) | set(UNMAPPED_COLUMNS)
    assert {c for cols in KIND_LABELS.values() for c in cols} <= set(CHEXPERT_TO_ENTITIES)


def test_label_fn_batches_and_refuses_unlabelled_batches():
    from baselines.medklip.task import MedklipTask

    t = MedklipTask.label_fn([_labels(Edema=1.0), None])
    assert t.dtype == torch.long and tuple(t.shape) == (2, 75)
    assert int((t[0] == 1).sum()) == 1 and bool((t[1] == -1).all())
    with pytest.raises(ValueError, match="needs per-study labels"):
        MedklipTask.label_fn([None, None])


# -- loss ----------------------------------------------------------------------------------------
def _tiny_task_model(**kw):
    from benchmark.training.task import get_task

    task = get_task("medklip")
    model, tok = task.build(tiny_cfg(**kw))
    return task, model.eval(), tok


def test_loss_terms_equal_medklips_masked_cross_entropy():
    task, model, _ = _tiny_task_model()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 224, 224, generator=g)
    labels = torch.full((3, 75), -1, dtype=torch.long)
    labels[0, 8], labels[0, 9], labels[1, 0], labels[2, 38], labels[2, 54] = 1, 0, 1, 0, 1
    terms = task.loss_terms(model, {"images": images, "labels": labels}, torch.autocast("cpu", enabled=False))
    with torch.no_grad():
        logits, _ = model.decode(model.image_features(images), model.entity_book)
    # official loss_ce: logits.reshape(-1, 2)[mask], labels[mask]; mask = labels not in (-1, 2)
    flat, y = logits.reshape(-1, 2), labels.reshape(-1)
    cells = [(flat[i], int(y[i])) for i in range(len(y)) if y[i] != -1]
    direct = sum(-torch.log_softmax(lg, 0)[c] for lg, c in cells) / len(cells)
    assert torch.allclose(terms["loss"], direct, atol=1e-6)
    assert math.isclose(float(terms["known_fraction"]), 5 / 225, rel_tol=1e-6)
    assert set(task.metric_row({k: float(v.detach()) for k, v in terms.items()})) == {"loss_ce", "known_fraction"}


def test_loss_without_known_labels_is_zero_and_keeps_the_graph():
    from baselines.medklip.model import entity_ce_loss

    logits = torch.randn(2, 75, 2, requires_grad=True)
    loss = entity_ce_loss(logits, torch.full((2, 75), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_demo_queries_are_the_entity_names_mean_pooled_by_the_frozen_text_encoder():
    from baselines.medklip.model import ENTITIES, cls_embeddings, tokenize_cls_only

    _, model, _ = _tiny_task_model()
    side = model.text_side
    assert all(not p.requires_grad for p in side.bert.parameters())
    enc = tokenize_cls_only(side.tokenizer, [e.replace("_", " ") for e in ENTITIES], 64)
    with torch.no_grad():
        h = side.bert(**enc).last_hidden_state
    m = enc["attention_mask"].clone()
    m[:, 0] = 0  # the word pieces after [CLS]
    mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert torch.allclose(model.entity_book, mean, atol=1e-6)
    assert torch.allclose(cls_embeddings(side.bert, enc, pooling="cls"), h[:, 0])
    assert "entity_book" not in dict(model.named_parameters())  # a buffer: saved, not trained


def test_official_initialisation_and_presets():
    from benchmark.io.checkpoints import CheckpointError

    _, model, _ = _tiny_task_model(model={**TINY, "init": "official"})
    w = model.decoder.layers[0].multihead_attn.in_proj_weight
    assert abs(float(w.detach().std()) - 0.02) < 0.004 and abs(float(model.res_l1.weight.detach().std()) - 0.02) < 0.004
    with pytest.raises(ValueError, match="model.init must be"):
        _tiny_task_model(model={**TINY, "init": "xavier"})
    with pytest.raises(ValueError, match="unknown MedKLIP model options"):
        _tiny_task_model(model={**TINY, "hidden": 3})
    with pytest.raises(CheckpointError, match="text_encoder"):
        _tiny_task_model(preset="paper", model={})
    for spec in ("demo", "paper"):
        cfg = load_train_config(spec, "medklip")
        assert cfg.task == "medklip" and cfg.preset == spec
    assert load_train_config("demo", "medklip").select_best is False


# -- training, resume, checkpoint folder, adapter --------------------------------------------------
def test_training_writes_best_and_last_and_resume_continues(trained):
    import csv

    run = trained["run"]
    assert trained["first"]["global_step"] == 4 and trained["resumed"]["global_step"] == 6
    assert trained["resumed"]["epoch"] == 3 and trained["resumed"]["finished"]
    for which in ("best", "last"):
        assert (run / which / "model.safetensors").is_file() and (run / which / "config.json").is_file()
        assert (run / which / "text_encoder" / "vocab.txt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["step"] for r in rows if r["split"] == "train"] == ["1", "2", "3", "4", "5", "6"]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    doc = json.loads((run / "best" / "config.json").read_text())
    assert doc["format"] == "afloc-bench/medklip" and doc["model"]["entity_book"] is True
    assert doc["text"]["folder"] == "text_encoder" and doc["text"]["pooling"] == "mean"
    assert doc["training"]["global_step"] == 6


def _adapter(**opts):
    from baselines.medklip.adapter import MedKlipAdapter
    from benchmark.adapter import build_adapter

    a = build_adapter("medklip")
    assert isinstance(a, MedKlipAdapter)
    a.options.update(opts)
    return a


def test_adapter_loads_the_trained_folder_and_matches_the_training_input(trained):
    from safetensors.torch import load_file

    from baselines.medklip.adapter import EXTRA
    from baselines.medklip.task import read_input
    from benchmark.io.images import read_image

    a = _adapter()
    a.load(str(trained["run"] / "best"), "cpu")
    assert a.checkpoint_kind == "folder"
    assert a.key_report.ok and not a.key_report.missing and not a.key_report.unexpected
    assert a.text_key_report.ok
    saved = load_file(str(trained["run"] / "best" / "model.safetensors"))
    assert torch.equal(a.entity_book, saved["entity_book"])
    path = trained["pairs"][0].image_path
    img = read_image(path, a.decode)
    assert torch.equal(a.preprocess(img), read_input(path))  # training input == inference input
    batch = a.collate([a.preprocess(read_image(p.image_path, a.decode)) for p in trained["pairs"][:2]])
    emb = a.encode_images(batch)
    prompts = ["Findings suggesting pneumonia.", "a bright round spot"]  # the second is a free-text query
    te = a.encode_texts(prompts)
    assert float(te["weights"][1, EXTRA]) == 1.0
    maps = a.similarity_map(emb, te)
    assert maps.shape == (2, 4, 4) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # attention over the 16 patches
    scores = a.score(emb, a.encode_texts(["Pleural effusion", "Lung opacity"]), None)
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def test_folder_errors_name_the_file_and_the_keys(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from benchmark.io.checkpoints import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(trained["run"] / "best", bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["classifier.bias"]
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): classifier\.bias.*unexpected \(1\): extra\.weight"):
        _adapter().load(str(bad), "cpu")
    doc = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**doc, "format": "afloc-bench/gloria"}))
    with pytest.raises(CheckpointError, match="expected format 'afloc-bench/medklip'"):
        _adapter().load(str(bad / "model.safetensors"), "cpu")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="config.json \\+ model.safetensors"):
        _adapter().load(str(bad), "cpu")


def test_no_checkpoint_means_the_demo_model(trained, monkeypatch):
    import benchmark.training.demo_weights as demo
    from baselines.medklip.adapter import MedKlipAdapter
    from benchmark.io.checkpoints import CheckpointError

    asked = []

    def fake(weights_id, task, quiet=True, config="demo"):
        asked.append(task)
        return trained["run"] / "best"

    monkeypatch.setattr(demo, "ensure_demo_weights", fake)
    assert MedKlipAdapter.needs_checkpoint is False
    a = _adapter()
    a.load(None, "cpu")
    assert asked == ["medklip"] and a.checkpoint == str(trained["run"] / "best") and a.key_report.ok
    # options that name the official model's files ask for its checkpoint instead
    with pytest.raises(CheckpointError, match="checkpoint_final.pth"):
        _adapter(text_encoder=str(WORDPIECE)).load(None, "cpu")
    assert asked == ["medklip"]


def test_paper_preset_uses_the_descriptions_and_the_pretrained_encoder(tmp_path):
    """Preset paper: [CLS] states (max length 128) of the descriptions file through the given text
    encoder; the folder records that encoder instead of copying it, and the adapter finds it there."""
    from safetensors.torch import save_file
    from transformers import BertModel

    from baselines.common.text_folder import bert_config, read_json, wordpiece_tokenizer
    from baselines.medklip.model import ENTITIES, cls_embeddings, tokenize_cls_only
    from baselines.medklip.task import MedklipTask

    enc_dir = tmp_path / "bio_clinical"
    shutil.copytree(WORDPIECE, enc_dir)
    torch.manual_seed(5)
    bert = BertModel(bert_config(read_json(enc_dir / "config.json")), add_pooling_layer=False).eval()
    save_file({f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}, str(enc_dir / "model.safetensors"))
    desc = tmp_path / "observation explanation.json"
    texts = [f"the {e.replace('_', ' ')} finding on the chest radiograph" for e in ENTITIES]
    desc.write_text(json.dumps({("eumonia" if i == 20 else e): t for i, (e, t) in enumerate(zip(ENTITIES, texts))}))
    task = MedklipTask()
    model, tok = task.build(tiny_cfg(preset="paper", text_encoder=str(enc_dir),
                                     model={**TINY, "entity_descriptions": str(desc)}))
    want = cls_embeddings(bert, tokenize_cls_only(wordpiece_tokenizer(enc_dir), texts, 128))
    assert torch.allclose(model.entity_book, want, atol=1e-6)
    assert tok(["no effusion"])["input_ids"].shape[1] == 128
    task.save(model, tmp_path / "ckpt", {})
    doc = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert doc["text"]["folder"] is None and doc["text"]["source"] == str(enc_dir.resolve())
    assert not (tmp_path / "ckpt" / "text_encoder").exists()
    a = _adapter()
    a.load(str(tmp_path / "ckpt"), "cpu")
    assert a.text_key_report.ok and a.text_pooling == "cls"
    with pytest.raises(ValueError, match="entity descriptions"):
        task.build(tiny_cfg(preset="paper", text_encoder=str(enc_dir), model=dict(TINY)))


def test_pretrained_vision_fills_the_trunk_up_to_layer3(tmp_path):
    from safetensors.torch import save_file

    from benchmark.backbones import ResNetBackbone

    torch.manual_seed(9)
    src = ResNetBackbone("resnet18", 4)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "trunk.safetensors"))
    _, model, _ = _tiny_task_model(pretrained_vision=str(tmp_path / "trunk.safetensors"))
    assert torch.equal(model.res_features[0].weight, src.conv1.weight)  # conv1 = res_features.0
    assert torch.equal(model.res_features[6][1].conv2.weight, src.layer3[1].conv2.weight)  # layer3 = .6
