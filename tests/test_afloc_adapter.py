"""The ``afloc`` adapter: registration, official preprocessing, raw grids, zero-shot scores, prompts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    tiny_model,
)

from afloc.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FIX = Path(__file__).parent / "fixtures" / "afloc" / "tiny_model"


def test_registered_and_listed_without_importing_the_adapter():
    code = ("import sys; from benchmark.registry import models; e = models.entry('afloc'); "
            "print(e.tags, e.capabilities, 'afloc.adapter' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('vlp',) ('grounding', 'zeroshot_cls') False False"


@pytest.fixture(scope="module")
def adapter():
    from afloc.adapter import AFLocAdapter

    ad = AFLocAdapter()
    ad.load(str(FIX), "cpu")
    return ad


def test_preprocess_is_the_official_letterbox_and_half_normalisation(adapter):
    from benchmark.geometry.frames import letterbox_array
    img = (np.arange(50 * 80) % 251).astype(np.uint8).reshape(50, 80)
    x = adapter.preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    frame = letterbox_array(img, 224)
    assert torch.equal(x[0], (torch.from_numpy(frame).float() / 255 - 0.5) / 0.5)
    assert torch.equal(x[0], x[2])
    assert x[0, 0, 0] == -1.0  # zero padding maps to -1
    assert adapter.input_geometry == "letterbox:224"


def test_similarity_map_is_the_raw_dot_product_grid(adapter):
    imgs = [np.full((64, 64), v, np.uint8) for v in (30, 200)]
    emb = adapter.encode_images(adapter.collate([adapter.preprocess(i) for i in imgs]))
    txt = adapter.encode_texts(["left pleural effusion", "right lung opacity"])
    maps = adapter.similarity_map(emb, txt)
    assert maps.shape == (2, 19, 19) and maps.dtype == np.float32
    deep = emb["deep"]
    want = (deep[1].reshape(deep.shape[1], -1).T @ txt[1]).reshape(19, 19)
    np.testing.assert_allclose(maps[1], want.numpy(), rtol=1e-5, atol=1e-6)


def test_one_word_prompt_is_the_empty_prompt(adapter):
    a = adapter.encode_texts(["cardiomegaly", "", "Pneumothorax."])
    torch.testing.assert_close(a[0], a[1])
    torch.testing.assert_close(a[2], a[1])


def test_score_is_the_softmax_over_the_positive_negative_pair(adapter):
    emb = adapter.encode_images(adapter.collate([adapter.preprocess(np.full((40, 40), 90, np.uint8))]))
    pos = adapter.encode_prompt_ensemble(["small left pleural effusion", "left pleural effusion"])
    neg = adapter.encode_prompt_ensemble(["no pleural effusion. "])
    p = adapter.score(emb, pos, neg)
    g = emb["global"][0]
    want = torch.sigmoid(g @ pos[0] - g @ neg[0])
    assert p.shape == (1,) and abs(float(p[0]) - float(want)) < 1e-6


def test_resize_crop_option_and_bad_option(tmp_path):
    from afloc.adapter import AFLocAdapter

    ad = AFLocAdapter(geometry="resize_crop")
    ad.load(str(FIX), "cpu")
    assert ad.input_geometry == "resize_crop:224:224" and ad.preprocessing_id != AFLocAdapter.preprocessing_id
    assert ad.preprocess(np.zeros((300, 200), np.uint8)).shape == (3, 224, 224)
    bad = AFLocAdapter(geometry="stretch")
    with pytest.raises(ValueError, match="geometry"):
        bad.load(str(FIX), "cpu")


def test_adapter_loads_a_freshly_saved_training_folder(tmp_path):
    from afloc.adapter import AFLocAdapter

    model = tiny_model(tmp_path / "tok", seed=3, upsample=None)
    folder = save_checkpoint(tmp_path / "ck", model)
    ad = AFLocAdapter()
    ad.load(str(folder), "cpu")
    emb = ad.encode_images(ad.collate([ad.preprocess(np.zeros((50, 50), np.uint8))]))
    assert ad.similarity_map(emb, ad.encode_texts(["left effusion"])).shape == (1, 14, 14)
    assert ad.checkpoint == str(folder)


def test_classification_prompts_follow_the_official_tables():
    from benchmark.dataset import DatasetCard
    from benchmark.datasets.common import load_card, load_prompts
    from benchmark.prompts import classification_prompts

    card = {n: load_card(n) for n in ("rsna_pneumonia", "siim_pneumothorax", "nih_bbox", "chexlocalize", "covid_rural",
                                      "ms_cxr", "sicapv2")}
    pos, neg = classification_prompts(card["rsna_pneumonia"], "Pneumonia")
    assert len(pos) == 6 * 1 * 9 and pos[0] == "Pneumonia: pneumonia at the right lower lobe"
    assert neg == ["no Pneumonia. "]
    pos, neg = classification_prompts(card["siim_pneumothorax"], "Pneumothorax")
    assert len(pos) == 42 and pos[1] == "Pneumothorax: pneumothorax left"
    assert classification_prompts(card["nih_bbox"], "Pleural Effusion")[0][0] == \
        "effusion:small bilateral pleural effusion left"
    assert classification_prompts(card["chexlocalize"], "Pleural Effusion")[0][0] == \
        "Pleural Effusion: bilateral pleural effusion right"
    assert classification_prompts(card["covid_rural"], "COVID-19") == (["Findings suggesting covid-19"],
                                                                       ["no COVID-19. "])
    assert classification_prompts(card["ms_cxr"], "No Finding") == (["No finding"], ["finding"])
    assert classification_prompts(card["sicapv2"], "Gleason Pattern 3") == \
        (["presence of prostate cancer, gleason pattern 3."], ["no G3. "])
    # the card decides, never the dataset's name: a new RSNA-like set gets the generic table and no spelling
    assert len(classification_prompts(DatasetCard(name="rsna_v2"), "Atelectasis")[0]) == 3 * 7 * 10
    assert classification_prompts(DatasetCard(name="nih_like"), "Pleural Effusion")[0][0].startswith(
        "Pleural Effusion:")
    assert load_prompts("covid_rural").render("simple") == "Findings suggesting pneumonia."


def test_afloc_untrained_is_the_demo_training_start(tmp_path, monkeypatch):
    """The control holds exactly the seed weights the demo trainer builds (same preset, vocabulary,
    seed and build path) before any step, its masked-LM steps included, gives the demo model's
    12x12 grid, has a cache identity of its own, and refuses a checkpoint."""
    from test_afloc_kit import synthetic_pairs

    from afloc.adapter import UntrainedAFLocAdapter
    from afloc.tokenizer import Tokenizer
    from benchmark.demo.vocab import ensure_demo_vocab
    from benchmark.registry import models
    from benchmark.training.config import load_train_config
    from benchmark.training.trainer import Trainer

    monkeypatch.setenv("AFLOC_BENCH_CACHE", str(tmp_path / "cache"))
    assert "control" in models.entry("afloc_untrained").tags and "afloc_untrained" not in models.resolve("sanity")
    ad = UntrainedAFLocAdapter()
    ad.load(None, "cpu")
    cfg = load_train_config("demo")
    assert cfg.text_pretrain  # the demo's first training steps; the control is the model before them
    cfg.device, cfg.text_pretrain = "cpu", None
    pairs = synthetic_pairs(tmp_path / "img", cfg.batch_size)
    trainer = Trainer(cfg, tmp_path / "run", quiet=True, train_pairs=pairs, val_pairs=pairs,
                      tokenizer=Tokenizer.from_path(ensure_demo_vocab()))
    trainer.setup()
    start, ours = trainer.model.state_dict(), ad.engine.model.state_dict()
    assert start.keys() == ours.keys() and all(torch.equal(start[k], ours[k]) for k in start)
    emb = ad.encode_images(ad.collate([ad.preprocess(np.zeros((64, 80), np.uint8))]))
    assert ad.similarity_map(emb, ad.encode_texts(["right lower lobe opacity"])).shape == (1, 12, 12)
    # its cache identity follows the recipe's model: same weights and configuration, same
    # fingerprint; another input size (no parameter changes) gives another one
    again = UntrainedAFLocAdapter()
    again.load(None, "cpu")
    assert again.weights_fingerprint() == ad.weights_fingerprint()
    import afloc.adapter as train_mod  # the adapter's own reference to load_train_config

    def coarser(spec, task="afloc"):
        c = load_train_config(spec, task)
        c.model["vision"]["upsample"] = 128
        return c

    monkeypatch.setattr(train_mod, "load_train_config", coarser)
    other = UntrainedAFLocAdapter()
    other.load(None, "cpu")
    assert other.weights_fingerprint() != ad.weights_fingerprint()
    with pytest.raises(ValueError, match="takes no checkpoint"):
        UntrainedAFLocAdapter().load("some/folder", "cpu")
