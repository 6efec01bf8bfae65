"""The three alignment losses of AFLoc (official ``losses.py``, adapted there from GLoRIA).

Global (report ↔ pooled image):   S_ij = temp3 · cos(g_i, r_j);  L = CE(S) + CE(Sᵀ).

Local (words ↔ shallow map, sentences ↔ deep map), for image i with regions r_m and text j
with units q_k (k < cap_len_j, raw vectors, no normalisation):

    a_mk  = r_m · q_k
    β_mk  = softmax_m( temp1 · softmax_k(a_mk) )       (softmax over units, then over regions)
    c_k   = Σ_m β_mk r_m
    Z_ij  = log Σ_k exp(temp2 · cos(q_k, c_k))          (``agg="sum"``; "mean" divides inside)
    L     = CE(temp3 · Z) + CE(temp3 · Zᵀ)                 (rows = images)

The official code loops over texts; here texts are processed in groups of similar length with
the padded units masked out, which gives the same numbers (masked units get zero weight in the
unit softmax and are left out of the log-sum-exp) at a fraction of the padded work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def global_similarity(img: torch.Tensor, txt: torch.Tensor, temp3: float = 10.0) -> torch.Tensor:
    """[B_img, B_txt] cosine similarity times ``temp3``."""
    num = img @ txt.t()
    den = img.norm(dim=1)[:, None] * txt.norm(dim=1)[None, :]
    return num / den.clamp(min=EPS) * temp3


def length_chunks(lens: list[int], cells: int, chunk: int | None = None, budget: int = 1 << 25,
                  floor: int = 1 << 20) -> list[list[int]]:
    """Texts grouped for ``local_similarity``: longest first, each group padded to its own longest.

    Padding every text to the batch's longest wastes most of the work on report batches (demo
    word counts run from 3 to 93, mean 24). A text joins the current group while it is at least
    half the group's longest (at most half of a group is padding), or while the group is still
    tiny (under ``floor`` elements, where a new group costs more than its padding); a group never
    exceeds ``budget`` elements of the ``[cells, c, N]`` temporaries (``cells`` = images x
    regions). ``chunk`` fixes the number of texts per group instead.
    """
    order = sorted(range(len(lens)), key=lambda j: -lens[j])  # stable: ties keep batch order
    groups: list[list[int]] = []
    for j in order:
        if groups:
            g = groups[-1]
            n0 = max(1, lens[g[0]])
            size = cells * n0 * (len(g) + 1)
            if chunk is not None:
                fits = len(g) < chunk
            else:
                fits = size <= budget and (2 * lens[j] >= n0 or size <= floor)
            if fits:
                g.append(j)
                continue
        groups.append([j])
    return groups


def local_similarity(img: torch.Tensor, units: torch.Tensor, lens: torch.Tensor, temp1: float = 4.0,
                     temp2: float = 5.0, agg: str = "sum", chunk: int | None = None) -> torch.Tensor:
    """Z [B_img, B_txt] of the localized matching function (before ``temp3``).

    ``img`` [B, D, H, W] region features; ``units`` [Bt, T, D]; ``lens`` [Bt] units used per text.
    Texts are scored in groups of similar length (``length_chunks``); ``chunk`` fixes the group
    size. Every grouping gives the same numbers up to float rounding.
    """
    if agg not in ("sum", "mean"):
        raise ValueError(f"agg must be 'sum' or 'mean', not {agg!r}")
    B, D, H, W = img.shape
    R = H * W
    ctx = img.reshape(B, D, R)
    ctx_t = ctx.transpose(1, 2)  # [B, R, D]
    lens = lens.to(units.device).long()
    lens_list = [int(n) for n in lens.tolist()]
    out, placed = [], []
    for g in length_chunks(lens_list, B * R, chunk):
        N = max(1, lens_list[g[0]])  # groups are longest first
        c = len(g)
        rows = torch.tensor(g, device=units.device)
        qc = units.index_select(0, rows)[:, :N]
        mc = torch.arange(N, device=units.device)[None, :] < lens.index_select(0, rows)[:, None]  # [c, N]
        # [B, c*N, R] layout: two plain batched matmuls, softmax over regions on the last axis
        a = torch.matmul(qc.reshape(c * N, D), ctx).view(B, c, N, R)
        a = a.masked_fill(~mc[None, :, :, None], float("-inf"))
        beta = torch.softmax(torch.softmax(a, dim=2) * temp1, dim=3)  # units, then regions
        wc = torch.bmm(beta.view(B, c * N, R), ctx_t).view(B, c, N, D)
        num = (wc * qc[None]).sum(-1)
        den = wc.norm(dim=-1) * qc.norm(dim=-1)[None]
        cos = num / den.clamp(min=EPS)  # [B, c, N]
        logits = (cos * temp2).masked_fill(~mc[None], float("-inf"))
        z = torch.logsumexp(logits, dim=-1)
        if agg == "mean":
            z = z - torch.log(mc.sum(-1).to(z.dtype))[None]
        out.append(z)
        placed.extend(g)
    z = torch.cat(out, dim=1)
    if placed == list(range(len(placed))):
        return z
    inverse = torch.empty(len(placed), dtype=torch.long, device=z.device)
    inverse[torch.tensor(placed, device=z.device)] = torch.arange(len(placed), device=z.device)
    return z.index_select(1, inverse)


def contrastive_pair(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image→text, text→image) cross-entropies of a square score matrix with rows = images."""
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def global_loss(img: torch.Tensor, txt: torch.Tensor, temp3: float = 10.0):
    return contrastive_pair(global_similarity(img, txt, temp3))


def local_loss(img: torch.Tensor, units: torch.Tensor, lens: torch.Tensor, temp1: float = 4.0,
               temp2: float = 5.0, temp3: float = 10.0, agg: str = "sum", chunk: int | None = None):
    return contrastive_pair(local_similarity(img, units, lens, temp1, temp2, agg, chunk) * temp3)

