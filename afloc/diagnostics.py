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

``python -m afloc.diagnostics CKPT... [untrained]`` prints both for checkpoints on the demo sets (or
any box dataset): the readout contrast on the images of ``--boxes`` whose official box mask covers a cell
centre of the deep grid, and the prompt dependence of eight finding prompts on ``--prompt-images``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from afloc.inference import preprocess_image
from afloc.model import AFLoc, similarity_grid
from benchmark.dataset import build_dataset
from benchmark.geometry.afloc import afloc_boxes_mask
from benchmark.io.images import read_image
from benchmark.metrics import cnr


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
    queries = {"report": txt.report.float(), "cls": txt.sentences[:, 0].float(),
               "sentence": txt.sentences[:, 1].float()}
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


def grid_cells(frame_masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Boolean [N, gh, gw]: the frame masks ([N, fh, fw], nonzero = lesion) read at the centre
    pixel of each cell of the model's grid, so readouts are compared on the grid they live on."""
    n, fh, fw = frame_masks.shape
    gh, gw = grid
    rows = ((np.arange(gh) + 0.5) * fh / gh).astype(int)
    cols = ((np.arange(gw) + 0.5) * fw / gw).astype(int)
    return frame_masks[:, rows[:, None], cols[None, :]] > 0


def _box_images(dataset: str, data_root: str | None, limit: int | None):
    """Letterboxed model inputs of a box dataset's samples that have boxes, with their official
    box ground truth in the same 224 frame (``benchmark.geometry.afloc.afloc_boxes_mask``)."""

    ds = build_dataset(dataset, data_root)
    samples = [s for s in ds.samples() if s.boxes][:limit]
    if not samples:
        raise ValueError(f"{dataset} ({ds.root}): no sample with a box; readout contrast needs box ground truth")
    images, masks = [], []
    for s in samples:
        img = read_image(s.image_path, "cv2-gray")
        x = preprocess_image(img)
        images.append(x)
        masks.append(afloc_boxes_mask(s.boxes, img.shape[:2], x.shape[-1]))
    return torch.stack(images), np.stack(masks)


def main(argv: list[str] | None = None) -> int:
    """``python -m afloc.diagnostics CKPT...``: readout contrast on a box set and prompt dependence,
    one line per checkpoint folder (``untrained`` = the demo recipe's seed weights)."""

    ap = argparse.ArgumentParser(prog="python -m afloc.diagnostics", description=main.__doc__)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders or files (or 'untrained')")
    ap.add_argument("--boxes", default="demo_rsna", help="box dataset for the readout contrast (default demo_rsna)")
    ap.add_argument("--prompt", default="Findings suggesting pneumonia.", help="prompt for the readout contrast")
    ap.add_argument("--prompt-images", default="demo_ms_cxr", help="images for prompt dependence (default demo_ms_cxr)")
    ap.add_argument("--findings", default="atelectasis,cardiomegaly,consolidation,edema,lung opacity,"
                    "pleural effusion,pneumonia,pneumothorax",
                    help="comma-separated findings, prompted as 'Findings suggesting {finding}.'")
    ap.add_argument("--data-root", default=None, help="dataset root template (demo sets live in the cache)")
    ap.add_argument("--limit", type=int, default=200, help="images per dataset (default 200)")
    args = ap.parse_args(argv)
    x_box, frame_masks = _box_images(args.boxes, args.data_root, args.limit)
    x_prompt, _ = _box_images(args.prompt_images, args.data_root, args.limit)
    prompts = [f"Findings suggesting {f.strip()}." for f in args.findings.split(",") if f.strip()]
    for ck in args.checkpoints:
        if ck == "untrained":
            from benchmark.training.config import load_train_config
            from benchmark.training.task import get_task

            cfg = load_train_config("demo")
            model, _ = get_task(cfg.task).build(cfg)
        else:
            from afloc.checkpoint import load_model

            model = load_model(ck)
        model.eval()
        with torch.no_grad():
            grid = tuple(model.encode_image(x_box[:1], shallow=False).deep.shape[-2:])
        masks = grid_cells(frame_masks, grid)
        keep = np.flatnonzero(masks.any((1, 2)) & ~masks.all((1, 2)))
        if len(keep) == 0:
            raise ValueError(f"no {args.boxes} box covers a cell centre of the {grid[0]}x{grid[1]} grid")
        idx = torch.from_numpy(keep)
        readout = readout_contrast(model, x_box[idx], [args.prompt] * len(keep), torch.from_numpy(masks[keep]))
        dep = prompt_dependence(model, x_prompt, prompts)
        print(json.dumps({"checkpoint": ck, "grid": list(grid), "box_images": len(keep),
                          "box_images_without_a_covered_cell": len(masks) - len(keep),
                          "readout_cnr": {k: round(v, 4) for k, v in readout.items()},
                          "prompt_dependence": {k: round(v, 4) for k, v in dep.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
