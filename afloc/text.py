"""AFLoc's inference-time prompt cleaning (official ``process_text``).

``clean_prompt`` splits on ``[0-9]+\\.`` then on ``.``; keeps the lowercase ``\\w+`` tokens of
each piece; **drops pieces with at most one token** (so a one-word prompt such as "cardiomegaly"
becomes the empty string and the model sees ``[CLS] [SEP]``); strips non-ASCII; joins the
surviving pieces with spaces (periods are lost). Training captions are cleaned the same way
(``benchmark.training.captions``).
"""

from __future__ import annotations

from benchmark.training.captions import clean_piece, sentence_pieces


def clean_prompt(text: str) -> str:
    """The official inference-time cleaning of a prompt (see module docstring)."""
    out = []
    for piece in sentence_pieces(text):
        tokens, n_raw = clean_piece(piece)
        if n_raw <= 1:
            continue
        out.append(" ".join(tokens))
    return " ".join(out)
