"""RD++'s training objective: the distillation loss plus the multi-projection layer's self-supervised
losses (``L = L_distill + w · L_proj``, ``w`` = 0.2 in ``main.py``).

``L_proj`` (the official ``Revisit_RDLoss``), per scale s with ``P_s`` the projected normal maps,
``Q_s`` the projected noised maps and ``N_s`` the encoder's noised maps:

- *self-supervised optimal transport*: the debiased Sinkhorn divergence between the softmax-ed, flattened
  ``P_s`` of the batch (B points) and the same points in a random order (``torch.randperm``), uniform
  weights, cost ``|x - y|² / 2``, blur 0.05, ε-scaling 0.95 from a diameter of 1e7 (geomloss 0.2.6's
  ``SamplesLoss('sinkhorn', p=2, blur=0.05, scaling=0.95, diameter=1e7, reach=None, debias=True)``, its
  dense backend for B² ≤ 5000² pairs);
- *reconstruction*: ``mean(1 - cos(Q_s, P_s))`` over channels, every position;
- *contrast*: ``CosineEmbeddingLoss(margin=0.5)`` of flattened ``N_s`` and ``P_s`` with target -1
  (``mean_b max(0, cos - 0.5)``);

``L_proj = (Σ ssot + 0.01 Σ reconstruction + 0.1 Σ contrast) / 1.11``. ``L_distill`` is reverse
distillation's flattened cosine, without stopping the encoder's gradient (the encoder is not trained).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baselines.common.reverse_distillation import flat_cosine_loss

BLUR, SCALING, DIAMETER = 0.05, 0.95, 1e7
W_RECONSTRUCT, W_CONTRAST, NORMALISER = 0.01, 0.1, 1.11
MARGIN = 0.5
WEIGHT_PROJ = 0.2  # main.py --weight_proj


def _half_sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x_i - y_j|² / 2`` for point clouds ``[B, N, D]`` and ``[B, M, D]``, as ``|x|² - 2 x·y + |y|²``."""
    xx = (x * x).sum(-1).unsqueeze(2)
    yy = (y * y).sum(-1).unsqueeze(1)
    return (xx - 2 * torch.matmul(x, y.transpose(1, 2)) + yy) / 2


def _soft_c_transform(eps: float, cost: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``-eps · log Σ_j exp(h_j - C_ij / eps)`` (rows ``i``), batched."""
    return -eps * (h.view(h.shape[0], 1, -1) - cost / eps).logsumexp(2).view(h.shape[0], -1)


def epsilon_schedule(blur: float = BLUR, scaling: float = SCALING, diameter: float = DIAMETER) -> list[float]:
    """Temperatures of the annealed loop (p = 2): ``diameter²``, then ``exp`` of a geometric ramp of
    ``2 log(diameter)`` down to (excluding) ``2 log(blur)`` in steps of ``2 log(scaling)``, then ``blur²``."""
    ramp = np.arange(2 * np.log(diameter), 2 * np.log(blur), 2 * np.log(scaling))
    return [diameter ** 2] + [float(np.exp(e)) for e in ramp] + [blur ** 2]


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, blur: float = BLUR, scaling: float = SCALING,
                        diameter: float = DIAMETER) -> torch.Tensor:
    """Debiased entropic OT divergence ``OT(α, β) - OT(α, α)/2 - OT(β, β)/2`` between the uniform measures
    on the rows of ``x`` [N, D] and ``y`` [M, D] (squared-Euclidean cost / 2), by the symmetric Sinkhorn
    loop with ε-scaling; the potentials are iterated without gradient and one last update with gradient
    (through the costs, the iterated potentials detached) gives the value and its gradient."""
    xb, yb = x.unsqueeze(0), y.unsqueeze(0)
    a = torch.ones(1, x.shape[0], dtype=x.dtype, device=x.device) / x.shape[0]
    b = torch.ones(1, y.shape[0], dtype=y.dtype, device=y.device) / y.shape[0]
    a_log, b_log = a.log(), b.log()
    c_xy, c_yx = _half_sq_dist(xb, yb.detach()), _half_sq_dist(yb, xb.detach())
    c_xx, c_yy = _half_sq_dist(xb, xb.detach()), _half_sq_dist(yb, yb.detach())
    schedule = epsilon_schedule(blur, scaling, diameter)
    with torch.no_grad():
        eps = schedule[0]
        g_ab, f_ba = _soft_c_transform(eps, c_yx, a_log), _soft_c_transform(eps, c_xy, b_log)
        f_aa, g_bb = _soft_c_transform(eps, c_xx, a_log), _soft_c_transform(eps, c_yy, b_log)
        for eps in schedule:
            ft_ba = _soft_c_transform(eps, c_xy, b_log + g_ab / eps)
            gt_ab = _soft_c_transform(eps, c_yx, a_log + f_ba / eps)
            ft_aa = _soft_c_transform(eps, c_xx, a_log + f_aa / eps)
            gt_bb = _soft_c_transform(eps, c_yy, b_log + g_bb / eps)
            f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
            f_aa, g_bb = 0.5 * (f_aa + ft_aa), 0.5 * (g_bb + gt_bb)
    f_ba, g_ab = (_soft_c_transform(eps, c_xy, (b_log + g_ab / eps).detach()),
                  _soft_c_transform(eps, c_yx, (a_log + f_ba / eps).detach()))
    f_aa = _soft_c_transform(eps, c_xx, (a_log + f_aa / eps).detach())
    g_bb = _soft_c_transform(eps, c_yy, (b_log + g_bb / eps).detach())
    value = (a * (f_ba - f_aa)).sum(1) + (b * (g_ab - g_bb)).sum(1)
    return value[0]


def projection_loss_terms(noised_feats: Sequence[torch.Tensor], projected_noised: Sequence[torch.Tensor],
                          projected_normal: Sequence[torch.Tensor],
                          perm: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``ssot``, ``reconstruct``, ``contrast`` (each summed over the three scales) and ``total`` (``L_proj``).
    ``perm``: the batch order for the optimal-transport term (default ``torch.randperm(B)``, one draw
    shared by the scales, from the global generator as the official code draws it)."""
    bsz = projected_normal[0].shape[0]
    perm = torch.randperm(bsz) if perm is None else perm
    target = -torch.ones(bsz, device=projected_normal[0].device)
    ssot = reconstruct = contrast = None
    for n_feat, q, p in zip(noised_feats, projected_noised, projected_normal, strict=True):
        flat = p.reshape(bsz, -1)
        s = sinkhorn_divergence(torch.softmax(flat, -1), torch.softmax(p[perm].reshape(bsz, -1), -1))
        r = torch.mean(1 - F.cosine_similarity(q, p))
        c = F.cosine_embedding_loss(n_feat.reshape(bsz, -1), flat, target, margin=MARGIN)
        ssot = s if ssot is None else ssot + s
        reconstruct = r if reconstruct is None else reconstruct + r
        contrast = c if contrast is None else contrast + c
    total = (ssot + W_RECONSTRUCT * reconstruct + W_CONTRAST * contrast) / NORMALISER
    return {"ssot": ssot, "reconstruct": reconstruct, "contrast": contrast, "total": total}


def projection_loss(noised_feats: Sequence[torch.Tensor], projected_noised: Sequence[torch.Tensor],
                    projected_normal: Sequence[torch.Tensor], perm: torch.Tensor | None = None) -> torch.Tensor:
    """``L_proj`` (see the module docstring)."""
    return projection_loss_terms(noised_feats, projected_noised, projected_normal, perm)["total"]


def distillation_loss(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L_distill``: the flattened cosine over the three scales, encoder gradient not stopped."""
    return flat_cosine_loss(encoder_feats, decoder_feats, detach_encoder=False)


def rdpp_loss(distill: torch.Tensor, proj: torch.Tensor, weight_proj: float = WEIGHT_PROJ) -> torch.Tensor:
    """``L = L_distill + weight_proj · L_proj``."""
    return distill + weight_proj * proj

