"""ReContrast's training objective: reverse distillation's flattened-cosine loss on both crossed branches,
with hard-point mining on the gradient.

Per branch (the frozen encoder's maps against the decoder's set 0, the trainable encoder's maps against
set 1; ``ReContrastNet.forward`` gives them in that order) and per scale, the value is
``mean_b(1 - cos(flat(e_b), flat(d_b)))`` with the encoder map detached; the two branches are averaged.
The gradient reaching each decoder map is then kept only at the *hard* positions: those whose own
``1 - cos`` over channels is at least ``mean + alpha · std`` of all positions of the batch (unbiased std);
elsewhere it is multiplied by ``factor`` (0 in every official script). ``alpha`` rises linearly from -3 to 1
over the first 10% of the iterations, then stays at 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ALPHA_START, ALPHA_FINAL, ALPHA_WARMUP = -3.0, 1.0, 0.1


def hard_mining_alpha(iteration: int, total_iters: int, start: float = ALPHA_START, final: float = ALPHA_FINAL,
                      warmup: float = ALPHA_WARMUP) -> float:
    """``min(start + (final - start) · iteration / (total_iters · warmup), final)`` (iterations count from 0)."""
    return min(start + (final - start) * iteration / (total_iters * warmup), final)


def _keep_hard(grad: torch.Tensor, easy: torch.Tensor, factor: float) -> torch.Tensor:
    return torch.where(easy.expand_as(grad), grad * factor, grad)


def hard_mined_cosine_loss(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor],
                           alpha: float, factor: float = 0.0) -> torch.Tensor:
    """Flattened-cosine loss of one branch (summed over its scales); registers, on each decoder map that
    needs a gradient, a hook that scales the gradient of its easy positions by ``factor``."""
    loss = torch.zeros((), device=decoder_feats[0].device)
    for e, d in zip(encoder_feats, decoder_feats, strict=True):
        e = e.detach()
        with torch.no_grad():
            dist = 1 - F.cosine_similarity(e, d).unsqueeze(1)  # [B, 1, H, W]
            threshold = dist.mean() + alpha * dist.reshape(-1).std()
            easy = dist < threshold
        loss = loss + torch.mean(1 - F.cosine_similarity(e.reshape(e.shape[0], -1), d.reshape(d.shape[0], -1)))
        if d.requires_grad:
            d.register_hook(lambda g, easy=easy: _keep_hard(g, easy, factor))
    return loss


def recontrast_loss(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor], alpha: float,
                    factor: float = 0.0) -> torch.Tensor:
    """The loss of one training step on ``ReContrastNet``'s six pairs: the mean of the two branches."""
    n = len(encoder_feats) // 2
    return (hard_mined_cosine_loss(encoder_feats[:n], decoder_feats[:n], alpha, factor) / 2
            + hard_mined_cosine_loss(encoder_feats[n:], decoder_feats[n:], alpha, factor) / 2)
