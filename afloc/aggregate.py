"""From BERT token states to the three text levels: words, sentences, report.

Definitions (official ``BertEncoder.aggregate_tokens`` / ``aggregate_tokens_sent_as_units``):

* Token states: the last ``n`` hidden layers, reduced over layers (sum for ``aggregate="sum"``,
  mean for ``"mean"``). Because every later step is linear, reducing the layers first gives the
  same result as the official per-layer aggregation followed by the layer reduction.
* Words: tokens are walked left to right up to the first ``[SEP]``; a token that does not start
  with ``##`` opens a new word, ``##`` pieces join the current word. A word is the **sum** of its
  pieces (``mean`` for ``aggregate="mean"``, except the word just before ``[SEP]``, which the
  official code always sums). ``[CLS]`` is word 0, ``.`` is a word, ``[SEP]`` is the last word,
  then zero padding to T positions.
* Word units used by the local loss: the first ``cap_len`` words, where ``cap_len`` = number of
  words whose label does not start with ``[`` plus one, i.e. ``[CLS]`` + content, ``[SEP]`` out.
* Sentences: the word before ``[SEP]`` never ends a sentence; ``[SEP]`` does. Sentence k is the
  **mean** of the words strictly between boundary k−1 (or word 0) and boundary k, where the
  boundaries are the ``.`` words. Units are ``[CLS], S_0 … S_{K−1}, [SEP]``, zero padded to T;
  ``cap_len`` = K + 1 (``[CLS]`` + sentences). An empty span gives NaN, as in the official code.
* Report: the sum of the word vectors divided by T (all positions, padding included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afloc.tokenizer import TokenTables


@dataclass
class TextLevels:
    words: torch.Tensor  # [B, T, D] word vectors, zero padded
    word_lens: torch.Tensor  # [B] number of word units used by the loss
    sentences: torch.Tensor  # [B, T, D] sentence units ([CLS], S_0.., [SEP]), zero padded
    sentence_lens: torch.Tensor  # [B] number of sentence units used by the loss
    report: torch.Tensor  # [B, D]
    n_words: torch.Tensor  # [B] words including [CLS] and [SEP]
    n_sentences: torch.Tensor  # [B] K


def reduce_layers(hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor], last_n: int,
                  method: str = "sum") -> torch.Tensor:
    """Sum (or mean) of the last ``last_n`` hidden layers, [B, T, D]."""
    stack = torch.stack(tuple(hidden_states[-last_n:]), dim=0)
    if method == "sum":
        return stack.sum(0)
    if method == "mean":
        return stack.mean(0)
    raise ValueError(f"aggregate method must be 'sum' or 'mean', not {method!r}")


def aggregate(input_ids: torch.Tensor, states: torch.Tensor, tables: TokenTables,
              method: str = "sum") -> TextLevels:
    """Words, sentences and report of a batch (see module docstring).

    ``input_ids`` [B, T]; ``states`` [B, T, D] token states already reduced over layers.
    """
    B, T = input_ids.shape
    dev = input_ids.device
    dtype = states.dtype
    ids = input_ids.long()
    sub = tables.is_subword[ids]
    sep = tables.is_sep[ids]
    if not bool(sep.any(1).all()):
        bad = (~sep.any(1)).nonzero().flatten().tolist()
        raise ValueError(f"token rows {bad} have no [SEP]; texts must be tokenized with special tokens")
    pos = torch.arange(T, device=dev)
    sep_pos = torch.where(sep, pos, T).min(1).values  # first [SEP]
    if bool((sep_pos == 0).any()):
        raise ValueError("a token row starts with [SEP]; expected [CLS] first")
    valid = pos[None, :] <= sep_pos[:, None]
    start = valid & (~sub | (pos[None, :] == 0))
    word_id = torch.cumsum(start.long(), 1) - 1  # [B, T]
    n_words = word_id.gather(1, sep_pos[:, None]).squeeze(1) + 1

    # token -> word membership, [B, T_words, T_tokens]
    member = (word_id[:, None, :] == pos[None, :, None]) & valid[:, None, :]
    M = member.to(dtype)
    if method == "mean":
        counts = M.sum(-1, keepdim=True)
        before_sep = (pos[None, :] == (n_words - 2)[:, None])[:, :, None]  # official: always summed
        M = torch.where(before_sep | (counts == 0), M, M / counts.clamp(min=1))
    words = torch.bmm(M, states)  # [B, T, D]

    # word labels: does it start with "[", is it exactly "."
    first = (member & start[:, None, :]).to(dtype)
    starts_bracket = torch.bmm(first, tables.is_bracket[ids].to(dtype)[:, :, None]).squeeze(-1) > 0
    starts_period = torch.bmm(first, tables.is_period[ids].to(dtype)[:, :, None]).squeeze(-1) > 0
    extra_text = torch.bmm(member.to(dtype), tables.adds_text[ids].to(dtype)[:, :, None]).squeeze(-1)
    is_word = pos[None, :] < n_words[:, None]
    period_word = starts_period & (extra_text == 0) & is_word
    word_lens = (is_word & ~starts_bracket).sum(1) + 1

    # sentences
    sep_w = n_words - 1
    boundary = (period_word & (pos[None, :] != (sep_w - 1)[:, None]) & (pos[None, :] < sep_w[:, None])) \
        | (pos[None, :] == sep_w[:, None])
    K = boundary.sum(1)
    if bool((K + 2 > T).any()):
        raise ValueError("more sentence units than token positions")
    before = torch.cumsum(boundary.long(), 1) - boundary.long()  # boundaries strictly before w
    inner = (pos[None, :] >= 1) & (pos[None, :] < sep_w[:, None]) & ~boundary
    S = ((before[:, None, :] == pos[None, :, None]) & inner[:, None, :]).to(dtype)  # [B, T_sent, T_words]
    S = S / S.sum(-1, keepdim=True)  # empty span -> 0/0 = NaN (official behaviour)
    # unit composition: row 0 = [CLS] word, rows 1..K = sentences, row K+1 = [SEP] word
    C = torch.zeros(B, T, T, dtype=dtype, device=dev)
    C[:, 0, 0] = 1
    sent_rows = (pos[None, :] < K[:, None])  # sentences 0..K-1 go to rows 1..K
    C[:, 1:, :] = torch.where(sent_rows[:, :T - 1, None], S[:, :T - 1, :], C[:, 1:, :])
    C[torch.arange(B, device=dev), K + 1, sep_w] = 1
    sentences = torch.bmm(C.nan_to_num(nan=0.0), words)
    nan_rows = torch.isnan(C).any(-1)
    if bool(nan_rows.any()):
        sentences = sentences.masked_fill(nan_rows[:, :, None], float("nan"))
    report = words.sum(1) / T
    return TextLevels(words=words, word_lens=word_lens, sentences=sentences, sentence_lens=K + 1,
                      report=report, n_words=n_words, n_sentences=K)
