"""Why a trained AFLoc model does (or does not) localize: measurements on its own features.

AFLoc's localized matching function takes a softmax over a text's units (``[CLS]`` + sentences,
or ``[CLS]`` + words) at every image region before the softmax over regions (``afloc.losses``).
When one unit's raw dot products dwarf the others', that inner softmax is saturated: the unit
wins every region, the attention of the other units is flat, and their gradient through the
attention vanishes. ``unit_saturation`` measures this on a batch.

The heatmap readout is a different quantity from what the losses shape: it is the raw dot product
of the deep local features with the *report* embedding (mean of all word vectors), while the
sentence loss only constrains *relative* unit scores and cosines. ``readout_contrast`` scores
alternative query vectors (the report, ``[CLS]``, the first sentence, the feature norm) with the
same per-image contrast-to-noise ratio against a lesion mask, so one can tell "the features do not
separate lesions" apart from "the report embedding does not read them out".

``prompt_dependence`` asks whether the heatmap depends on the prompt at all: the correlation, within
one image, between the official heatmaps of different prompts. A model whose maps correlate near 1
draws one map per image whatever the finding, so it cannot point at the heart for cardiomegaly and
at the lung for pneumonia on the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import AFLoc


def unit_saturation(deep: torch.Tensor, units: torch.Tensor, lens: torch.Tensor, threshold: float = 0.99) -> float:
    """Fraction of (pair, region) cells whose softmax over units has a maximum above ``threshold``.

    ``deep`` [B, D, H, W] region features of the images; ``units`` [B, T, D] units of their
    own texts; ``lens`` [B] units used per text (``[CLS]`` + sentences)."""
    B, D, H, W = deep.shape
    if units.shape[0] != B or units.shape[2] != D:
        raise ValueError(f"deep {tuple(deep.shape)} and units {tuple(units.shape)} do not pair up")
    scores = torch.einsum("bdr,btd->btr", deep.reshape(B, D, H * W).float(), units.float())
    n = torch.arange(units.shape[1], device=units.device)[None, :, None] < lens.to(units.device)[:, None, None]
    probs = torch.softmax(scores.masked_fill(~n, float("-inf")), dim=1)
    return float((probs.max(dim=1).values > threshold).float().mean())


def contrast_to_noise(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-map CNR (``benchmark.metrics.cnr``: signed, population variances), [B], on the raw
    grid: no smoothing, margin or normalisation, so readouts are compared on equal terms.

    ``maps`` [B, h, w] (any scale); ``masks`` [B, h, w] booleans on the same grid."""
    from benchmark.metrics import cnr

    k = masks.bool().flatten(1)
    if not (k.any(1) & ~k.all(1)).all():
        raise ValueError("each mask needs lesion and background cells")
    return torch.from_numpy(cnr(maps.detach().cpu().float().numpy(), masks.cpu().numpy().astype(np.uint8))).float()


@torch.no_grad()
def readout_contrast(model: AFLoc, images: torch.Tensor, prompts: list[str], masks: torch.Tensor) -> dict[str, float]:
    """Mean grid-level CNR of several readouts of the deep features against lesion ``masks``
    ([B, h, w], on the deep grid): ``report`` (the official heatmap), ``cls``, ``sentence``
    (first sentence unit of the prompt) and ``feature_norm`` (no text at all)."""
    model.eval()
    deep = model.encode_image(images, shallow=False).deep.float()
    if masks.shape[-2:] != deep.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} must be on the deep grid {tuple(deep.shape[-2:])}")
    tok = model.tokenize_prompts(prompts)
    txt = model.encode_text(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"])
    queries = {"report": txt.report.float(), "cls": txt.sentences[:, 0].float(), "sentence": txt.sentences[:, 1].float()}
    out = {k: float(contrast_to_noise(torch.einsum("bdhw,bd->bhw", deep, q), masks).mean()) for k, q in queries.items()}
    out["feature_norm"] = float(contrast_to_noise(deep.norm(dim=1), masks).mean())
    return out


def map_correlation(maps: torch.Tensor) -> torch.Tensor:
    """Mean Pearson correlation between the maps of different prompts on the same image, [B].

    ``maps`` [B, P, h, w] (P ≥ 2 prompts per image); pairs of distinct prompts are averaged. A map
    that is constant over the image has no correlation and is refused."""
    B, P = maps.shape[:2]
    if P < 2:
        raise ValueError(f"need at least two prompts per image, got maps of shape {tuple(maps.shape)}")
    flat = maps.detach().float().flatten(2)
    centred = flat - flat.mean(-1, keepdim=True)
    norm = centred.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("a map is constant over its image; its correlation is undefined")
    z = centred / norm
    corr = torch.einsum("bpr,bqr->bpq", z, z)
    off = ~torch.eye(P, dtype=torch.bool, device=maps.device)
    return corr[:, off].mean(-1)


@torch.no_grad()
def prompt_dependence(model: AFLoc, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """How much the official heatmap changes with the prompt on the same images.

    ``map_correlation``: mean within-image correlation of the heatmaps (raw deep-grid dot products
    with the report embedding) of every pair of ``prompts``; ``embedding_cosine``: mean cosine
    between the prompts' report embeddings."""
    from .model import similarity_grid

    if len(prompts) < 2:
        raise ValueError("prompt_dependence needs at least two prompts")
    model.eval()
    deep = model.encode_image(images, shallow=False).deep.float()
    reports = model.report_embeddings(prompts).float()
    maps = torch.stack([similarity_grid(deep, r.expand(deep.shape[0], -1)) for r in reports], dim=1)
    unit = torch.nn.functional.normalize(reports, dim=-1)
    cos = unit @ unit.T
    off = ~torch.eye(len(prompts), dtype=torch.bool, device=cos.device)
    return {"map_correlation": float(map_correlation(maps).mean()), "embedding_cosine": float(cos[off].mean())}
