"""ConVIRT (Zhang et al., 2020) in the layout of ViLMedic's re-implementation (there is no official code or weights).

Modules and key names follow ViLMedic's ``ConVIRT`` (``vilmedic/models/selfsup/conVIRT.py``):
``visual.model.{0..8}`` = torchvision ResNet-50 children up to ``avgpool`` (older ViLMedic
releases name it ``visual.cnn``), ``linguistic.encoder.*`` = a transformers text encoder with
its pooler, ``vis_proj`` = Linear(2048, P) → ReLU → Linear(P, P) and ``lin_proj`` =
Linear(T, P) → ReLU → Linear(P, P). Image embedding = ``vis_proj`` of the pooled ``layer4``;
text embedding = ``lin_proj`` of the pooler output (RoBERTa: dense + tanh on ``<s>``).

Checkpoints trained by this project use the same modules and keys, saved as
``model.safetensors`` with a ``config.json`` (``ConvirtConfig``) and, when the text side was
trained here, the tokenizer files it was trained with (so no ``text_encoder`` option is needed).

Small variant (the demo, ``baselines.convirt.task``): ``vision_arch`` names an
``benchmark.backbones.ResNetBackbone`` (torchvision module names at any ``vision_width``, keys
``visual.model.conv1.*`` ...) instead of ViLMedic's ResNet-50 ``Sequential``; its ``layer4`` is the
heatmap grid. The default (``vision_arch`` None) keeps the ViLMedic layout key for key.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models import resnet50

from baselines.common.image_prep import IMAGENET_MEAN, IMAGENET_STD, pil_resize_exact, to_tensor
from baselines.common.text_folder import bert_config, call_quietly, roberta_config
from benchmark.backbones import ResNetBackbone

FORMAT = "afloc-bench/convirt"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "vocab.json", "merges.txt")


@dataclass
class ConvirtConfig:
    text_kind: str = "roberta"  # "roberta" (ViLMedic: allenai/biomed_roberta_base) or "bert"
    text_config: dict[str, Any] = field(default_factory=dict)  # transformers config.json content
    proj_dim: int = 768
    visual_dim: int = 2048
    pooling: str = "pooler"  # "pooler" (ViLMedic), "cls" or "mean"
    max_length: int = 128
    # ViLMedic tokenizes reports as a "src" sequence: no <s>/</s> (so its pooler reads the first word piece)
    add_special_tokens: bool = False
    text_processing: str = "none"  # "r2gen": ViLMedic's report cleaning (configs after 2022 set it)
    tau: float = 0.1
    lambda_: float = 0.75
    # None: ViLMedic's torchvision ResNet-50 (``visual.model.0..8``); else an benchmark.backbones arch
    vision_arch: str | None = None
    vision_width: int = 64
    # embeddings + this many first BERT layers take no gradient (ConVIRT paper: 6); training only
    text_frozen_layers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 2, **asdict(self)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConvirtConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class _Visual(nn.Module):
    """ViLMedic's trunk: torchvision ResNet-50 children up to ``avgpool`` in one ``Sequential``."""

    channels = 2048

    def __init__(self) -> None:
        super().__init__()

        net = resnet50(weights=None)
        children = []
        for name, child in net.named_children():
            children.append(child)
            if name == "avgpool":
                break
        self.model = nn.Sequential(*children)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, 2048], layer4 grid [B, 2048, h, w])."""
        grid = self.model[:-1](x)
        return self.model[-1](grid).flatten(1), grid


class _BackboneVisual(nn.Module):
    """A ResNet of any depth and width (``benchmark.backbones``), pooled like ViLMedic's ``avgpool``."""

    def __init__(self, arch: str, width: int) -> None:
        super().__init__()

        self.model = ResNetBackbone(arch, width)
        self.channels = self.model.channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, C], layer4 grid [B, C, h, w])."""
        grid = self.model(x)[-1]
        return grid.mean(dim=(2, 3)), grid


class _Linguistic(nn.Module):
    def __init__(self, cfg: ConvirtConfig) -> None:
        super().__init__()

        if cfg.text_kind == "roberta":
            from transformers import RobertaModel

            self.encoder = call_quietly(lambda: RobertaModel(roberta_config(cfg.text_config)))
        elif cfg.text_kind == "bert":
            from transformers import BertModel

            self.encoder = call_quietly(lambda: BertModel(bert_config(cfg.text_config)))
        else:
            raise ValueError(f"ConVIRT text_kind {cfg.text_kind!r}: expected roberta or bert")
        self.pooling = cfg.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
        if self.pooling == "max":  # the ConVIRT paper: max over the last layer's token outputs
            h = out.last_hidden_state
            pad = attention_mask.unsqueeze(-1) == 0
            return h.masked_fill(pad, torch.finfo(h.dtype).min).max(dim=1).values
        raise ValueError(f"ConVIRT pooling {self.pooling!r}: expected pooler, cls, mean or max")

    def freeze(self, n_layers: int) -> None:
        """Embeddings and the first ``n_layers`` encoder layers take no gradient (ConVIRT paper)."""
        if n_layers <= 0:
            return
        enc = self.encoder
        layers = enc.encoder.layer
        if n_layers > len(layers):
            raise ValueError(f"text_frozen_layers {n_layers}: the text encoder has {len(layers)} layers")
        for module in [enc.embeddings, *layers[:n_layers]]:
            for p in module.parameters():
                p.requires_grad_(False)


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.Linear(d, d))


class ConVIRT(nn.Module):
    def __init__(self, cfg: ConvirtConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.linguistic = _Linguistic(cfg)
        self.visual = _Visual() if cfg.vision_arch is None else _BackboneVisual(cfg.vision_arch, cfg.vision_width)
        if self.visual.channels != cfg.visual_dim:
            trunk = f"{cfg.vision_arch or 'resnet50'} width {cfg.vision_width}"
            raise ValueError(f"ConVIRT visual_dim {cfg.visual_dim} does not match the vision trunk "
                             f"({trunk}: {self.visual.channels} channels)")
        text_dim = int(cfg.text_config.get("hidden_size", 768))
        self.vis_proj = _mlp(cfg.visual_dim, cfg.proj_dim)
        self.lin_proj = _mlp(text_dim, cfg.proj_dim)
        self.linguistic.freeze(cfg.text_frozen_layers)

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embedding [B, P], ``vis_proj`` applied at every ``layer4`` location [B, h, w, P])."""
        pooled, grid = self.visual(x)
        dense = self.vis_proj(grid.permute(0, 2, 3, 1))
        return self.vis_proj(pooled), dense

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The training objective's image vector ``v`` (no dense map)."""
        return self.vis_proj(self.visual(x)[0])

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lin_proj(self.linguistic(input_ids, attention_mask))


# ViLMedic's zoo-era class named the visual trunk ``cnn``.
VILMEDIC_RENAMES = ((r"^visual\.cnn\.", "visual.model."),)


_R2GEN_SENT_STRIP = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def r2gen_clean(text: str) -> str:
    """ViLMedic's ``r2gen_clean_report`` behaviour: collapse repeated ``_``/spaces/``..``, drop list
    numbers, split sentences on ". ", lower-case, delete quotes, slashes and the characters of its
    regular expression (whose ``:-\\[`` is a range, so ``<=>?@`` go too), join with " . " and end " .".
    """
    t = text.replace("\n", " ")
    for _ in range(7):
        t = t.replace("__", "_")
    for _ in range(6):
        t = t.replace("  ", " ")
    for _ in range(8):
        t = t.replace("..", ".")
    for a, b in (("1. ", ""), (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
                 (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". ")):
        t = t.replace(a, b)
    sents = t.strip().lower().split(". ")

    def clean(s: str) -> str:
        s = s.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
        return _R2GEN_SENT_STRIP.sub("", s)

    tokens = [clean(s) for s in sents]
    if tokens == [""]:
        return ""
    return " ".join((" . ".join(tokens) + " .").split())  # ViLMedic splits and re-joins on spaces


def image_input(image: Any) -> torch.Tensor:
    """ViLMedic's evaluation transform (the adapter's input, and the training input of this project):
    the PIL RGB image (gray is replicated), ``Resize((224, 224))`` (PIL bilinear, aspect ratio not kept),
    ToTensor, ImageNet normalisation."""

    return to_tensor(pil_resize_exact(image, 224, 224), IMAGENET_MEAN, IMAGENET_STD)


class CaptionTokenizer:
    """Texts → ``input_ids`` / ``attention_mask`` the way the adapter encodes prompts (optional r2gen
    cleaning, special tokens as configured, padded and truncated to ``max_length``)."""

    def __init__(self, tokenizer: Any, cfg: ConvirtConfig) -> None:
        self.tokenizer, self.cfg = tokenizer, cfg

    def __call__(self, texts: Any) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        texts = [r2gen_clean(t) if cfg.text_processing == "r2gen" else t for t in texts]
        enc = self.tokenizer(list(texts), add_special_tokens=cfg.add_special_tokens, padding="max_length",
                             truncation=True, max_length=cfg.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def save_checkpoint(model: ConVIRT, folder: Any, tokenizer_folder: Any = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` (the format ``convirt`` loads) into ``folder``,
    plus the tokenizer files of ``tokenizer_folder`` (then the folder loads without ``text_encoder``)."""


    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**model.cfg.to_json(), **(extra or {})}, indent=1))
    if tokenizer_folder is not None:
        src = Path(tokenizer_folder)
        copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        if not any(f in copied for f in ("vocab.txt", "vocab.json")):
            raise FileNotFoundError(f"{src}: no tokenizer vocabulary (vocab.txt or vocab.json) to store with the model")
        for f in copied:
            shutil.copy2(src / f, out / f)
