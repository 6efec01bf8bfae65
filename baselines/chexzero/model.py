"""CheXzero (Tiu et al., Nature BME 2022) as an open_clip CLIP ViT-B/32 (QuickGELU).

CheXzero fine-tunes OpenAI's CLIP ViT-B/32 and saves ``model.state_dict()`` of OpenAI's CLIP
class. open_clip's ``CLIP`` uses the same parameter names (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``,
``text_projection``, ``logit_scale``…); the only entries to drop are the integer metadata
(``input_resolution``, ``context_length``, ``vocab_size``) some OpenAI exports carry.

Preprocessing copies CheXzero's pipeline: letterbox to 320 (PIL LANCZOS, ``int()`` sizes,
pasted at the floor offset on black), pixel values 0–255 normalised with mean 101.48761 and
std 83.43944, then ``Resize(224, bicubic)`` on the tensor without antialiasing (torchvision
0.11, the version CheXzero pins, had none for tensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image

from baselines.common.text_folder import read_json

CXR_MEAN, CXR_STD = 101.48761, 83.43944
LETTERBOX, INPUT = 320, 224
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
VIT_B_32 = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def build_clip(arch: dict[str, Any] | None = None) -> Any:
    """An open_clip ``CLIP`` from an architecture dict (default: ViT-B/32 with QuickGELU), fp32."""

    a = arch or VIT_B_32
    return CLIP(embed_dim=int(a["embed_dim"]), vision_cfg=CLIPVisionCfg(**a["vision_cfg"]),
                text_cfg=CLIPTextCfg(**a["text_cfg"]), quick_gelu=bool(a.get("quick_gelu", True)))


def read_arch(path: str | Path) -> dict[str, Any]:
    """An open_clip-format model config (JSON) for non-standard architectures (tests use a tiny one)."""

    data = read_json(Path(path))
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in data:
            from benchmark.io.checkpoints import CheckpointError

            raise CheckpointError(path, f"expected an open_clip model config with {key!r}")
    return data


def openai_to_open_clip(sd: dict[str, Any]) -> dict[str, Any]:
    """OpenAI CLIP state dict → open_clip ``CLIP`` keys (identical names; metadata entries dropped)."""
    return {k: v for k, v in sd.items() if k not in OPENAI_METADATA_KEYS}


def letterbox_320(image: np.ndarray, size: int = LETTERBOX) -> np.ndarray:
    """CheXzero's ``preprocess``: longer side to ``size`` with LANCZOS (sizes ``int(x * ratio)``), pasted
    at ``((size - w) // 2, (size - h) // 2)`` on a black ``L`` square (a colour image is resized in RGB
    and turned gray by the paste, as in CheXzero's ``img_to_hdf5``)."""

    img = Image.fromarray(image)
    w, h = img.size
    ratio = float(size) / max(w, h)
    new = (int(w * ratio), int(h * ratio))
    img = img.resize(new, Image.LANCZOS)
    out = Image.new("L", (size, size))
    out.paste(img, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(out)


def to_model_input(square: np.ndarray) -> Any:
    """0–255 square → normalised 3×224×224 tensor (bicubic, no antialias)."""

    x = torch.tensor(np.asarray(square), dtype=torch.float32)[None].repeat(3, 1, 1)
    x = (x - CXR_MEAN) / CXR_STD
    if x.shape[-1] != INPUT or x.shape[-2] != INPUT:
        x = F.interpolate(x[None], size=(INPUT, INPUT), mode="bicubic", align_corners=False, antialias=False)[0]
    return x

