"""Training captions as the official pretraining data builds them (AFLoc's
``MultimodalPretrainingDataset``, inherited from GLoRIA): report sentences and sampled captions.

Everything here reproduces the official behaviour, quirks included, because it changes numbers:

* ``report_sentences`` (official ``create_path_2_sent_mapping``): split on ``[0-9]+\\.`` then on
  ``.``; keep the lowercase ``\\w+`` tokens of each piece, ASCII only; drop pieces with at most one
  token; and the GLoRIA leftover that **stops** as soon as the running word count equals exactly
  ``captions_per_image`` (5).
* ``sample_caption`` (official ``get_caption``, ``random_combine_mode: 1``, ``random_num: true``):
  a report with n ≥ 2 sentences contributes a random subset of k ∈ [1, n−1] sentences (never
  all of them) in random order, joined with ``". "``.

``compat=False`` switches the two quirks off (no 5-word stop; k ∈ [1, n]).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBERED = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def sentence_pieces(text: str) -> list[str]:
    """Pieces of a text split as the official code splits it: on numbered items, then on periods."""
    text = text.replace("\n", " ")
    return [s for point in _NUMBERED.split(text) for s in point.split(".")]


def clean_piece(piece: str) -> tuple[list[str], int]:
    """(ASCII tokens kept, number of raw tokens) of one sentence piece."""
    piece = piece.replace("\ufffd\ufffd", " ")
    raw = _WORD.findall(piece.lower())
    kept = []
    for t in raw:
        t = t.encode("ascii", "ignore").decode("ascii")
        if t:
            kept.append(t)
    return kept, len(raw)


def report_sentences(report: str | None, captions_per_image: int = 5, compat: bool = True) -> list[str]:
    """Cleaned sentences of a report as the official pretraining data uses them.

    Returns ``[]`` for a missing or empty report (the official code then drops the image).
    """
    if not isinstance(report, str) or not report:
        return []
    sentences: list[str] = []
    count = 0
    for piece in sentence_pieces(report):
        if not piece:
            continue
        tokens, n_raw = clean_piece(piece)
        if n_raw <= 1:
            continue
        sentences.append(" ".join(tokens))
        count += len(tokens)
        if compat and count == captions_per_image:
            break
    return sentences


def sample_caption(sentences: Sequence[str], rng: np.random.Generator, compat: bool = True) -> str:
    """One training caption: a shuffled random subset of the sentences (see module docstring)."""
    n = len(sentences)
    if n == 0:
        raise ValueError("report has no sentence")
    if n < 2:
        return sentences[0]
    k = int(rng.integers(1, n)) if compat else int(rng.integers(1, n + 1))
    order = rng.choice(n, k, replace=False)
    return ". ".join(sentences[i] for i in order)
