"""ConVIRT on the shared trainer: the objective is ViLMedic's/the paper's formula, a small run trains,
resumes and writes a folder the ``convirt`` adapter loads without options, and the adapter's
default (no checkpoint) is the demo model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

FIX = Path(__file__).parent / "fixtures" / "baselines"
WORDPIECE = FIX / "wordpiece"
REPORTS = [
    "There is a small left pleural effusion. The heart size is normal. No pneumothorax.",
    "Right lower lobe consolidation concerning for pneumonia. No effusion.",
    "The lungs are clear. No acute cardiopulmonary process.",
    "Mild cardiomegaly. Small bilateral effusions. Atelectasis at the left base.",
]


def _demo_cfg(**over):
    """The shipped demo recipe, shrunk for tests (fixture vocabulary, tiny batches)."""
    from benchmark.training.config import load_train_config

    cfg = load_train_config("demo", "convirt")
    small = dict(vocab=str(WORDPIECE), batch_size=4, epochs=1, num_workers=0, image_cache="memory", log_every=1)
    for k, v in {**small, **over}.items():
        setattr(cfg, k, v)
    return cfg


def _pairs(folder: Path, n: int, seed: int):
    import cv2

    from benchmark.training.data import Pair

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (96, 80) if i % 2 else (80, 96)
        img = (rng.random((h, w)) * 120).astype(np.uint8)
        y, x = rng.integers(10, 60, size=2)
        img[y:y + 15, x:x + 15] = 230  # a bright "lesion" so pairs differ
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), img)
        out.append(Pair(str(p), REPORTS[i % len(REPORTS)]))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run (the second epoch by --resume) on 12 synthetic pairs; returns the run folder."""
    from benchmark.training.trainer import train

    root = tmp_path_factory.mktemp("convirt_run")
    tr, va = _pairs(root / "train", 12, 0), _pairs(root / "val", 4, 1)
    out = root / "run"
    first = train(_demo_cfg(epochs=1), out, quiet=True, train_pairs=tr, val_pairs=va)
    second = train(_demo_cfg(epochs=2), out, quiet=True, resume=True, train_pairs=tr, val_pairs=va)
    return {"out": out, "first": first, "second": second, "pairs": tr}


# -- objective ------------------------------------------------------------------------------
def test_loss_terms_equal_the_convirt_formula():
    import torch.nn.functional as F

    from baselines.convirt.task import ConvirtTask

    task = ConvirtTask()
    model, tok = task.build(_demo_cfg())
    model.eval()
    torch.manual_seed(1)
    images = torch.randn(5, 3, 224, 224)
    batch = {"images": images, **tok(REPORTS + ["Normal chest."])}
    with torch.no_grad():
        terms = task.loss_terms(model, batch, torch.autocast("cpu", enabled=False))

    with torch.no_grad():
        # image side by hand: ResNet-18 trunk → layer4 → average pool → vis_proj
        grid = model.visual.model(images)[-1]
        v = model.vis_proj(grid.mean(dim=(2, 3)))
        # text side by hand: BERT last layer → mean over real tokens → lin_proj
        ids, mask = batch["input_ids"], batch["attention_mask"]
        h = model.linguistic.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        u = model.lin_proj((h * m).sum(1) / m.sum(1))
    sim = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T / 0.1  # [text i, image k]
    target = torch.arange(5)
    l_img = F.cross_entropy(sim.T, target, reduction="none")  # image → texts
    l_txt = F.cross_entropy(sim, target, reduction="none")  # text → images
    assert float(terms["loss"]) == pytest.approx(float((0.75 * l_img + 0.25 * l_txt).mean()), rel=1e-5)
    assert float(terms["image_text_loss"]) == pytest.approx(float(l_img.mean()), rel=1e-5)
    assert float(terms["text_image_loss"]) == pytest.approx(float(l_txt.mean()), rel=1e-5)
    assert task.metric_row({k: float(v) for k, v in terms.items()}) == {
        "image_text_loss": float(terms["image_text_loss"]), "text_image_loss": float(terms["text_image_loss"])}


def test_demo_model_is_the_small_variant_and_its_config_is_json():
    from baselines.convirt.model import ConvirtConfig
    from baselines.convirt.task import ConvirtTask

    model, _ = ConvirtTask().build(_demo_cfg())
    cfg = model.cfg
    assert (cfg.vision_arch, cfg.vision_width, cfg.visual_dim) == ("resnet18", 16, 128)
    assert cfg.text_config["num_hidden_layers"] == 2 and cfg.text_config["hidden_size"] == 64
    assert cfg.text_config["vocab_size"] == len((WORDPIECE / "vocab.txt").read_text().splitlines())
    assert ConvirtConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    _, dense = model.encode_image(torch.zeros(1, 3, 224, 224))
    assert dense.shape == (1, 7, 7, cfg.proj_dim)  # layer4 of the small trunk
    assert ConvirtConfig().vision_arch is None  # default: ViLMedic's ResNet-50 layout (keys test)


def test_training_input_and_tokens_are_the_adapters(tmp_path):
    from baselines.convirt.adapter import ConvirtAdapter
    from baselines.convirt.task import ConvirtTask
    from benchmark.io.images import read_image

    task = ConvirtTask()
    model, tok = task.build(_demo_cfg())
    folder = tmp_path / "ck"
    task.save(model, folder, {})
    a = ConvirtAdapter()
    a.load(str(folder), "cpu")
    p = _pairs(tmp_path / "img", 1, 3)[0].image_path
    assert torch.equal(task.image_fn(p), a.preprocess(read_image(p, a.decode)))
    enc, ref = tok(REPORTS), a.tokenize(REPORTS)
    assert torch.equal(enc["input_ids"], ref["input_ids"]) and torch.equal(enc["attention_mask"], ref["attention_mask"])
    assert enc["input_ids"][0, 0] == tok.tokenizer.cls_token_id  # [CLS] ... [SEP] as BERT was built for


# -- a run -----------------------------------------------------------------------------------
def test_training_runs_resumes_and_the_adapter_loads_best(trained):
    from safetensors.torch import load_file

    from baselines.convirt.adapter import ConvirtAdapter

    out = trained["out"]
    assert trained["first"]["global_step"] == 3 and trained["first"]["epoch"] == 1
    assert trained["second"]["global_step"] == 6 and trained["second"]["epoch"] == 2  # continued from last/
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    head = rows[0]
    assert {"image_text_loss", "text_image_loss"} <= set(head)
    losses = [float(r[head.index("loss")]) for r in rows[1:]]
    assert len(losses) >= 6 and all(math.isfinite(x) for x in losses)
    assert [r[head.index("step")] for r in rows[1:] if r[head.index("split")] == "train"][:6] == \
        ["1", "2", "3", "4", "5", "6"]
    best = out / "best"
    assert {"model.safetensors", "config.json", "vocab.txt"} <= {f.name for f in best.iterdir()}
    assert json.loads((best / "config.json").read_text())["training"]["epoch"] == 2

    a = ConvirtAdapter()  # no text_encoder option: the folder carries its vocabulary
    a.name = "convirt"
    a.load(str(best), "cpu")
    assert a.key_report.ok and not a.key_report.missing and not a.key_report.unexpected
    saved = load_file(str(best / "model.safetensors"))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    from benchmark.io.images import read_image

    imgs = [read_image(p.image_path, a.decode) for p in trained["pairs"][:2]]
    emb = a.encode_images(a.collate([a.preprocess(i) for i in imgs]))
    maps = np.asarray(a.similarity_map(emb, a.encode_texts(["pleural effusion", "pneumonia"])))
    assert maps.shape == (2, 7, 7) and np.isfinite(maps).all()
    probs = np.asarray(a.score(emb, a.encode_texts(["effusion", "pneumonia"]), a.encode_texts(["normal", "clear"])))
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()


def test_resume_refuses_a_run_of_another_task(trained, tmp_path):
    from benchmark.io.checkpoints import CheckpointError
    from benchmark.training.trainer import train

    out = tmp_path / "other"
    (out / "last").mkdir(parents=True)
    (out / "last" / "trainer_state.json").write_text(json.dumps({"train_config": {"task": "gloria"}}))
    with pytest.raises(CheckpointError, match="gloria"):
        train(_demo_cfg(), out, quiet=True, resume=True, train_pairs=trained["pairs"], val_pairs=[])


# -- the adapter's checkpoints ------------------------------------------------------------------
def test_adapter_without_checkpoint_uses_the_demo_model(trained, monkeypatch):
    import benchmark.training.demo_weights as demo
    from baselines.convirt.adapter import ConvirtAdapter

    calls = []

    def fake(weights_id, task, quiet=True, config="demo"):
        calls.append(task)
        return trained["out"] / "best"

    monkeypatch.setattr(demo, "ensure_demo_weights", fake)
    assert ConvirtAdapter.needs_checkpoint is False
    from benchmark.adapter import build_adapter

    a = build_adapter("convirt")
    a.load(None, "cpu")
    assert calls == ["convirt"] and a.checkpoint == str(trained["out"] / "best")
    assert a.cfg.vision_arch == "resnet18" and a.key_report.ok

    b = ConvirtAdapter(random_init=True, text_encoder=str(WORDPIECE), proj_dim=16)  # today's test path
    b.load(None, "cpu")
    assert calls == ["convirt"] and b.cfg.vision_arch is None and b.checkpoint is None


def test_wrong_checkpoint_files_are_named(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from baselines.convirt.adapter import ConvirtAdapter
    from benchmark.io.checkpoints import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(trained["out"] / "best", bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop("vis_proj.2.bias")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): vis_proj\.2\.bias.*unexpected \(1\): extra\.weight"):
        ConvirtAdapter().load(str(bad), "cpu")

    other = tmp_path / "other"
    shutil.copytree(trained["out"] / "best", other)
    (other / "config.json").write_text(json.dumps({"format": "afloc-bench/gloria", "model": {}}))
    with pytest.raises(CheckpointError, match=r"config\.json.*afloc-bench/convirt"):
        ConvirtAdapter().load(str(other), "cpu")

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        ConvirtAdapter(text_encoder=str(WORDPIECE)).load(str(tmp_path / "empty"), "cpu")


# -- the paper preset ---------------------------------------------------------------------------
def _bert_folder(tmp: Path, layers: int = 7) -> tuple[Path, dict]:
    """A stand-in for Bio_ClinicalBERT: config, vocabulary and ``bert.``-prefixed MLM weights."""
    import shutil

    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    folder = tmp / "bert"
    folder.mkdir()
    shutil.copy2(WORDPIECE / "vocab.txt", folder / "vocab.txt")
    cfg = json.loads((WORDPIECE / "config.json").read_text())
    cfg.update(num_hidden_layers=layers, hidden_size=16, intermediate_size=32)
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(5)
    ref = BertModel(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    sd = {f"bert.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    sd["cls.predictions.bias"] = torch.zeros(cfg["vocab_size"])
    save_file(sd, str(folder / "model.safetensors"))
    return folder, ref.state_dict()


def test_paper_preset_loads_the_text_encoder_freezes_six_layers_and_imagenet_file(tmp_path):
    from torchvision.models import resnet50

    from baselines.convirt.task import ConvirtTask
    from benchmark.training.config import load_train_config

    folder, bert_sd = _bert_folder(tmp_path)
    torch.manual_seed(2)
    tv = resnet50(weights=None).state_dict()
    torch.save(tv, tmp_path / "resnet50.pth")
    cfg = load_train_config("paper", "convirt")
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.pretrained_vision) == (1e-4, 1e-6, 32, "imagenet")
    cfg.text_encoder, cfg.pretrained_vision = str(folder), str(tmp_path / "resnet50.pth")
    model, tok = ConvirtTask().build(cfg)
    model.eval()  # the stand-in config has dropout
    c = model.cfg
    assert (c.proj_dim, c.pooling, c.text_frozen_layers, c.vision_arch, c.tau, c.lambda_) == \
        (512, "max", 6, None, 0.1, 0.75)
    enc = model.linguistic.encoder
    for k, v in enc.state_dict().items():
        if k in bert_sd:
            assert torch.equal(v, bert_sd[k]), k
    frozen = {n.split(".")[0] + "." + n.split(".")[2] if n.startswith("encoder.") else n.split(".")[0]
              for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == {"embeddings"} | {f"encoder.{i}" for i in range(6)}
    assert all(p.requires_grad for p in enc.encoder.layer[6].parameters())
    assert torch.equal(model.visual.model[0].weight, tv["conv1.weight"])
    assert torch.equal(model.visual.model[7][2].conv3.weight, tv["layer4.2.conv3.weight"])
    assert "visual.model.0.weight" in model.state_dict()  # ViLMedic's key layout

    # max pooling over the real tokens of the last layer
    b = tok(REPORTS[:2])
    with torch.no_grad():
        h = enc(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        pooled = model.linguistic(b["input_ids"], b["attention_mask"])
    n = int(b["attention_mask"][1].sum())
    assert torch.allclose(pooled[1], h[1, :n].max(dim=0).values)


def test_paper_preset_needs_the_text_encoder_folder():
    from baselines.convirt.task import ConvirtTask
    from benchmark.io.checkpoints import CheckpointError
    from benchmark.training.config import load_train_config

    with pytest.raises(CheckpointError, match="text_encoder.*Bio_ClinicalBERT"):
        ConvirtTask().build(load_train_config("paper", "convirt"))
