"""``afloc-compat@1``'s per-sample grounding values computed with torch, for a GPU on large runs.

What it computes is :func:`benchmark.protocols.afloc_compat.afloc_scores` (``iou@t``, ``dice@t``,
``cnr``, ``gt_pixels``, ``constant_map``): the same min–max normalisation to [-1, 1] (subtract,
divide, double, subtract one: the same IEEE operations in the map's dtype, so the same normalised
values), the same ``map > t`` in that dtype and the same integer counts, hence the same IoU and Dice
bits. CNR's means and variances are summed in float64 here, where the NumPy path reproduces the
official float32 reductions: values agree to about 1e-6 (measured in the tests), not bit for bit.

Maps holding an infinite value, or whose evaluated pixels differ in a way the fast path cannot
batch, are scored by the NumPy path (the official rules for such maps are intricate). ``hit`` (the
pointing game) is the first maximum of the raw map in row-major order, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.metrics import dice_from_counts, iou_from_counts
from benchmark.protocols import common as C


def afloc_scores_torch(emaps: np.ndarray, gts: np.ndarray, thresholds: Sequence[float],
                       device: Any = "cuda", *, with_hit: bool = True) -> dict[str, np.ndarray]:
    """Per-sample values of a batch of evaluation-frame maps [B, H, W] (NaN = not evaluated) and
    masks [B, H, W] on ``device``; see the module docstring for what equals the NumPy path."""
    import torch

    from benchmark.protocols.afloc_compat import afloc_scores

    emaps, gts = np.asarray(emaps), np.asarray(gts)
    if emaps.dtype not in (np.float32, np.float64) or gts.dtype.kind not in "biu" or emaps.shape != gts.shape:
        return afloc_scores(emaps, gts, tuple(thresholds), with_hit=with_hit)
    with torch.inference_mode():
        m = torch.from_numpy(np.ascontiguousarray(emaps)).to(device)
        b = m.shape[0]
        flat = m.reshape(b, -1)
        if bool(torch.isinf(flat).any()):
            return afloc_scores(emaps, gts, tuple(thresholds), with_hit=with_hit)
        g = torch.from_numpy(np.ascontiguousarray(gts).astype(np.int64, copy=False)).to(device).reshape(b, -1)
        valid = ~torch.isnan(flat)
        inf = torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
        mn = torch.where(valid, flat, inf).amin(dim=1)
        mx = torch.where(valid, flat, -inf).amax(dim=1)
        d = mx - mn
        norm = flat - mn[:, None]
        norm = norm / d[:, None]
        norm = norm * 2
        norm = norm - 1
        constant = d == 0
        norm = torch.where(constant[:, None] & valid, torch.full_like(norm, -1.0), norm)
        gv = torch.where(valid, g, torch.zeros_like(g))
        gpos = gv > 0
        counts = {"gt_count": gpos.sum(dim=1), "gt_sum": gv.sum(dim=1)}
        pred, inter = [], []
        for t in thresholds:
            above = norm > torch.tensor(t, dtype=norm.dtype)  # NaN > t is False; t cast to the map's dtype
            pred.append(above.sum(dim=1))
            inter.append((above & gpos).sum(dim=1))
        counts["pred"] = torch.stack(pred, dim=1)
        counts["inter"] = torch.stack(inter, dim=1)
        counts = {k: v.cpu().numpy().astype(np.int64) for k, v in counts.items()}
        # compute_cnr: normalise the evaluated pixels once more, then A = mask == 1, background = mask == 0
        h2 = torch.where(constant[:, None], torch.full_like(norm, -1.0), (norm + 1) - 1).double()
        ins = (gv == 1) & valid
        outs = (gv == 0) & valid
        cnr = _cnr(h2, ins, outs).cpu().numpy()
        hit = None
        if with_hit:
            first = torch.where(valid, flat, -inf).argmax(dim=1)  # the first maximum, row-major
            on = g.gather(1, first[:, None])[:, 0] != 0
            has = gpos.any(dim=1)  # lesion pixels in the evaluated area, as the batched NumPy path
            hit = torch.where(has, on.double(), torch.full_like(on, 0, dtype=torch.float64) + float("nan"))
            hit = hit.cpu().numpy()
    out: dict[str, np.ndarray] = C.per_threshold_columns(
        thresholds, iou=iou_from_counts(counts, "tp"), dice=dice_from_counts(counts, "tp", raw_gt_sum=True))
    out["cnr"] = cnr
    if hit is not None:
        out["hit"] = hit
    out["gt_pixels"] = counts["gt_count"].astype(np.float64)
    out["constant_map"] = constant.cpu().numpy().astype(np.float64)
    return out


def _cnr(h: Any, ins: Any, outs: Any) -> Any:
    """``(mean_A − mean_B) / sqrt(var_A + var_B)`` per row (population variances, float64); 0 when
    both variances are 0, NaN when a set is empty."""
    import torch

    def moments(sel):
        n = sel.sum(dim=1).double()
        x = torch.where(sel, h, torch.zeros_like(h))
        mean = x.sum(dim=1) / n
        dev = torch.where(sel, h - mean[:, None], torch.zeros_like(h))
        return n, mean, (dev * dev).sum(dim=1) / n

    n1, m1, v1 = moments(ins)
    n0, m0, v0 = moments(outs)
    s = v1 + v0
    val = torch.where(s == 0, torch.zeros_like(s), (m1 - m0) / torch.sqrt(s))
    return torch.where((n1 > 0) & (n0 > 0), val, torch.full_like(s, float("nan")))
