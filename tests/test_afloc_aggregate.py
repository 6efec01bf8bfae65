"""Word / sentence / report aggregation against hand-computed sums and means (reference §2.2)."""

from __future__ import annotations

import pytest
import torch
from test_afloc_kit import (
    ID,
    one_thread,  # noqa: F401  (fixture)
)

from afloc.aggregate import aggregate, reduce_layers
from afloc.tokenizer import TokenTables

pytestmark = pytest.mark.usefixtures("one_thread")

TABLES = TokenTables.from_vocab(ID)
T, D = 12, 5


def ids_of(*tokens: str) -> torch.Tensor:
    row = [ID[t] for t in tokens] + [ID["[PAD]"]] * (T - len(tokens))
    return torch.tensor([row])


def states(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_plain_words_sentences_and_report():
    ids = ids_of("[CLS]", "small", "left", "pleural", "effusion", ".", "heart", "normal", "[SEP]")
    s = states()[0]
    out = aggregate(ids, s[None], TABLES)
    assert out.n_words.item() == 9
    torch.testing.assert_close(out.words[0, :9], s[:9])
    assert torch.all(out.words[0, 9:] == 0)
    # [CLS] + 7 content words ("." counts), [SEP] excluded
    assert out.word_lens.item() == 8
    # sentences: words 1..4 and 6..7; units [CLS], S0, S1, [SEP]
    assert out.n_sentences.item() == 2 and out.sentence_lens.item() == 3
    torch.testing.assert_close(out.sentences[0, 0], s[0])
    torch.testing.assert_close(out.sentences[0, 1], s[1:5].mean(0))
    torch.testing.assert_close(out.sentences[0, 2], s[6:8].mean(0))
    torch.testing.assert_close(out.sentences[0, 3], s[8])
    assert torch.all(out.sentences[0, 4:] == 0)
    # report: all word vectors summed, divided by all T positions (padding included)
    torch.testing.assert_close(out.report[0], s[:9].sum(0) / T)


def test_subword_pieces_are_summed_and_a_period_before_sep_is_no_boundary():
    ids = ids_of("[CLS]", "pneumo", "##thorax", "lung", "##s", ".", "[SEP]")
    s = states(1)[0]
    out = aggregate(ids, s[None], TABLES)
    words = torch.stack([s[0], s[1] + s[2], s[3] + s[4], s[5], s[6]])
    assert out.n_words.item() == 5
    torch.testing.assert_close(out.words[0, :5], words)
    assert out.word_lens.item() == 4  # [CLS], pneumothorax, lungs, "."
    # the "." just before [SEP] is relabelled: one sentence spanning words 1..3 (the period included)
    assert out.n_sentences.item() == 1 and out.sentence_lens.item() == 2
    torch.testing.assert_close(out.sentences[0, 1], words[1:4].mean(0))
    torch.testing.assert_close(out.sentences[0, 2], words[4])
    torch.testing.assert_close(out.report[0], s[:7].sum(0) / T)


def test_empty_text_gives_a_nan_sentence_as_the_official_code():
    ids = ids_of("[CLS]", "[SEP]")
    s = states(2)[0]
    out = aggregate(ids, s[None], TABLES)
    assert out.n_words.item() == 2 and out.word_lens.item() == 1
    assert out.sentence_lens.item() == 2
    assert torch.isnan(out.sentences[0, 1]).all()
    torch.testing.assert_close(out.sentences[0, 2], s[1])
    torch.testing.assert_close(out.report[0], (s[0] + s[1]) / T)


def test_bracket_words_count_as_non_content_in_the_unit_prefix():
    # official cap_len = non-"[" words + 1, used as a prefix: [CLS], a, [UNK] (the last content word falls out)
    ids = ids_of("[CLS]", "a", "[UNK]", "x", "[SEP]")
    out = aggregate(ids, states(3), TABLES)
    assert out.n_words.item() == 5 and out.word_lens.item() == 3


def test_period_with_empty_piece_is_still_a_period_but_not_with_text():
    s = states(4)[0]
    ids = ids_of("[CLS]", ".", "##", "a", "[SEP]")  # word "." + "" -> "."
    out = aggregate(ids, s[None], TABLES)
    assert out.n_sentences.item() == 2
    assert torch.isnan(out.sentences[0, 1]).all()  # empty span before the first period
    torch.testing.assert_close(out.sentences[0, 2], s[3])
    ids = ids_of("[CLS]", ".", "##y", "a", "[SEP]")  # word ".y" is no period
    out = aggregate(ids, s[None], TABLES)
    assert out.n_sentences.item() == 1
    torch.testing.assert_close(out.sentences[0, 1], torch.stack([s[1] + s[2], s[3]]).mean(0))


def test_mean_method_sums_only_the_word_before_sep():
    ids = ids_of("[CLS]", "pneumo", "##thorax", "cardio", "##mega", "##ly", "[SEP]")
    s = states(5)[0]
    out = aggregate(ids, s[None], TABLES, method="mean")
    torch.testing.assert_close(out.words[0, 1], (s[1] + s[2]) / 2)
    torch.testing.assert_close(out.words[0, 2], s[3] + s[4] + s[5])  # official: always summed at [SEP]


def test_batch_rows_are_independent_and_layers_reduce():
    rows = [ids_of("[CLS]", "small", "left", "effusion", "[SEP]"),
            ids_of("[CLS]", "no", "lung", "##s", ".", "heart", "normal", ".", "x", "[SEP]")]
    ids = torch.cat(rows)
    s = torch.randn(2, T, D, dtype=torch.float64)
    both = aggregate(ids, s, TABLES)
    for i in range(2):
        one = aggregate(rows[i], s[i:i + 1], TABLES)
        torch.testing.assert_close(both.sentences[i], one.sentences[0])
        torch.testing.assert_close(both.words[i], one.words[0])
    assert both.sentence_lens.tolist() == [2, 4]
    hs = [torch.full((1, 2, 3), float(v)) for v in range(6)]
    assert torch.all(reduce_layers(hs, 4, "sum") == 2 + 3 + 4 + 5)
    assert torch.all(reduce_layers(hs, 4, "mean") == 3.5)


def test_rows_without_sep_are_rejected():
    with pytest.raises(ValueError, match="no \\[SEP\\]"):
        aggregate(torch.tensor([[ID["[CLS]"], ID["a"]] + [0] * (T - 2)]), states(), TABLES)
