"""Baseline training objectives against their formulas written out directly (loops, no shared code)."""

from __future__ import annotations

import math

import pytest
import torch


def _cos(a, b, eps=1e-8):
    return float((a @ b) / max(float(a.norm() * b.norm()), eps))


def test_convirt_loss_matches_formula():
    from baselines.common.losses import convirt_loss

    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    tau, lam = 0.1, 0.75
    total = 0.0
    for i in range(5):
        num = math.exp(_cos(u[i], v[i]) / tau)
        l_u = -math.log(num / sum(math.exp(_cos(u[i], v[k]) / tau) for k in range(5)))
        l_v = -math.log(num / sum(math.exp(_cos(v[i], u[k]) / tau) for k in range(5)))
        total += lam * l_v + (1 - lam) * l_u
    assert float(convirt_loss(u, v, tau=tau, lambda_=lam)) == pytest.approx(total / 5, rel=1e-10)
    loss, lu, lv = convirt_loss(u, v, reduce=False)
    assert lu.shape == lv.shape == (5,)
    # λ weights the image→text term: swapping roles changes the value unless λ = 0.5
    assert float(convirt_loss(v, u, lambda_=0.5)) == pytest.approx(float(convirt_loss(u, v, lambda_=0.5)), rel=1e-12)
    assert float(convirt_loss(v, u)) != pytest.approx(float(loss), rel=1e-6)


def test_biovil_global_loss_matches_formula():
    from baselines.common.losses import biovil_global_loss

    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    tau = 0.5
    z = [[_cos(v[i], t[j]) / tau for j in range(4)] for i in range(4)]
    i2t = sum(-z[i][i] + math.log(sum(math.exp(z[i][j]) for j in range(4))) for i in range(4)) / 4
    t2i = sum(-z[j][j] + math.log(sum(math.exp(z[i][j]) for i in range(4))) for j in range(4)) / 4
    assert float(biovil_global_loss(v, t, temperature=tau)) == pytest.approx((i2t + t2i) / 2, rel=1e-10)


def test_gloria_loss_matches_formula():
    """Global: CE of 10·cos both ways. Local: attention (softmax over words, ×4, softmax over regions),
    R(i, j) = log Σ_w exp(5·cos(e_jw, c_jw^(i))), scores 10·R, CE both ways."""
    from baselines.common.losses import gloria_loss

    g = torch.Generator().manual_seed(2)
    B, D, h, w, W = 3, 6, 3, 4, 7
    img_l = torch.randn(B, D, h, w, generator=g, dtype=torch.float64)
    img_g = torch.randn(B, D, generator=g, dtype=torch.float64)
    words = torch.randn(B, D, W, generator=g, dtype=torch.float64)
    text_g = torch.randn(B, D, generator=g, dtype=torch.float64)
    cap = [3, 5, 2]

    def ce(rows):
        return sum(-r[i] + math.log(sum(math.exp(x) for x in r)) for i, r in enumerate(rows)) / len(rows)

    S = [[0.0] * B for _ in range(B)]  # S[image][caption]
    for j in range(B):
        e = words[j, :, :cap[j]]  # D × n
        for i in range(B):
            regions = img_l[i].reshape(D, h * w)  # D × R
            s = regions.T @ e  # R × n
            a1 = torch.softmax(s, dim=1)  # over words
            a2 = torch.softmax(a1.T * 4.0, dim=1)  # n × R, over regions
            ctx = regions @ a2.T  # D × n
            S[i][j] = 10 * math.log(sum(math.exp(5 * _cos(e[:, k], ctx[:, k])) for k in range(cap[j])))
    G = [[10 * _cos(img_g[i], text_g[j]) for j in range(B)] for i in range(B)]
    expected = {"local_0": ce(S), "local_1": ce([list(c) for c in zip(*S)]),
                "global_0": ce(G), "global_1": ce([list(c) for c in zip(*G)])}
    total, parts = gloria_loss(img_l, img_g, words, text_g, cap)
    for k, v in expected.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-9), k
    assert float(total) == pytest.approx(sum(expected.values()), rel=1e-9)
    total2, _ = gloria_loss(img_l, img_g, words, text_g, cap, local_weight=0.0, global_weight=2.0)
    assert float(total2) == pytest.approx(2 * (expected["global_0"] + expected["global_1"]), rel=1e-9)


def test_losses_backpropagate():
    from baselines.common.losses import biovil_global_loss, convirt_loss

    v = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    (convirt_loss(t, v) + biovil_global_loss(v, t, temperature=0.1)).backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and t.grad.abs().sum() > 0
