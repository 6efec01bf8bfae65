"""Training objectives of the re-implemented baselines, as plain functions of embeddings.

They plug into the trainer as ``loss = fn(...)``; each follows its reference formula:
- ``gloria_loss``: GLoRIA's global and local (word–region attention) contrastive losses,
  both directions, temperatures temp1 (attention), temp2 (word aggregation), temp3 (logit scale);
- ``convirt_loss``: ConVIRT's asymmetric InfoNCE with cosine similarity, τ 0.1, λ 0.75 (the
  image→text term weighted λ), as ViLMedic's ``ConVIRTLoss``;
- ``biovil_global_loss``: the symmetric image–text InfoNCE on L2-normalised global embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from baselines.gloria.model import attention_fn, cosine


def gloria_global_loss(img_g: torch.Tensor, text_g: torch.Tensor, temp3: float = 10.0,
                       eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(image→text, text→image) cross-entropies of ``temp3 · cos(v_i, t_j)``."""
    norm = img_g.norm(dim=1, keepdim=True) @ text_g.norm(dim=1, keepdim=True).T
    scores = (img_g @ text_g.T) / norm.clamp(min=eps) * temp3
    labels = torch.arange(len(img_g), device=img_g.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.T, labels)


def gloria_local_scores(img_l: torch.Tensor, words: torch.Tensor, cap_lens: Sequence[int], temp1: float = 4.0,
                        temp2: float = 5.0, agg: str = "sum") -> torch.Tensor:
    """``S[b, i] = log Σ_w exp(temp2 · cos(e_{i,w}, c^{(b)}_w))`` over ``[CLS]`` + the caption's words."""
    B = img_l.shape[0]
    cols = []
    for i in range(words.shape[0]):
        n = int(cap_lens[i])
        word = words[i:i + 1, :, :n].expand(B, -1, -1)
        ctx, _ = attention_fn(word, img_l, temp1)
        row = cosine(word.transpose(1, 2).reshape(B * n, -1), ctx.transpose(1, 2).reshape(B * n, -1)).view(B, n)
        row = (row * temp2).exp()
        cols.append((row.sum(1) if agg == "sum" else row.mean(1)).log())
    return torch.stack(cols, dim=1)


def gloria_loss(img_l: torch.Tensor, img_g: torch.Tensor, words: torch.Tensor, text_g: torch.Tensor,
                cap_lens: Sequence[int], temp1: float = 4.0, temp2: float = 5.0, temp3: float = 10.0,
                local_weight: float = 1.0, global_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GLoRIA's total loss ``local_weight·(L_l0 + L_l1) + global_weight·(L_g0 + L_g1)`` and its parts.

    ``img_l`` [B,D,h,w], ``img_g`` [B,D], ``words`` [B,D,W], ``text_g`` [B,D]; ``cap_lens`` per caption
    = 1 + number of words (``[CLS]`` plus the words, ``[SEP]`` excluded).
    """
    sim = gloria_local_scores(img_l, words, cap_lens, temp1, temp2) * temp3
    labels = torch.arange(len(img_l), device=img_l.device)
    l0, l1 = F.cross_entropy(sim, labels), F.cross_entropy(sim.T, labels)
    g0, g1 = gloria_global_loss(img_g, text_g, temp3)
    total = local_weight * (l0 + l1) + global_weight * (g0 + g1)
    return total, {"local_0": l0, "local_1": l1, "global_0": g0, "global_1": g1}


def convirt_loss(text: torch.Tensor, image: torch.Tensor, tau: float = 0.1, lambda_: float = 0.75,
                 eps: float = 1e-8, reduce: bool = True):
    """ConVIRT: ``mean(λ·ℓ(v→u) + (1−λ)·ℓ(u→v))`` with ``ℓ(v_i→u) = −log softmax_k(cos(v_i, u_k)/τ)[i]``.

    Returns the scalar loss, or with ``reduce=False`` ``(loss, loss_text, loss_image)`` where the
    last two are per-sample vectors (as ViLMedic returns them).
    """
    t = text / text.norm(dim=1, keepdim=True).clamp(min=eps)
    v = image / image.norm(dim=1, keepdim=True).clamp(min=eps)
    sim = t @ v.T / tau  # [i, k] = cos(u_i, v_k) / τ
    diag = sim.diagonal()
    loss_l = torch.logsumexp(sim, dim=1) - diag  # text → images
    loss_v = torch.logsumexp(sim.T, dim=1) - diag  # image → texts
    loss = (lambda_ * loss_v + (1 - lambda_) * loss_l).mean()
    return loss if reduce else (loss, loss_l, loss_v)


def biovil_global_loss(image: torch.Tensor, text: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: ``(CE(z, diag) + CE(zᵀ, diag)) / 2`` with ``z = n(v) n(t)ᵀ / temperature``."""
    z = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    labels = torch.arange(len(z), device=z.device)
    return (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels)) / 2
