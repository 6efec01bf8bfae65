"""Masked-language-model pretraining of a randomly initialised text encoder on the training reports.

Why: the paper's AFLoc starts from Bio_ClinicalBERT, a BERT already trained to predict masked
words of clinical text. A text encoder trained from scratch (the demo) has no such start: its token
states for ``[CLS]``, the words, the sentences and the report point in unrelated directions, so
whether the heatmap (deep features · report embedding) follows the features that the sentence
loss aligns with ``[CLS]`` is left to chance, and so is whether the local losses leave chance
within a short budget. A few hundred masked-word steps on the training split's own reports give
the encoder that start (the training option ``text_pretrain``; \
docs/notes/2026-12-07-demo-afloc-builds.md has the figures).

The recipe is BERT's: 15% of the non-special tokens are chosen; 80% of those become ``[MASK]``,
10% a random token, 10% stay; the last hidden layer predicts them through a dense + GELU +
LayerNorm transform and a decoder tied to the input word embeddings. AdamW with linear warm-up
and linear decay to zero. The head is discarded afterwards; only the encoder's weights change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class TextPretrainConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50  # steps of linear warm-up
    weight_decay: float = 0.01
    mask_prob: float = 0.15

    @classmethod
    def from_mapping(cls, d: dict[str, Any], source: str = "text_pretrain") -> TextPretrainConfig:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a mapping of masked-LM options, got {d!r}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{source}: unknown masked-LM options {unknown}; expected some of "
                             f"{sorted(cls.__dataclass_fields__)}")
        types = {f.name: f.type for f in cls.__dataclass_fields__.values()}
        values = {}
        for k, v in d.items():
            try:
                values[k] = int(v) if types[k] == "int" else float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{source}.{k}: expected a number, got {v!r}") from None
            if types[k] == "int" and values[k] != float(v):
                raise ValueError(f"{source}.{k}: expected a whole number, got {v!r}")
        cfg = cls(**values)
        if cfg.steps < 1 or cfg.batch_size < 1 or not 0.0 < cfg.mask_prob < 1.0 or cfg.lr <= 0:
            raise ValueError(f"{source}: steps and batch_size must be positive, lr above 0 and mask_prob in "
                             f"(0, 1); got {asdict(cfg)}")
        return cfg


class MaskedLMHead(nn.Module):
    """BERT's prediction head with the decoder tied to the encoder's word embeddings."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        c = bert.config
        self.embeddings = bert.embeddings.word_embeddings  # shared, not copied
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        nn.init.normal_(self.dense.weight, std=c.initializer_range)
        nn.init.zeros_(self.dense.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(states))), self.embeddings.weight, self.bias)


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, prob: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels with -100 where nothing is predicted). Padding is special."""
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~torch.isin(ids, special)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    out = ids.clone()
    out[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    out[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=gen)
    return out, labels


def pretrain_text_encoder(bert: nn.Module, tokenizer: Any, texts: Sequence[str], cfg: TextPretrainConfig, *,
                          seed: int = 0, device: str = "cpu",
                          on_log: Callable[[int, float, float], None] | None = None, log_every: int = 50,
                          progress: bool = False) -> list[float]:
    """Train ``bert`` (a ``transformers`` BertModel, in place) to predict masked tokens of ``texts``.

    Deterministic for a seed (batches, masks and the head's initial weights). Returns the loss of
    every step. ``on_log(step, mean loss since the last call, learning rate)`` reports progress.
    """
    if not any(t and t.strip() for t in texts):
        raise ValueError("masked-LM pretraining needs at least one non-empty report text")
    vocab = tokenizer.vocab
    missing = [t for t in ("[MASK]", "[CLS]", "[SEP]", "[PAD]") if t not in vocab]
    if missing:
        raise ValueError(f"the tokenizer's vocabulary lacks {missing}, which masked-LM pretraining needs")
    enc = tokenizer(texts)
    all_ids, all_mask, all_types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    special = torch.tensor(sorted({int(vocab[t]) for t in ("[CLS]", "[SEP]", "[PAD]")}))
    mask_id, n_vocab = int(vocab["[MASK]"]), int(bert.config.vocab_size)

    with torch.random.fork_rng(devices=[]):  # the head's initial weights, leaving the global RNG alone
        torch.manual_seed(seed)
        head = MaskedLMHead(bert).to(device)
    params = list(dict.fromkeys([*bert.parameters(), *head.parameters()]))  # tied embedding once
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    was_training = bert.training
    bert.train()
    losses: list[float] = []
    window: list[float] = []
    from benchmark.progress import Progress

    bar = Progress(cfg.steps, "masked-LM pretraining", unit="step", enabled=progress)
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup)) * (1.0 - step / cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.as_tensor(rng.integers(0, len(texts), cfg.batch_size))
        am = all_mask[idx]
        width = int(am.sum(1).max())  # trailing padding only: trimming it changes nothing
        ids, labels = mask_tokens(all_ids[idx, :width], special, mask_id, n_vocab, cfg.mask_prob, gen)
        out = bert(input_ids=ids.to(device), attention_mask=am[:, :width].to(device),
                   token_type_ids=all_types[idx, :width].to(device))
        labels = labels.to(device)
        picked = labels != -100  # the head only scores the chosen positions (15%, not the whole vocab grid)
        if bool(picked.any()):
            loss = F.cross_entropy(head(out.last_hidden_state[picked]), labels[picked])
        else:  # nothing chosen in this batch (tiny texts): no update
            loss = out.last_hidden_state.sum() * 0.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"masked-LM loss is {value} at step {step}; lower text_pretrain.lr")
        losses.append(value)
        window.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
        if on_log is not None and ((step + 1) % log_every == 0 or step + 1 == cfg.steps):
            on_log(step + 1, float(np.mean(window)), lr)
            window = []
    if bar is not None:
        bar.close()
    bert.train(was_training)
    return losses


__all__ = ["TextPretrainConfig", "MaskedLMHead", "mask_tokens", "pretrain_text_encoder"]
