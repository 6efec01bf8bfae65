"""Splits and label fractions by patient: deterministic, nested, whole patients only.

One seeded permutation of the training patients per seed; the fraction ``f`` takes its first
``max(1, round(f · N))`` patients, so 1 % ⊂ 10 % ⊂ 100 % for one seed. Validation (and, where the
dataset card has no test list to use, test) patients are carved with ``split_seed``, fixed across
seeds and fractions, so every run of a study is scored on the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def _perm_order(units: Sequence[str], seed: int, salt: str) -> list[str]:
    """``units`` (deduplicated, sorted first so input order never matters) in a seeded order."""
    uniq = sorted(set(units))
    key = int.from_bytes(hashlib.sha256(f"{salt}|{seed}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    return [uniq[i] for i in rng.permutation(len(uniq))]


def carve(units: Sequence[str], share: float, seed: int, salt: str) -> tuple[list[str], list[str]]:
    """``(rest, carved)``: ``round(share · N)`` units (at least 1, leaving at least 1) carved off."""
    order = _perm_order(units, seed, salt)
    if len(order) < 2:
        raise ValueError(f"{len(order)} patient(s): too few to carve a {salt} set")
    k = min(len(order) - 1, max(1, int(round(share * len(order)))))
    return sorted(order[k:]), sorted(order[:k])


def fraction_count(n: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], not {fraction}")
    return max(1, min(n, int(round(fraction * n))))


def label_fraction(patients: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The training patients of ``fraction`` for ``seed``: a prefix of one seeded permutation (nested)."""
    order = _perm_order(patients, seed, "fraction")
    return order[:fraction_count(len(order), fraction)]


def balanced_negatives(pos_units: Sequence[str], neg_units: Sequence[str], seed: int) -> list[str]:
    """MGCA's training set: every positive patient and as many negative ones (seeded, fixed per split)."""
    negs = _perm_order(neg_units, seed, "negatives")
    return sorted(set(pos_units)) + sorted(negs[:len(set(pos_units))])


def ids_text(ids: Sequence[str]) -> str:
    return "".join(f"{i}\n" for i in ids)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
