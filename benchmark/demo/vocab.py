"""The demo WordPiece vocabulary, built from real radiology reports shipped with torxrayvision.

Why: Bio_ClinicalBERT's vocabulary cannot be downloaded here, and a demo model still needs a
tokenizer that splits radiology text the way WordPiece does (sub-words with ``##``, periods as
tokens), because word aggregation and the sentence units depend on it. The corpus is the
FINDINGS and IMPRESSION sections of the 3,955 OpenI reports in torchxrayvision's
``data/NLMCXR_reports.tgz`` (read in file-name order) plus the prompt tables of
``benchmark.prompts``; the build is deterministic, and the result is cached in
``<cache>/models/afloc-demo-vocab-v<VERSION>``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

VOCAB_VERSION = 1
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SECTIONS = ("FINDINGS", "IMPRESSION")


def openi_reports_archive() -> Path:
    import torchxrayvision

    p = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    if not p.is_file():
        from benchmark.dataset import DataError

        raise DataError(p, "torchxrayvision's OpenI report archive (data/NLMCXR_reports.tgz) is missing")
    return p


def openi_reports(archive: str | os.PathLike | None = None) -> list[str]:
    """FINDINGS + IMPRESSION text of every OpenI report, ordered by report number."""
    archive = Path(archive) if archive else openi_reports_archive()
    out: list[tuple[int, str]] = []
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if not (m.isfile() and m.name.endswith(".xml")):
                continue
            root = ET.fromstring(tar.extractfile(m).read())
            parts = []
            for node in root.iter("AbstractText"):
                if node.get("Label") in SECTIONS and node.text:
                    parts.append(node.text.strip())
            text = " ".join(parts).strip()
            if text:
                num = int(re.sub(r"\D", "", Path(m.name).stem) or 0)
                out.append((num, text))
    out.sort()
    return [t for _, t in out]


def _prompt_corpus() -> list[str]:
    from benchmark.prompts import all_prompt_texts

    return all_prompt_texts()


def build_vocab(out_dir: str | os.PathLike, vocab_size: int = VOCAB_SIZE, min_count: int = 2) -> Path:
    """Write the vocabulary into ``out_dir`` (``vocab.txt`` + tokenizer config); deterministic.

    Entries: the special tokens; every character of the corpus and its ``##`` continuation
    (so any word can be spelled); then whole words seen at least ``min_count`` times, most
    frequent first (ties alphabetical), up to ``vocab_size``. Rare words therefore split into
    ``##`` pieces, as WordPiece does. (The ``tokenizers`` WordPiece trainer breaks frequency
    ties in hash order, so two runs can differ; this builder cannot.)
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in openi_reports() + _prompt_corpus():
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size or n < min_count:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}, indent=2) + "\n")
    (out / "README.txt").write_text(
        "WordPiece vocabulary of the afloc-bench demo model: characters, their ## continuations and the\n"
        "whole words seen at least twice in the FINDINGS and IMPRESSION sections of the OpenI reports\n"
        "shipped by torchxrayvision (data/NLMCXR_reports.tgz) and in the prompt tables of benchmark.prompts.\n"
        f"Version {VOCAB_VERSION}, {len(vocab)} entries.\n")
    return out / "vocab.txt"


def ensure_demo_vocab() -> Path:
    """Folder holding the cached demo vocabulary, built on first use (atomic)."""
    from benchmark.dataset import cache_home

    final = cache_home() / "models" / f"afloc-demo-vocab-v{VOCAB_VERSION}"
    if (final / "vocab.txt").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vocab-", dir=final.parent))
    try:
        build_vocab(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race
            if not (final / "vocab.txt").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
