"""WordPiece tokenizer plus the per-token tables that word/sentence aggregation needs.

The official code looks every token id up in ``idxtoword`` and tests strings inside a Python
loop (``startswith("##")``, ``== "[SEP]"``, ``== "."``, ``startswith("[")``). Here those tests
are evaluated once per vocabulary entry into boolean tables, so aggregation is a handful of
tensor operations with the same result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertTokenizerFast

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


@dataclass
class TokenTables:
    """Boolean facts about every vocabulary id (index = token id)."""

    is_subword: torch.Tensor  # token starts with "##": continues the current word
    is_bracket: torch.Tensor  # token starts with "[": a word it begins is not a content unit
    is_sep: torch.Tensor  # "[SEP]": the walk over tokens stops here
    is_period: torch.Tensor  # "." : a sentence boundary when it is a word of its own
    adds_text: torch.Tensor  # a "##" piece that adds characters to the word label ("##" alone adds none)

    @classmethod
    def from_vocab(cls, vocab: dict[str, int]) -> TokenTables:
        n = max(vocab.values()) + 1
        t = {k: torch.zeros(n, dtype=torch.bool) for k in ("sub", "br", "sep", "per", "txt")}
        for tok, i in vocab.items():
            sub = tok.startswith("##")
            t["sub"][i] = sub
            t["br"][i] = tok.startswith("[")
            t["sep"][i] = tok == "[SEP]"
            t["per"][i] = tok == "."
            t["txt"][i] = sub and len(tok) > 2
        return cls(t["sub"], t["br"], t["sep"], t["per"], t["txt"])

    def to(self, device) -> TokenTables:
        return TokenTables(*(getattr(self, f).to(device) for f in
                             ("is_subword", "is_bracket", "is_sep", "is_period", "adds_text")))


class Tokenizer:
    """A BERT WordPiece tokenizer (transformers' fast implementation) padded to ``max_length``."""

    def __init__(self, hf_tokenizer, max_length: int = 97):
        self.hf = hf_tokenizer
        self.max_length = max_length
        self.vocab: dict[str, int] = dict(hf_tokenizer.get_vocab())
        self.tables = TokenTables.from_vocab(self.vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}

    @classmethod
    def from_path(cls, path: str | os.PathLike, max_length: int = 97, lowercase: bool = True) -> Tokenizer:
        """A folder with tokenizer files (e.g. Bio_ClinicalBERT) or a bare ``vocab.txt``."""

        p = Path(path)
        if p.is_dir():
            if not any((p / f).is_file() for f in TOKENIZER_FILES):
                raise FileNotFoundError(f"{p}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        elif p.is_file():
            import inspect

            # transformers 5 names the argument ``vocab``; 4.x names it ``vocab_file``
            key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
            hf = BertTokenizerFast(**{key: str(p)}, do_lower_case=lowercase)
        else:
            raise FileNotFoundError(f"{p}: tokenizer not found (expected a folder with vocab.txt or a vocab.txt file)")
        return cls(hf, max_length)

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.hf(list(texts), return_tensors="pt", truncation=True, padding="max_length",
                      max_length=self.max_length, return_token_type_ids=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "token_type_ids": enc["token_type_ids"]}

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]

    def save(self, folder: str | os.PathLike) -> None:
        """Tokenizer files plus a plain ``vocab.txt`` (readable by any WordPiece implementation)."""
        self.hf.save_pretrained(str(folder))
        vocab = Path(folder) / "vocab.txt"
        if not vocab.is_file():
            ordered = sorted(self.vocab.items(), key=lambda kv: kv[1])
            vocab.write_text("".join(t + "\n" for t, _ in ordered))
