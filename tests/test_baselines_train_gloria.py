"""GLoRIA on the shared trainer: its objective, input, checkpoint folder and the adapter's demo default."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import one_thread, synthetic_pairs, write_vocab  # noqa: E402,F401

from benchmark.adapter import build_adapter
from benchmark.training.config import TrainConfig, load_train_config  # noqa: E402
from benchmark.training.data import Pair  # noqa: E402
from benchmark.training.trainer import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"upsample": 64}  # the demo architecture on a smaller input: fast tests (4x4 local grid)


def tiny_cfg(vocab: Path, **kw) -> TrainConfig:
    base = dict(task="gloria", preset="demo", vocab=str(vocab), pretrained_vision=None, model=dict(SMALL),
                batch_size=4, epochs=1, lr=1e-3, betas=(0.9, 0.999), grad_clip=None, num_workers=0, log_every=1,
                device="cpu", val_split="validate", select_best=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of two epochs on eight synthetic pairs, then one more epoch by --resume."""
    tmp = tmp_path_factory.mktemp("gloria_run")
    vocab = write_vocab(tmp / "vocab")
    pairs = [Pair(p, r) for p, r in synthetic_pairs(tmp / "img", 8)]
    cfg = tiny_cfg(vocab, epochs=2)
    first = train(cfg, tmp / "run", quiet=True, train_pairs=pairs, val_pairs=pairs[:4])
    with (tmp / "run" / "metrics.csv").open() as f:
        rows_first = list(csv.DictReader(f))
    resumed = train(tiny_cfg(vocab, epochs=3), tmp / "run", quiet=True, resume=True, train_pairs=pairs,
                    val_pairs=pairs[:4])
    return {"dir": tmp / "run", "vocab": vocab, "pairs": pairs, "first": first, "resumed": resumed,
            "rows_first": rows_first}


# -- the objective -------------------------------------------------------------------------
def test_loss_terms_equal_the_gloria_formula_with_cls_plus_words(tmp_path):
    from baselines.common.losses import gloria_loss
    from baselines.gloria.model import clean_text
    from baselines.gloria.task import GloriaTask

    task = GloriaTask()
    model, tok = task.build(tiny_cfg(write_vocab(tmp_path)))
    captions = ["There is a left lung opacity.", "The heart size is normal. No pleural effusion is seen",
                "Pneumothorax at the right base", "small"]
    pairs = synthetic_pairs(tmp_path / "img", 4)
    batch = {"images": torch.stack([task.image_fn(p) for p, _ in pairs]), **tok(captions)}
    model.eval()
    with torch.no_grad():
        terms = task.loss_terms(model, batch, torch.autocast(device_type="cpu", enabled=False))

    # cap_lens: [CLS] + the caption's words after the official cleaning ("small" alone is dropped)
    cap = [1 + len(clean_text(c).split()) for c in captions]
    assert cap == [7, 11, 6, 1]  # "pneumothorax" = pneumo + ##thorax: one word
    assert batch["cap_len"].tolist() == cap
    with torch.no_grad():
        img_g, img_l = model.img_encoder(batch["images"])
        words, sent = model.text_encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                         batch["word_index"])
        want, parts = gloria_loss(img_l, img_g, words, sent, cap, temp1=4.0, temp2=5.0, temp3=10.0,
                                  local_weight=1.0, global_weight=1.0)
    assert float(terms["loss"]) == pytest.approx(float(want), rel=1e-5)
    for k in ("local_0", "local_1", "global_0", "global_1"):
        assert float(terms[k]) == pytest.approx(float(parts[k]), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(sum(float(terms[k]) for k in parts), rel=1e-6)
    row = task.metric_row({k: float(v) for k, v in terms.items()})
    assert row["local_loss"] == pytest.approx(float(parts["local_0"] + parts["local_1"]), rel=1e-5)
    # a different temperature gives a different loss: the task reads the model's temperatures
    model.cfg.temp3 = 5.0
    with torch.no_grad():
            assert float(task.loss_terms(model, batch, torch.autocast(device_type="cpu", enabled=False))["loss"]) != \
            pytest.approx(float(want), rel=1e-3)


def test_demo_model_is_small_and_official_default_unchanged(tmp_path):
    from baselines.gloria.model import Gloria, GloriaConfig
    from baselines.gloria.task import GloriaTask

    model, _ = GloriaTask().build(tiny_cfg(write_vocab(tmp_path), model={}))
    c = model.cfg
    assert (c.vision_model, c.vision_width, c.upsample, c.embedding_dim) == ("resnet18", 16, 128, 64)
    assert c.bert["num_hidden_layers"] == 2 and c.bert["intermediate_size"] == 256
    assert model.img_encoder.local_embedder.weight.shape == (64, 64, 1, 1)  # layer3 of resnet18 width 16
    assert model.img_encoder.global_embedder.weight.shape == (64, 128)
    assert GloriaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # the default configuration stays the official ResNet-50 (torchvision) at 299
    d = GloriaConfig()
    assert (d.vision_model, d.upsample) == ("resnet_50", 299)
    with pytest.raises(ValueError, match="resnet_18"):
        Gloria(GloriaConfig(bert={"hidden_size": 8}, vision_model="resnet_18"))


def test_text_norm_leaves_zero_word_slots_zero_with_finite_gradients(tmp_path):
    """The official ``norm`` option divides by each slot's norm: the zero slots after [SEP] must not
    turn into NaN (forward or backward), or training with it diverges at the first step."""
    from baselines.gloria.task import GloriaTask

    model, tok = GloriaTask().build(tiny_cfg(write_vocab(tmp_path), model={**SMALL, "text_norm": True}))
    b = tok(["There is a left lung opacity", "normal heart size"])
    words, sent = model.text_encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["word_index"])
    assert torch.isfinite(words).all() and torch.isfinite(sent).all()
    n = int(b["cap_len"][0])
    np.testing.assert_allclose(words[0, :, :n].norm(dim=0).detach().numpy(), 1.0, rtol=1e-5)
    assert float(words[0, :, n + 1:].detach().abs().max()) == 0.0  # after [CLS], the words and [SEP]
    (words[:, :, :n].sum() + sent.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.text_encoder.parameters() if p.grad is not None)


def test_training_input_and_tokens_are_the_adapters(trained):
    from baselines.gloria.adapter import GloriaAdapter
    from baselines.gloria.task import GloriaTask
    from benchmark.io.images import read_image

    a = GloriaAdapter()
    a.load(str(trained["dir"] / "best"), "cpu")
    task = GloriaTask()
    _, tok = task.build(tiny_cfg(trained["vocab"]))
    path = trained["pairs"][0].image_path
    assert torch.equal(task.image_fn(path), a.preprocess(read_image(path, a.decode)))
    caps = ["There is a left lung opacity. The heart size is normal.", "pneumothorax"]
    mine, theirs = tok(caps), a.tokenize(caps)
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k


# -- the run ---------------------------------------------------------------------------------
def test_a_few_steps_train_resume_and_write_a_loadable_folder(trained):
    run = trained["dir"]
    rows = trained["rows_first"]
    assert list(rows[0]) == ["time", "epoch", "step", "split", "loss", "global_loss", "local_loss", "lr",
                             "samples_per_s"]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert trained["first"]["global_step"] == 4 and trained["resumed"]["global_step"] == 6
    assert trained["resumed"]["epoch"] == 3
    for which in ("best", "last"):
        for f in ("model.safetensors", "config.json", "vocab.txt"):
            assert (run / which / f).is_file(), (which, f)
    doc = json.loads((run / "last" / "config.json").read_text())
    assert doc["format"] == "afloc-bench/gloria" and doc["training"]["global_step"] == 6
    assert doc["model"]["upsample"] == 64 and doc["model"]["vision_model"] == "resnet18"


def test_adapter_loads_the_folder_without_key_differences_and_runs(trained):
    from baselines.gloria.adapter import GloriaAdapter

    for heatmap in ("attention", "dot"):
        a = GloriaAdapter(heatmap=heatmap)
        a.load(str(trained["dir"] / "best"), "cpu")
        rep = a.key_report
        assert rep.ok and not rep.missing and not rep.unexpected and rep.loaded == rep.n_module
        imgs = [np.asarray(torch.rand(90, 120) * 255, dtype=np.uint8) for _ in range(2)]
        emb = a.encode_images(a.collate([a.preprocess(i) for i in imgs]))
        maps = a.similarity_map(emb, a.encode_texts(["Findings suggesting left lung opacity.",
                                                     "Small right pleural effusion"]))
        assert maps.shape == (2, 4, 4) and np.isfinite(maps).all()
        if heatmap == "attention":
            np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        pos = a.concat([a.encode_prompt_ensemble(["left lung opacity"])] * 2)
        neg = a.concat([a.encode_prompt_ensemble(["no lung opacity"])] * 2)
        p = a.score(emb, pos, neg)
        assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


def test_wrong_or_incomplete_folders_are_refused_by_name(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from baselines.gloria.adapter import GloriaAdapter
    from benchmark.io.checkpoints import CheckpointError

    a = GloriaAdapter()
    a.load(str(trained["dir"] / "best" / "model.safetensors"), "cpu")  # the weights file stands for its folder
    assert a.key_report.ok
    other = tmp_path / "afloc_like"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"format": "afloc-bench/model"}))
    with pytest.raises(CheckpointError, match="expected a GLoRIA checkpoint folder"):
        GloriaAdapter().load(str(other), "cpu")
    broken = tmp_path / "broken"
    shutil.copytree(trained["dir"] / "best", broken)
    sd = load_file(str(broken / "model.safetensors"))
    del sd["img_encoder.local_embedder.weight"]
    sd["img_encoder.model.fc.weight"] = torch.zeros(2, 2)
    save_file(sd, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        GloriaAdapter().load(str(broken), "cpu")
    assert "img_encoder.local_embedder.weight" in str(err.value) and "img_encoder.model.fc.weight" in str(err.value)


# -- the adapter's default -----------------------------------------------------------------------
def test_no_checkpoint_means_the_demo_model(trained, monkeypatch):
    import benchmark.training.demo_weights as demo
    from baselines.gloria.adapter import GloriaAdapter

    calls = []

    def fake(weights_id, task, quiet=True, config="demo"):
        calls.append(task)
        return trained["dir"] / "best"

    monkeypatch.setattr(demo, "ensure_demo_weights", fake)
    assert GloriaAdapter.needs_checkpoint is False
    a = build_adapter("gloria_dot")
    a.load(None, "cpu")
    assert calls == ["gloria"] and a.checkpoint == str(trained["dir"] / "best") and a.key_report.ok
    # random_init keeps building the official structure from the text-encoder folder, never the demo
    from benchmark.io.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="text_encoder"):
        GloriaAdapter(random_init=True).load(None, "cpu")
    assert calls == ["gloria"]


# -- the configs ---------------------------------------------------------------------------------
def test_shipped_configs():
    demo = load_train_config("demo", "gloria")
    assert (demo.task, demo.preset, demo.dataset, demo.max_minutes, demo.select_best) == \
        ("gloria", "demo", "demo_mimic", None, False)
    paper = load_train_config("paper", "gloria")
    assert (paper.preset, paper.lr, paper.batch_size, paper.betas, paper.weight_decay, paper.grad_clip) == \
        ("paper", 5e-5, 48, (0.5, 0.999), 1e-6, 0.25)


def test_paper_preset_needs_the_text_encoder_folder():
    from baselines.gloria.task import GloriaTask
    from benchmark.io.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="text_encoder"):
        GloriaTask().build(load_train_config("paper", "gloria"))


def test_paper_preset_takes_bert_weights_and_vision_init_from_local_files(tmp_path):
    """The official structure (ResNet-50 + BERT) with the text encoder's published weights (``bert.``
    prefix, MLM head left out) and a local ResNet-50 state dict for ``pretrained_vision``."""
    import shutil

    from torchvision.models import resnet50
    from transformers import BertConfig, BertForMaskedLM

    from baselines.gloria.task import GloriaTask

    fix = Path(__file__).parent / "fixtures" / "baselines" / "wordpiece"
    folder = tmp_path / "bert"
    shutil.copytree(fix, folder)
    cfg = json.loads((fix / "config.json").read_text())
    torch.manual_seed(5)
    mlm = BertForMaskedLM(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    published = {k: v.contiguous() for k, v in mlm.state_dict().items()}
    assert any(k.startswith("cls.") for k in published) and all(k.startswith(("bert.", "cls.")) for k in published)
    torch.save(published, folder / "pytorch_model.bin")  # as published (tied MLM decoder: not safetensors)
    torch.manual_seed(6)
    vision = resnet50(weights=None).state_dict()
    torch.save(vision, tmp_path / "resnet50.pt")
    model, tok = GloriaTask().build(TrainConfig(task="gloria", preset="paper", text_encoder=str(folder),
                                                pretrained_vision=str(tmp_path / "resnet50.pt")))
    assert model.cfg.vision_model == "resnet_50" and model.cfg.upsample == 299 and model.cfg.embedding_dim == 32
    bert = model.text_encoder.model.state_dict()
    assert torch.equal(bert["encoder.layer.3.output.dense.weight"],
                       published["bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(model.img_encoder.model.state_dict()["layer4.2.conv3.weight"], vision["layer4.2.conv3.weight"])
    assert tok(["left pleural effusion"])["input_ids"].shape == (1, 97)
