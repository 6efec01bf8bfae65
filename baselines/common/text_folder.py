"""Text encoders and tokenizers built from a local model folder, never from a hub.

A baseline's text side needs a config (``config.json``), a vocabulary (``vocab.txt`` for
WordPiece, ``vocab.json`` + ``merges.txt`` for byte-level BPE) and sometimes weights
(``pytorch_model.bin`` or ``model.safetensors``). These are read from a folder the user
downloaded once; the model classes are built from the config alone (no ``from_pretrained``
with a hub id, no ``trust_remote_code``), and attention uses the eager implementation, the
one the official code ran with.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import (
    BertConfig,
    BertTokenizer,
    RobertaConfig,
    RobertaTokenizer,
    RobertaTokenizerFast,  # pragma: no cover - transformers 4.x
)

from benchmark.io.checkpoints import CheckpointError, need_file, read_tensors

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def text_folder(path: str | os.PathLike | None, what: str, published: str, option: str = "text_encoder",
                files: tuple[str, ...] = ("config.json",)) -> Path:
    """The local folder of a text model; the error lists the files it must hold and where they come from."""
    folder = need_file(path, f"a local folder with {what} ({', '.join(files)})", published, option)
    if not folder.is_dir():
        raise CheckpointError(folder, f"expected a folder holding {', '.join(files)} of {what}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(folder, f"missing {', '.join(missing)}; expected the files of {what} "
                                      f"(published at {published})")
    return folder


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"expected a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def bert_config(cfg: dict[str, Any], **overrides: Any):
    """A transformers ``BertConfig`` from a config dict (eager attention, hidden states returned)."""

    keep = {k: v for k, v in cfg.items()
            if k not in ("architectures", "auto_map", "model_type", "transformers_version")}
    keep.update(overrides)
    keep.setdefault("attn_implementation", "eager")
    return BertConfig(**keep)


def roberta_config(cfg: dict[str, Any], **overrides: Any):

    keep = {k: v for k, v in cfg.items()
            if k not in ("architectures", "auto_map", "model_type", "transformers_version")}
    keep.update(overrides)
    keep.setdefault("attn_implementation", "eager")
    return RobertaConfig(**keep)


def _tokenizer_settings(folder: Path) -> dict[str, Any]:
    p = folder / "tokenizer_config.json"
    return read_json(p) if p.is_file() else {}


def wordpiece_tokenizer(folder: Path, do_lower_case: bool | None = None):
    """BERT WordPiece tokenizer from ``vocab.txt``; ``do_lower_case`` from the folder's tokenizer_config.json.

    Without a tokenizer_config.json the transformers default (lower-case) applies, as it did for
    the official code loading the same folder.
    """

    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(folder, "missing vocab.txt (the WordPiece vocabulary of the text encoder)")
    settings = _tokenizer_settings(folder)
    lower = settings.get("do_lower_case", True) if do_lower_case is None else bool(do_lower_case)
    kwargs = {"do_lower_case": lower}
    if "strip_accents" in settings:
        kwargs["strip_accents"] = settings["strip_accents"]
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers >= 5
        tok = BertTokenizer(vocab=str(vocab), **kwargs)
    else:  # pragma: no cover - transformers 4.x
        from transformers import BertTokenizerFast

        tok = BertTokenizerFast(vocab_file=str(vocab), **kwargs)
    lines = vocab.read_text(encoding="utf-8").splitlines()
    last = lines[-1].strip() if lines else ""
    if not last or tok.convert_tokens_to_ids(last) != len(lines) - 1 and lines.count(lines[-1]) == 1:
        # the vocabulary was not read as given (e.g. a constructor that ignored the path)
        raise CheckpointError(vocab, f"tokenizer did not load this vocabulary ({len(lines)} lines)")
    return tok


def save_wordpiece(tokenizer: Any, folder: Path) -> None:
    """Write a WordPiece tokenizer as ``wordpiece_tokenizer`` reads it back (``vocab.txt`` and its
    lower-casing in ``tokenizer_config.json``), so a checkpoint folder carries its own text side."""
    tokenizer.save_vocabulary(str(folder))
    lower = bool(getattr(tokenizer, "do_lower_case", True))
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}) + "\n")


def bpe_tokenizer(folder: Path):
    """RoBERTa byte-level BPE tokenizer from ``vocab.json`` + ``merges.txt``."""

    for f in ("vocab.json", "merges.txt"):
        if not (folder / f).is_file():
            raise CheckpointError(folder, f"missing {f} (the byte-level BPE files of the text encoder)")
    if "vocab" in inspect.signature(RobertaTokenizer.__init__).parameters:
        return RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))

    return RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def folder_weights(folder: Path, expected: str) -> dict[str, Any]:
    """The weights file of a text-model folder (safetensors preferred), read without unpickling code."""
    for name in WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            sd = read_tensors(p, expected=expected)
            if not isinstance(sd, dict):
                raise CheckpointError(p, f"expected a state dict of {expected}")
            return sd
    raise CheckpointError(folder, f"no weights file ({' or '.join(WEIGHT_FILES)}); expected {expected}")


def call_quietly(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with transformers' info/warning logging silenced (random-init notices)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return fn()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return fn()
    finally:
        hf_logging.set_verbosity(level)
