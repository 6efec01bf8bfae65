"""BioViL (Boecking et al., ECCV 2022) image and text models with hi-ml-multimodal's key names.

Image: a torchvision ResNet-50 (its ``fc`` is kept: the released file has ``fc.*`` and hi-ml
loads it strictly) whose ``layer4`` grid (2048 channels, stride 32) goes through a 1×1-conv
MLP 2048→128 (no bias) → BatchNorm → ReLU → 128→128; patch embeddings are L2-normalised over
channels; the global embedding is the spatial mean of the *projected* patches.

Text: CXR-BERT, a BERT whose ``[CLS]`` state of the last layer goes through a projection head
768→128 → GELU → LayerNorm(eps 1e-12) → 128→128. The masked-language-model head of the released
weights (``cls.predictions.*``) is not used for embeddings and not built.

Checkpoints trained by this project (``baselines.biovil.task``): ``BioViL`` holds both towers
(``image.*`` with the keys above, ``text.*`` = ``bert.*`` + ``cls_projection_head.*``), saved as
``model.safetensors`` with a ``config.json`` (``BiovilConfig``: the architecture, the BERT config,
the input transform and the training temperature) and the vocabulary it was trained with.

Small variant (the demo): ``vision_arch`` names an ``benchmark.backbones.ResNetBackbone`` (torchvision
module names at any ``vision_width``; keys ``encoder.encoder.conv1.*`` …, no ``fc``) whose
``layer4`` is the patch grid; the text side is a small BERT. The default (``vision_arch`` None)
keeps hi-ml's ResNet-50 layout key for key, so the released image file loads strictly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import resnet50
from transformers import BertModel

from baselines.common.image_prep import center_crop, pil_resize_shorter, to_gray, to_tensor
from baselines.common.text_folder import bert_config, call_quietly
from benchmark.backbones import ResNetBackbone
from benchmark.io.checkpoints import CheckpointError

JOINT_FEATURE_SIZE = 128
FORMAT = "afloc-bench/biovil"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json")
# hi-ml's inference transform (``create_chest_xray_transform_for_inference``, BioViL's 480 crop)
RESIZE, CROP = 512, 480
# BioViL's global-alignment temperature (Boecking et al., ECCV 2022: InfoNCE with tau = 0.5)
TEMPERATURE = 0.5


@dataclass
class BiovilConfig:
    """What rebuilds a BioViL model trained by this project (JSON in the checkpoint's ``config.json``)."""

    vision_arch: str | None = None  # None: hi-ml's torchvision ResNet-50 (``fc`` kept); else benchmark.backbones
    vision_width: int = 64
    joint_feature_size: int = JOINT_FEATURE_SIZE
    text_config: dict[str, Any] = field(default_factory=dict)  # the BERT config (CXR-BERT's or a small one)
    resize: int = RESIZE  # input transform: shorter side to ``resize``, centre crop ``crop``, no mean/std
    crop: int = CROP
    temperature: float = TEMPERATURE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Any = None) -> BiovilConfig:
        """The config of a ``config.json``; a file of another format or with unknown fields is refused."""

        if data.get("format") != FORMAT:
            raise CheckpointError(source, f"expected a BioViL checkpoint config (format {FORMAT!r}), "
                                          f"found format {data.get('format')!r}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version", "training")}
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise CheckpointError(source, f"unknown BioViL config fields {unknown}; expected fields of BiovilConfig")
        return cls(**fields)


class _ResNetHolder(nn.Module):
    """``encoder.encoder.*``: the torchvision ResNet-50, forward = layer4 output."""

    def __init__(self) -> None:
        super().__init__()

        self.encoder = resnet50(weights=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.encoder
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


class _Projector(nn.Module):
    """``projector.model.{0,1,3}``: the 1×1-conv MLP applied to every patch."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_dim, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_dim, kernel_size=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _BackboneHolder(nn.Module):
    """``encoder.encoder.*``: an ``benchmark.backbones.ResNetBackbone`` of any depth and width, forward = layer4."""

    def __init__(self, arch: str, width: int) -> None:
        super().__init__()

        self.encoder = ResNetBackbone(arch, width)
        self.channels = self.encoder.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1]


class BioVilImageModel(nn.Module):
    def __init__(self, joint_feature_size: int = JOINT_FEATURE_SIZE, vision_arch: str | None = None,
                 vision_width: int = 64) -> None:
        super().__init__()
        if vision_arch is None:
            self.encoder: nn.Module = _ResNetHolder()
            channels = 2048
        else:
            self.encoder = _BackboneHolder(vision_arch, vision_width)
            channels = self.encoder.channels
        self.projector = _Projector(channels, joint_feature_size, joint_feature_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised patch embeddings [B,h,w,D], projected global embedding [B,D], not normalised)."""
        projected = self.projector(self.encoder(x))
        glob = projected.mean(dim=(2, 3))
        patches = F.normalize(projected, dim=1).permute(0, 2, 3, 1)
        return patches, glob


class ProjectionHead(nn.Module):
    """``cls_projection_head``: dense_to_hidden → GELU → LayerNorm → dense_to_output."""

    def __init__(self, hidden_size: int, projection_size: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden_size, projection_size)
        self.LayerNorm = nn.LayerNorm(projection_size, eps=1e-12)
        self.dense_to_output = nn.Linear(projection_size, projection_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


class CXRBert(nn.Module):
    """``bert.*`` (BERT without pooler) + ``cls_projection_head.*``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()


        cfg = {k: v for k, v in config.items() if k != "projection_size"}
        self.config = bert_config(cfg)
        self.projection_size = int(config.get("projection_size", JOINT_FEATURE_SIZE))
        self.bert = call_quietly(lambda: BertModel(self.config, add_pooling_layer=False))
        self.cls_projection_head = ProjectionHead(self.config.hidden_size, self.projection_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected ``[CLS]`` embedding [B, projection_size], not normalised."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return self.cls_projection_head(out.last_hidden_state[:, 0, :])


class BioViL(nn.Module):
    """Both towers under one module (``image.*``, ``text.*``): what this project trains and saves."""

    def __init__(self, cfg: BiovilConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = BioVilImageModel(cfg.joint_feature_size, cfg.vision_arch, cfg.vision_width)
        self.text = CXRBert({**cfg.text_config, "projection_size": cfg.joint_feature_size})


def image_input(image: Any, resize: int = RESIZE, crop: int = CROP, *, share_channels: bool = False) -> torch.Tensor:
    """hi-ml's inference transform at any size, on the image as its ``load_image`` decodes it (the
    ``hi-ml`` recipe: min–max to uint8, PIL ``L``): Resize(``resize``) (shorter side, PIL bilinear),
    CenterCrop(``crop``), ToTensor, 3 channels; no mean/std normalisation.

    ``share_channels``: the three channels are one tensor expanded (a third of the memory; the
    training data keeps every input in memory), with the same values."""

    x = center_crop(pil_resize_shorter(to_gray(image), resize), crop)
    if share_channels:
        return torch.tensor(np.asarray(x), dtype=torch.float32).div(255.0).unsqueeze(0).expand(3, -1, -1)
    return to_tensor(x, None, None)


def encode_text_input(tokenizer: Any, texts: Sequence[str], max_length: int, *, truncate: bool = False,
                      check_special: bool = True) -> dict[str, torch.Tensor]:
    """hi-ml ``TextInput``: special tokens other than [MASK] refused, trailing ``!?.`` stripped, [CLS]/[SEP]
    added, padded to the longest. Prompts longer than ``max_length`` are an error (hi-ml); training
    captions (several report sentences) are truncated to ``max_length`` instead (``truncate``)."""
    texts = list(texts)
    if check_special:
        specials = [t for t in tokenizer.all_special_tokens if t != tokenizer.mask_token]
        joined = " ".join(texts)
        bad = [t for t in specials if t in joined]
        if bad:
            raise ValueError(f"BioViL prompt contains special token(s) {bad}: {joined!r}")
    stripped = [t.rstrip("!?.") for t in texts]
    enc = tokenizer(stripped, add_special_tokens=True, padding="longest", truncation=truncate,
                    max_length=max_length if truncate else None, return_tensors="pt")
    if enc["input_ids"].shape[1] > max_length:
        raise ValueError(f"BioViL prompt of {enc['input_ids'].shape[1]} tokens exceeds the model's "
                         f"{max_length} positions")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class CaptionTokenizer:
    """Training captions → ``input_ids`` / ``attention_mask`` the way the adapter encodes prompts
    (``encode_text_input``), truncated to the text model's positions."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return encode_text_input(self.tokenizer, texts, self.max_length, truncate=True, check_special=False)


def save_checkpoint(model: BioViL, folder: Any, tokenizer_folder: Any = None,
                    extra: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (the format the ``biovil`` adapter loads) in ``folder``, plus
    the vocabulary files of ``tokenizer_folder`` (then the folder loads without ``text_encoder``)."""


    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**model.cfg.to_json(), **(extra or {})}, indent=1) + "\n")
    if tokenizer_folder is not None:
        src = Path(tokenizer_folder)
        if not (src / "vocab.txt").is_file():
            raise FileNotFoundError(f"{src}: no vocab.txt to store with the BioViL model")
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, out / f)
