"""Text and image preprocessing steps of the baselines, checked against the official behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

WORDPIECE = Path(__file__).parent / "fixtures" / "baselines" / "wordpiece"


@pytest.fixture(scope="module")
def tok():
    from baselines.common.text_folder import wordpiece_tokenizer

    return wordpiece_tokenizer(WORDPIECE)


def test_gloria_text_cleaning_is_the_official_one():
    from baselines.gloria.model import char_cap_len, clean_text

    assert clean_text("Findings suggesting pneumonia.") == "findings suggesting pneumonia"
    assert clean_text("Pneumothorax") == ""  # one-token sentences are dropped
    assert clean_text("Pneumothorax", keep_short_sentences=True) == "pneumothorax"
    assert clean_text("1. Small effusion. 2. No pneumothorax\nseen") == "small effusion no pneumothorax seen"
    assert clean_text("COVID-19 opacity, café") == "covid 19 opacity caf"
    assert clean_text("Edema. Mild cardiomegaly.") == "mild cardiomegaly"
    assert char_cap_len("mild edema") == 10 and char_cap_len("[x] y") == 4


def _official_walk(tokens: list[str]) -> tuple[list[list[int]], int]:
    """GLoRIA's ``aggregate_tokens`` loop over one caption: word → token positions; and the
    training caption length (1 + words not starting with "[")."""
    words, bank, names, name = [], [], [], []
    for pos, t in enumerate(tokens):
        if t == "[SEP]":
            words.append(bank)
            names.append("".join(name))
            words.append([pos])
            names.append(t)
            break
        if not t.startswith("##"):
            if bank:
                words.append(bank)
                names.append("".join(name))
            bank, name = [pos], [t]
        else:
            bank.append(pos)
            name.append(t[2:])
    return words, 1 + len([w for w in names if not w.startswith("[")])


def test_word_assignment_equals_the_official_walk(tok):
    from baselines.gloria.model import TokenTables, word_assignment

    tables = TokenTables.from_tokenizer(tok)
    texts = ["findings suggesting pneumothoraxes", "xq lungs", "mild cardiomegaly é", ""]
    enc = tok(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    index, cap_len = word_assignment(enc["input_ids"], tables)
    for row, ids in enumerate(enc["input_ids"].tolist()):
        tokens = tok.convert_ids_to_tokens(ids)
        words, cap = _official_walk(tokens)
        got = [[p for p in range(len(tokens)) if index[row, p] == w] for w in range(len(words))]
        assert got == words, tokens
        assert int(cap_len[row]) == cap, tokens
        assert (index[row, words[-1][0] + 1:] == -1).all()  # nothing after [SEP]


def test_word_aggregation_sums_pieces_and_zero_pads():
    from baselines.gloria.model import aggregate_words

    emb = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).view(2, 1, 5, 2)
    index = torch.tensor([[0, 1, 1, 2, -1], [0, 0, 1, -1, -1]])
    out = aggregate_words(emb, index)
    assert torch.equal(out[0, 0, 1], emb[0, 0, 1] + emb[0, 0, 2])
    assert torch.equal(out[1, 0, 0], emb[1, 0, 0] + emb[1, 0, 1])
    assert torch.equal(out[0, 0, 3:], torch.zeros(2, 2)) and torch.equal(out[1, 0, 2:], torch.zeros(3, 2))


def test_gloria_attention_is_a_double_softmax():
    from baselines.gloria.model import attention_fn

    g = torch.Generator().manual_seed(0)
    q, ctx = torch.randn(1, 4, 3, generator=g), torch.randn(1, 4, 2, 2, generator=g)
    _, attn = attention_fn(q, ctx, 4.0)
    s = ctx.view(4, 4).T @ q[0]  # regions × words
    expected = torch.softmax(torch.softmax(s, dim=1).T * 4.0, dim=1)  # words × regions
    assert torch.allclose(attn.view(3, 4), expected, atol=1e-6)


def test_medklip_tokenization_has_cls_and_no_sep(tok):
    from baselines.medklip.model import tokenize_cls_only

    enc = tokenize_cls_only(tok, ["a small pleural effusion", "lung " * 100], max_length=64)
    ids = enc["input_ids"]
    assert ids.shape == (2, 64) and (ids[:, 0] == tok.cls_token_id).all()
    assert not (ids == tok.sep_token_id).any()
    assert int(enc["attention_mask"][0].sum()) == 1 + len(
        tok("a small pleural effusion", add_special_tokens=False)["input_ids"])
    assert int(enc["attention_mask"][1].sum()) == 64  # truncated to [CLS] + 63 pieces


def test_r2gen_cleaning():
    from baselines.convirt.model import r2gen_clean

    assert r2gen_clean("The lungs are clear. No effusion.") == "the lungs are clear . no effusion ."
    assert r2gen_clean("1. Small (left) effusion; a<b=c?") == "small left effusion abc ."  # ':-[' is a range
    assert r2gen_clean("") == ""


def test_gloria_letterbox_and_crop():
    from baselines.common.image_prep import center_crop, gloria_letterbox

    img = np.full((300, 150), 200, np.uint8)
    box = gloria_letterbox(img, 256)
    assert box.shape == (256, 256)
    assert (box[:, :64] == 0).all() and (box[:, 192:] == 0).all() and (box[:, 64:192] == 200).all()
    wide = gloria_letterbox(np.full((101, 300), 9, np.uint8), 256)  # height int(101*256/300) = 86, pad 85/85
    assert (wide[:85] == 0).all() and (wide[85:171] == 9).all() and (wide[171:] == 0).all()
    assert center_crop(np.arange(256 * 256).reshape(256, 256), 224)[0, 0] == 16 * 256 + 16


def test_biovil_transform_sizes_and_minmax():
    from baselines.common.image_prep import center_crop, pil_resize_shorter
    from benchmark.io.images import remap_to_uint8

    img = (np.arange(600 * 400).reshape(600, 400) % 97 + 50).astype(np.uint8)
    r = remap_to_uint8(img)
    assert r.min() == 0 and r.max() == 255
    assert pil_resize_shorter(r, 512).shape == (768, 512)
    assert center_crop(pil_resize_shorter(r, 512), 480).shape == (480, 480)
    assert (remap_to_uint8(np.full((4, 4), 7)) == 0).all()  # a constant image does not divide by zero


def test_chexzero_letterbox_and_normalisation():
    from baselines.chexzero.model import CXR_MEAN, CXR_STD, letterbox_320, to_model_input

    sq = letterbox_320(np.full((400, 200), 255, np.uint8))
    assert sq.shape == (320, 320) and (sq[:, :80] == 0).all() and (sq[:, 240:] == 0).all() and sq[:, 80:240].min() > 250
    x = to_model_input(np.full((320, 320), CXR_MEAN, np.float32))
    assert tuple(x.shape) == (3, 224, 224) and float(x.abs().max()) < 1e-5
    assert float(to_model_input(np.zeros((320, 320)))[0, 0, 0]) == pytest.approx(-CXR_MEAN / CXR_STD, rel=1e-6)
