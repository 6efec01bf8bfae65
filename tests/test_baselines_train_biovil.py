"""BioViL on the shared trainer: the objective is the symmetric global InfoNCE of the projected-patch
mean and the projected [CLS] (temperature 0.5), a small run trains, resumes and writes a folder the
``biovil`` adapter loads without options (with the input sizes it was trained on), and the
adapter's default (no checkpoint) is the demo model."""

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
# test-sized input: shorter side 72, centre crop 64 (a 2x2 patch grid on the small trunk)
SMALL_INPUT = {"resize": 72, "crop": 64}


def _demo_cfg(**over):
    """The shipped demo recipe, shrunk for tests (fixture vocabulary, tiny batches and images)."""
    from benchmark.training.config import load_train_config

    cfg = load_train_config("demo", "biovil")
    small = dict(vocab=str(WORDPIECE), batch_size=4, epochs=1, num_workers=0, image_cache="memory", log_every=1,
                 model=dict(SMALL_INPUT))
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
        img[y:y + 15, x:x + 15] = 230
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), img)
        out.append(Pair(str(p), REPORTS[i % len(REPORTS)]))
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the networks here are tiny, and on a shared machine two spinning threads
    are slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run (the second epoch by resume) on 12 synthetic pairs; returns the run folder."""
    from benchmark.training.trainer import train

    root = tmp_path_factory.mktemp("biovil_run")
    tr, va = _pairs(root / "train", 12, 0), _pairs(root / "val", 4, 1)
    out = root / "run"
    first = train(_demo_cfg(epochs=1), out, quiet=True, train_pairs=tr, val_pairs=va)
    second = train(_demo_cfg(epochs=2), out, quiet=True, resume=True, train_pairs=tr, val_pairs=va)
    return {"out": out, "first": first, "second": second, "pairs": tr}


# -- objective ------------------------------------------------------------------------------
def test_loss_terms_equal_the_biovil_formula():
    import torch.nn.functional as F

    from baselines.biovil.task import BiovilTask
    from baselines.common.losses import biovil_global_loss

    task = BiovilTask()
    model, tok = task.build(_demo_cfg())
    assert model.cfg.temperature == 0.5  # BioViL's global-alignment temperature
    model.eval()
    torch.manual_seed(1)
    images = torch.rand(5, 3, 64, 64)
    batch = {"images": images, **tok(REPORTS + ["Normal chest."])}
    with torch.no_grad():
        terms = task.loss_terms(model, batch, torch.autocast("cpu", enabled=False))
        # image side by hand: trunk layer4 → 1x1-conv projector → spatial mean of the projected patches
        projected = model.image.projector(model.image.encoder.encoder(images)[-1])
        v = projected.mean(dim=(2, 3))
        # text side by hand: [CLS] of the last BERT layer → projection head
        h = model.text.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        t = model.text.cls_projection_head(h[:, 0])
    assert float(terms["loss"]) == pytest.approx(float(biovil_global_loss(v, t, temperature=0.5)), rel=1e-5)
    z = F.normalize(v, dim=1) @ F.normalize(t, dim=1).T / 0.5
    target = torch.arange(5)
    by_hand = (F.cross_entropy(z, target) + F.cross_entropy(z.T, target)) / 2
    assert float(terms["loss"]) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(terms["i2t_top1"]) == pytest.approx(float((z.argmax(1) == target).float().mean()))
    row = task.metric_row({k: float(v) for k, v in terms.items()})
    assert row == {"global_loss": float(terms["loss"]), "i2t_top1": float(terms["i2t_top1"])}


def test_demo_model_is_the_small_variant_and_its_config_is_json():
    from baselines.biovil.model import BioViL, BiovilConfig, BioVilImageModel
    from baselines.biovil.task import BiovilTask
    from benchmark.training.config import load_train_config

    demo = load_train_config("demo", "biovil")
    assert (demo.preset, demo.dataset, demo.select_best, demo.max_minutes) == ("demo", "demo_mimic", False, None)
    model, _ = BiovilTask().build(_demo_cfg(model={}))
    cfg = model.cfg
    assert (cfg.vision_arch, cfg.vision_width, cfg.resize, cfg.crop) == ("resnet18", 16, 183, 160)
    assert cfg.text_config["num_hidden_layers"] == 2 and cfg.text_config["hidden_size"] == 64
    assert cfg.text_config["vocab_size"] == len((WORDPIECE / "vocab.txt").read_text().splitlines())
    assert BiovilConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with torch.no_grad():
        patches, glob = model.eval().image(torch.zeros(1, 3, 160, 160))
    assert patches.shape == (1, 5, 5, 128) and glob.shape == (1, 128)  # layer4 of the small trunk
    # the full-size default keeps hi-ml's keys under image.* (the released file loads into BioVilImageModel)
    full = BioViL(BiovilConfig(text_config=json.loads((WORDPIECE / "config.json").read_text())))
    image_keys = {k[len("image."):] for k in full.state_dict() if k.startswith("image.")}
    assert image_keys == set(BioVilImageModel().state_dict())
    assert (BiovilConfig().resize, BiovilConfig().crop) == (512, 480)


def test_paper_config_loads():
    from benchmark.training.config import TrainConfig, load_train_config

    cfg = load_train_config("paper", "biovil")
    assert cfg.task == "biovil" and cfg.preset == "paper" and isinstance(cfg, TrainConfig)
    assert cfg.model.get("temperature", 0.5) == 0.5


def test_training_input_and_tokens_are_the_adapters(tmp_path):
    from baselines.biovil.adapter import BioVilAdapter
    from baselines.biovil.task import BiovilTask
    from benchmark.io.images import read_image

    task = BiovilTask()
    model, tok = task.build(_demo_cfg())
    folder = tmp_path / "ck"
    task.save(model, folder, {})
    a = BioVilAdapter()
    a.load(str(folder), "cpu")
    p = _pairs(tmp_path / "img", 1, 3)[0].image_path
    x = task.image_fn(p)
    assert tuple(x.shape) == (3, 64, 64) and torch.equal(x, a.preprocess(read_image(p, a.decode)))
    assert a.input_geometry == "resize_crop:72:64" and "resize72-crop64" in a.preprocessing_id
    prompts = ["Small left pleural effusion.", "Findings suggesting pneumonia"]
    enc, ref = tok(prompts), a.tokenize(prompts)
    assert torch.equal(enc["input_ids"], ref["input_ids"]) and torch.equal(enc["attention_mask"], ref["attention_mask"])
    assert enc["input_ids"][0, 0] == tok.tokenizer.cls_token_id
    long = tok([" ".join(REPORTS * 20)])  # training captions are cut to the text model's positions
    assert long["input_ids"].shape[1] == model.text.config.max_position_embeddings
    with pytest.raises(ValueError, match="exceeds"):  # prompts are not (hi-ml refuses them)
        a.tokenize([" ".join(REPORTS * 20)])


# -- a run -----------------------------------------------------------------------------------
def test_training_runs_resumes_and_the_adapter_loads_best(trained):
    from safetensors.torch import load_file

    from baselines.biovil.adapter import BioVilAdapter
    from benchmark.io.images import read_image

    out = trained["out"]
    assert trained["first"]["global_step"] == 3 and trained["first"]["epoch"] == 1
    assert trained["second"]["global_step"] == 6 and trained["second"]["epoch"] == 2  # continued from last/
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    head = rows[0]
    assert {"global_loss", "i2t_top1"} <= set(head)
    losses = [float(r[head.index("loss")]) for r in rows[1:]]
    assert len(losses) >= 6 and all(math.isfinite(x) for x in losses)
    assert [r[head.index("step")] for r in rows[1:] if r[head.index("split")] == "train"][:6] == \
        ["1", "2", "3", "4", "5", "6"]
    best = out / "best"
    assert {"model.safetensors", "config.json", "vocab.txt"} <= {f.name for f in best.iterdir()}
    doc = json.loads((best / "config.json").read_text())
    assert doc["format"] == "afloc-bench/biovil" and doc["training"]["epoch"] == 2
    assert (doc["resize"], doc["crop"]) == (72, 64)
    assert (out / "last" / "trainer_state.json").is_file()

    a = BioVilAdapter()  # no text_encoder option: the folder carries its vocabulary
    a.name = "biovil"
    a.load(str(best), "cpu")
    assert a.key_report.ok and not a.key_report.missing and not a.key_report.unexpected
    saved = load_file(str(best / "model.safetensors"))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, saved[f"image.{k}"]), k
    for k, v in a.text_model.state_dict().items():
        assert torch.equal(v, saved[f"text.{k}"]), k
    assert a.input_geometry == "resize_crop:72:64"
    imgs = [read_image(p.image_path, a.decode) for p in trained["pairs"][:2]]
    emb = a.encode_images(a.collate([a.preprocess(i) for i in imgs]))
    maps = np.asarray(a.similarity_map(emb, a.encode_texts(["pleural effusion", "pneumonia"])))
    assert maps.shape == (2, 2, 2) and np.isfinite(maps).all() and np.abs(maps).max() <= 1 + 1e-6
    probs = np.asarray(a.score(emb, a.encode_texts(["effusion", "pneumonia"]), a.encode_texts(["normal", "clear"])))
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()


# -- the adapter's checkpoints ------------------------------------------------------------------
def test_adapter_without_checkpoint_uses_the_demo_model(trained, monkeypatch):
    import benchmark.training.demo_weights as demo
    from baselines.biovil.adapter import BioVilAdapter

    calls = []

    def fake(weights_id, task, quiet=True, config="demo"):
        calls.append(task)
        return trained["out"] / "best"

    monkeypatch.setattr(demo, "ensure_demo_weights", fake)
    assert BioVilAdapter.needs_checkpoint is False
    from benchmark.adapter import build_adapter

    a = build_adapter("biovil")
    a.load(None, "cpu")
    assert calls == ["biovil"] and a.checkpoint == str(trained["out"] / "best")
    assert a.cfg.vision_arch == "resnet18" and a.key_report.ok and a.input_geometry == "resize_crop:72:64"

    b = BioVilAdapter(random_init=True, text_encoder=str(WORDPIECE))  # today's path: the official 512 / 480
    b.load(None, "cpu")
    assert calls == ["biovil"] and b.checkpoint is None
    assert b.input_geometry == "resize_crop:512:480"
    assert b.preprocessing_id == "biovil-minmax-resize512-crop480-nonorm-v1"


def test_wrong_checkpoint_files_are_named(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from baselines.biovil.adapter import BioVilAdapter
    from benchmark.io.checkpoints import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(trained["out"] / "best", bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop("image.projector.model.3.bias")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): image\.projector\.model\.3\.bias.*"
                                              r"unexpected \(1\): extra\.weight"):
        BioVilAdapter().load(str(bad), "cpu")

    other = tmp_path / "other"
    shutil.copytree(trained["out"] / "best", other)
    (other / "config.json").write_text(json.dumps({"format": "afloc-bench/convirt", "proj_dim": 64}))
    with pytest.raises(CheckpointError, match=r"config\.json.*afloc-bench/biovil"):
        BioVilAdapter().load(str(other), "cpu")

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty.*config\.json and model\.safetensors"):
        BioVilAdapter(text_encoder=str(WORDPIECE)).load(str(tmp_path / "empty"), "cpu")


# -- the paper preset ---------------------------------------------------------------------------
def test_paper_preset_loads_cxr_bert_from_its_folder(tmp_path):
    """A stand-in for CXR-BERT: config, vocabulary and weights with the MLM head; the text tower takes
    them (MLM head ignored) and the image tower is hi-ml's ResNet-50 at 512 / 480."""
    import shutil

    from safetensors.torch import save_file

    from baselines.biovil.model import CXRBert
    from baselines.biovil.task import BiovilTask

    folder = tmp_path / "cxr-bert"
    folder.mkdir()
    shutil.copy2(WORDPIECE / "vocab.txt", folder / "vocab.txt")
    cfg = json.loads((WORDPIECE / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(7)
    ref = CXRBert(cfg)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["cls.predictions.bias"] = torch.zeros(cfg["vocab_size"])
    save_file(sd, str(folder / "model.safetensors"))
    task = BiovilTask()
    model, _ = task.build(_demo_cfg(preset="paper", text_encoder=str(folder), vocab=None, pretrained_vision=None,
                                    model={}))
    assert (model.cfg.vision_arch, model.cfg.resize, model.cfg.crop) == (None, 512, 480)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.text.state_dict()[k], v), k
    assert task._sizes == (512, 480)
    with pytest.raises(Exception, match="text_encoder"):
        task.build(_demo_cfg(preset="paper", text_encoder=None, vocab=None, model={}))
