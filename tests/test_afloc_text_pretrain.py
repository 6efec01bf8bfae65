"""Masked-LM pretraining of the text encoder (training option text_pretrain)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_afloc_kit import (
    one_thread,  # noqa: F401  (fixture)
    synthetic_pairs,
    tiny_config,
    tokenizer,
)
from test_afloc_train import tiny_cfg

from benchmark.training.config import TrainConfig
from benchmark.training.text_pretrain import MaskedLMHead, TextPretrainConfig, mask_tokens, pretrain_text_encoder
from benchmark.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["there is a small left pleural effusion . the heart size is normal",
         "no pneumothorax . the lungs are clear",
         "right lower zone opacity . findings suggesting pneumonia",
         "the heart size is normal . no pleural effusion"]


def small_bert(tmp_path):
    from transformers import BertConfig, BertModel

    tok = tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    return BertModel(BertConfig(**tiny_config(vocab_size=len(tok.vocab)).text.bert_config)), tok


def test_masking_follows_bert_and_never_touches_special_tokens():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (200, 50))
    ids[:, 0], ids[:, -1], ids[:, 40:] = 2, 3, 0  # [CLS] ... padding ... [SEP]
    special = torch.tensor([0, 2, 3])
    out, labels = mask_tokens(ids, special, mask_id=4, vocab_size=40, prob=0.15, gen=gen)
    chosen = labels != -100
    assert not chosen[torch.isin(ids, special)].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(out[~chosen], ids[~chosen])
    ordinary = (~torch.isin(ids, special)).sum().item()
    assert abs(chosen.sum().item() / ordinary - 0.15) < 0.01
    n = chosen.sum().item()
    assert abs((out[chosen] == 4).sum().item() / n - 0.8) < 0.03
    assert abs((out[chosen] == ids[chosen]).sum().item() / n - 0.1) < 0.03  # kept (plus rare random hits)
    again = mask_tokens(ids, special, 4, 40, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and torch.equal(again[1], labels)


def test_the_head_is_tied_to_the_word_embeddings(tmp_path):
    bert, _ = small_bert(tmp_path)
    head = MaskedLMHead(bert)
    assert head.embeddings.weight is bert.embeddings.word_embeddings.weight
    assert head(torch.zeros(3, bert.config.hidden_size)).shape == (3, bert.config.vocab_size)


def test_pretraining_lowers_the_masked_word_loss_and_is_deterministic(tmp_path):
    bert, tok = small_bert(tmp_path)
    start = {k: v.clone() for k, v in bert.state_dict().items()}
    cfg = TextPretrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=10)
    rng_before = torch.get_rng_state()
    losses = pretrain_text_encoder(bert, tok, TEXTS, cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    assert any(not torch.equal(start[k], v) for k, v in bert.state_dict().items())
    assert set(bert.state_dict()) == set(start)  # only the encoder's own weights, no head left behind

    again, _ = small_bert(tmp_path / "b")
    assert pretrain_text_encoder(again, tok, TEXTS, cfg, seed=3) == losses
    for k, v in bert.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_options_are_checked_by_name():
    assert TextPretrainConfig.from_mapping({"steps": "400", "lr": "1e-3"}) == TextPretrainConfig(steps=400, lr=1e-3)
    with pytest.raises(ValueError, match=r"unknown masked-LM options \['step'\]"):
        TextPretrainConfig.from_mapping({"step": 10})
    with pytest.raises(ValueError, match="steps: expected a whole number"):
        TextPretrainConfig.from_mapping({"steps": 2.5})
    with pytest.raises(ValueError, match="mask_prob in"):
        TextPretrainConfig.from_mapping({"mask_prob": 1.5})
    recorded = TrainConfig.from_mapping({"text_pretrain": {"steps": "5"}}).text_pretrain  # every option it ran with
    assert recorded == {"steps": 5, "batch_size": 64, "lr": 1e-3, "warmup": 50, "weight_decay": 0.01, "mask_prob": 0.15}
    with pytest.raises(ValueError, match="config: text_pretrain.lr: expected a number"):
        TrainConfig.from_mapping({"text_pretrain": {"lr": "fast"}})
    with pytest.raises(ValueError, match="needs at least one non-empty report"):
        pretrain_text_encoder(torch.nn.Linear(1, 1), None, ["", " "], TextPretrainConfig())


def test_the_trainer_pretrains_before_the_first_step_and_not_again_on_resume(tmp_path):
    pairs = synthetic_pairs(tmp_path / "img", 8)
    tok = tokenizer(tmp_path / "tok")
    mlm = {"steps": 12, "batch_size": 4, "lr": 1e-3, "warmup": 2}
    kw = dict(train_pairs=pairs, val_pairs=pairs, tokenizer=tok)

    # setup() leaves the text encoder exactly where pretrain_text_encoder takes a fresh model
    t = Trainer(tiny_cfg(text_pretrain=mlm), tmp_path / "a", quiet=True, **kw)
    t.setup()
    fresh = Trainer(tiny_cfg(), tmp_path / "b", quiet=True, **kw)
    fresh.setup()
    from benchmark.training.captions import report_sentences

    texts = [". ".join(report_sentences(r, 5, False)) for _, r in pairs]
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    pretrain_text_encoder(fresh.model.text_encoder.model, tok, texts, TextPretrainConfig(**mlm), seed=0)
    ours, ref = t.model.state_dict(), fresh.model.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in ref.items() if k.startswith("text_encoder."))
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k

    train(tiny_cfg(text_pretrain=mlm, epochs=1), tmp_path / "run", quiet=True, **kw)
    train(tiny_cfg(text_pretrain=mlm, epochs=2), tmp_path / "run", quiet=True, resume=True, **kw)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    mlm_rows = [r for r in rows if r["split"] == "text_pretrain"]
    assert [int(r["step"]) for r in mlm_rows] == list(range(1, 13))  # log_every 1, once, not again on resume
    assert float(mlm_rows[0]["lr"]) == pytest.approx(5e-4) and float(mlm_rows[-1]["lr"]) == pytest.approx(1e-3 / 12)
    assert {int(r["epoch"]) for r in rows if r["split"] == "train"} == {0, 1}


def test_objectives_without_a_bert_refuse_text_pretraining(tmp_path):
    from benchmark.training.task import TrainTask

    class NoText(TrainTask):
        name = "notext"

    with pytest.raises(ValueError, match="notext objective does not support text_pretrain"):
        NoText().text_bert(torch.nn.Linear(1, 1))
