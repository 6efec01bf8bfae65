"""Shared helpers of the AFLoc tests (a hand-made WordPiece vocabulary, tiny models, synthetic pairs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not spin against other work on a shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "##", "small", "left", "right", "pleural", "effusion",
         "heart", "size", "is", "normal", "pneumo", "##thorax", "lung", "##s", "no", "opacity", "there", "a",
         "the", "base", "upper", "lower", "zone", "x", "##y", "findings", "suggesting", "pneumonia", "of",
         "cardio", "##mega", "##ly", "seen", "clear", "and", "mild", "at", "in", "with", "##ness"]
ID = {t: i for i, t in enumerate(VOCAB)}


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "vocab.txt"
    p.write_text("\n".join(VOCAB) + "\n")
    return p


def tokenizer(folder: Path, max_length: int = 24):
    from afloc.tokenizer import Tokenizer

    return Tokenizer.from_path(write_vocab(folder), max_length=max_length)


def tiny_config(vocab_size: int = len(VOCAB), max_length: int = 24, upsample: int | None = 299):
    from afloc import config

    cfg = config.tiny(vocab_size=vocab_size)
    cfg.vision.width = 4
    cfg.vision.upsample = upsample
    cfg.text.bert_config.update(hidden_size=16, intermediate_size=32, num_attention_heads=2)
    cfg.text.max_length = max_length
    return cfg


def tiny_model(folder: Path, seed: int = 0, max_length: int = 24, upsample: int | None = 299):
    import torch

    from afloc.model import AFLoc

    tok = tokenizer(folder, max_length)
    torch.manual_seed(seed)
    m = AFLoc(tiny_config(len(tok), max_length, upsample))
    m.attach_tokenizer(tok)
    return m.eval()


SIDES = ("left", "right")


def synthetic_pairs(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (96, 128)) -> list[tuple[str, str]]:
    """Images with a bright disc on the left or right and a report that says which side."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        side = i % 2
        h, w = size
        img = rng.normal(70, 12, (h, w))
        cx = int(w * (0.3 if side == 0 else 0.7))
        cy = int(h * rng.uniform(0.35, 0.65))
        cv2.circle(img, (cx, cy), int(min(h, w) * 0.15), 210, -1)
        path = folder / f"img{i:03d}.png"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
        s = SIDES[side]
        pairs.append((str(path),
                      f"There is a {s} lung opacity. The heart size is normal. No pleural effusion is seen."))
    return pairs


def test_kit_vocab_round_trip(tmp_path):
    tok = tokenizer(tmp_path)
    ids = tok(["pneumothorax at the left base"])["input_ids"][0].tolist()
    assert tok.tokens(ids[:7]) == ["[CLS]", "pneumo", "##thorax", "at", "the", "left", "base"]
