"""AFLoc's text handling: prompt cleaning, report sentences, caption sampling (reference §4.2, §6)."""

from __future__ import annotations

import numpy as np
import pytest

from afloc.text import clean_prompt
from benchmark.training.captions import report_sentences, sample_caption


def test_clean_prompt_keeps_lowercase_word_tokens_and_drops_periods():
    assert clean_prompt("Findings suggesting Pneumonia.") == "findings suggesting pneumonia"
    assert clean_prompt("Small left pleural effusion. Heart size is normal") == \
        "small left pleural effusion heart size is normal"


def test_clean_prompt_one_word_pieces_vanish():
    # the official quirk: a piece with at most one token is dropped, so a one-word prompt is empty
    assert clean_prompt("cardiomegaly") == ""
    assert clean_prompt("finding") == ""
    assert clean_prompt("Cardiomegaly. Small left effusion") == "small left effusion"


def test_clean_prompt_numbered_items_and_decimals_split():
    assert clean_prompt("1. No acute process. 2. Stable cardiomegaly") == "no acute process stable cardiomegaly"
    # "[0-9]+\\." eats the "2." of "2.5"
    assert clean_prompt("nodule measuring 2.5 cm nodule") == "nodule measuring 5 cm nodule"
    assert clean_prompt("size x.5 cm") == "size x 5 cm"


def test_clean_prompt_non_ascii_is_stripped_after_the_length_check():
    # two raw tokens -> kept, the non-ASCII one is then removed
    assert clean_prompt("opacité zone") == "opacit zone"
    assert clean_prompt("ü é") == ""  # both tokens vanish, an empty piece joins as ""


def test_report_sentences_drop_short_pieces_and_stop_at_exactly_five_words():
    rep = "Heart normal. Lungs are clear. No effusion. Small left base opacity."
    # running word count: 2, 5 -> stop (the GLoRIA leftover)
    assert report_sentences(rep) == ["heart normal", "lungs are clear"]
    assert report_sentences(rep, compat=False) == ["heart normal", "lungs are clear", "no effusion",
                                                   "small left base opacity"]
    assert report_sentences("Normal. The heart size is normal.") == ["the heart size is normal"]


def test_report_sentences_empty_or_missing_reports():
    assert report_sentences("") == []
    assert report_sentences(None) == []
    assert report_sentences("Normal.") == []


def test_sample_caption_never_takes_all_sentences_in_compat_mode():
    sents = ["a b", "c d", "e f", "g h"]
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        cap = sample_caption(sents, rng)
        parts = cap.split(". ")
        assert len(set(parts)) == len(parts) and set(parts) <= set(sents)
        counts.add(len(parts))
    assert counts == {1, 2, 3}
    counts_all = {len(sample_caption(sents, rng, compat=False).split(". ")) for _ in range(300)}
    assert counts_all == {1, 2, 3, 4}


def test_sample_caption_single_sentence_and_order_shuffles():
    rng = np.random.default_rng(1)
    assert sample_caption(["only one here"], rng) == "only one here"
    sents = [f"s{i} x" for i in range(6)]
    firsts = {sample_caption(sents, rng).split(". ")[0] for _ in range(200)}
    assert len(firsts) == 6  # random order, not a prefix
    with pytest.raises(ValueError):
        sample_caption([], rng)
