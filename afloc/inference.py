"""Inference engine: official preprocessing, heatmap grids and zero-shot probabilities.

Preprocessing (official ``process_img``): grayscale uint8 → letterbox to 224 (INTER_AREA,
longest side, centred zero padding; ``benchmark.geometry.frames.letterbox_array``) → 3 identical
channels → ``ToTensor`` → ``Normalize(0.5, 0.5)`` (values in [−1, 1]); the model upsamples to
299 itself. The official zero-shot classification script reads and preprocesses differently
(PIL RGB, ``Resize(224)`` of the shorter side + ``CenterCrop(224)``): ``geometry="resize_crop"``.

Heatmap (official ``get_similarity_map_from_raw_data``): raw dot product of each deep local
vector (layer3 → 1×1 conv, 19×19) with the report embedding of the prompt, no normalisation.
Smoothing, upsampling and margins belong to the evaluation protocol, so the raw grid is returned.

Zero-shot (official ``classification/model_afloc.py``): class vectors are means of raw report
embeddings over the prompt ensemble; P(positive) is the softmax over the pair of raw dot
products with the global image feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from afloc.model import AFLoc, similarity_grid, zero_shot_probability
from benchmark.geometry.frames import letterbox_array, parse_geometry

GEOMETRIES = {"letterbox": "letterbox:224", "resize_crop": "resize_crop:224:224"}
# the official code's file reading for each geometry: ``cv2.imread(p, 0)`` in localization and
# pretraining, ``PIL.Image.open(p).convert("RGB")`` in zero-shot classification
DECODE_OF = {"letterbox": "cv2-gray", "resize_crop": "pil-rgb"}
# the official preprocessing of each task (``geometry=official``, the default)
OFFICIAL_GEOMETRY = {"grounding": "letterbox", "classification": "resize_crop"}


def to_model_input(frame: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or RGB (H, W, 3) → float [3, H, W] in [−1, 1], the same float operations as
    torchvision's ``ToTensor`` + ``Normalize([0.5], [0.5])`` (gray is replicated to 3 channels, as
    ``convert("RGB")`` does)."""
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"expected a uint8 gray (H, W) or RGB (H, W, 3) image, got {frame.dtype} {frame.shape}")
    t = torch.from_numpy(np.ascontiguousarray(frame)).float().div(255)
    t = (t - 0.5) / 0.5
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()
    return t.permute(2, 0, 1).contiguous()


def preprocess_image(image: np.ndarray, geometry: str = "letterbox", size: int = 224) -> torch.Tensor:
    """The image as decoded by the task's recipe → the model input of ``geometry``."""
    if geometry == "letterbox":
        frame = letterbox_array(image, size)
    elif geometry == "resize_crop":
        frame = parse_geometry(f"resize_crop:{size}:{size}").image_to_frame(image)
    else:
        raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, not {geometry!r}")
    return to_model_input(frame)


class InferenceEngine:
    """Thin, batched wrapper around an ``AFLoc`` model in eval mode."""

    def __init__(self, model: AFLoc, device: str = "cpu", text_batch: int = 64):
        self.model = model.to(device).eval()
        self.device = device
        self.text_batch = text_batch

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.model.encode_image(batch.to(self.device), shallow=False)
        return {"deep": f.deep.float(), "global": f.global_.float()}

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.report_embeddings(list(prompts), self.text_batch).float()

    @torch.inference_mode()
    def similarity_map(self, image_emb: dict[str, torch.Tensor], text_emb: torch.Tensor) -> np.ndarray:
        deep = image_emb["deep"] if isinstance(image_emb, dict) else image_emb
        return similarity_grid(deep, text_emb.to(deep.device)).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def score(self, image_emb: dict[str, torch.Tensor], positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
        g = image_emb["global"] if isinstance(image_emb, dict) else image_emb
        p = zero_shot_probability(g, positive.to(g.device), negative.to(g.device))
        return p.cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def class_logit(self, image_emb: dict[str, torch.Tensor], positive: torch.Tensor) -> np.ndarray:
        """Raw dot product of the global image and class embeddings (the official pathology
        classification's ``fc`` logits, softmaxed over classes)."""
        g = image_emb["global"] if isinstance(image_emb, dict) else image_emb
        return (g * positive.to(g.device)).sum(-1).double().cpu().numpy()
