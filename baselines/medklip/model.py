"""MedKLIP (Wu et al., ICCV 2023) rebuilt with the official key names.

Image: ResNet-50 up to ``layer3`` (``res_features`` = the first seven torchvision children),
1024×14×14 for a 224 input; each of the 196 patches goes through ``res_l1`` (1024→1024), ReLU,
``res_l2`` (1024→256). No positional encodings.

Queries: 75 entity ("disease") descriptions encoded once by a frozen BERT (the ``[CLS]`` state
of the last layer; ``[CLS]`` + word pieces, no ``[SEP]``, 64 positions), then
``disease_embedding_layer`` (768→256). The description embeddings are not in the checkpoint.

Decoder: 4 pre-norm DETR layers (self-attention over the queries, cross-attention to the
patches, FFN 256→1024→256), final LayerNorm; each layer also returns the head-averaged
cross-attention [B, Q, 196]. Head: dropout → ``classifier`` (256→2); index 1 = "present".

``MedKLIP()`` is that official model, key for key. ``MedKLIPConfig`` (JSON, saved with this
project's checkpoints) also describes smaller variants for the demo: a trunk from
``benchmark.backbones.ResNetBackbone`` cut after ``layer3`` like the official one (same
``res_features.0`` … ``res_features.6`` names), other decoder sizes, and ``entity_book``: the
75 query embeddings kept as a buffer, so a trained checkpoint carries its own queries.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.common.image_prep import IMAGENET_MEAN, IMAGENET_STD, pil_resize_exact, to_tensor
from baselines.common.text_folder import read_json
from benchmark.backbones import ResNetBackbone, load_pretrained
from benchmark.io.checkpoints import CheckpointError

ENTITIES = (
    "normal", "clear", "sharp", "sharply", "unremarkable", "intact", "stable", "free",
    "effusion", "opacity", "pneumothorax", "edema", "atelectasis", "tube", "consolidation", "process", "abnormality",
    "enlarge", "tip", "low", "pneumonia", "line", "congestion", "catheter", "cardiomegaly", "fracture", "air",
    "tortuous", "lead", "disease", "calcification", "prominence", "device", "engorgement", "picc", "clip", "elevation",
    "expand", "nodule", "wire", "fluid", "degenerative", "pacemaker", "thicken", "marking", "scar", "hyperinflate",
    "blunt", "loss", "widen", "collapse", "density", "emphysema", "aerate", "mass", "crowd", "infiltrate", "obscure",
    "deformity", "hernia", "drainage", "distention", "shift", "stent", "pressure", "lesion", "finding", "borderline",
    "hardware", "dilation", "chf", "redistribution", "aspiration", "tail_abnorm_obs", "excluded_obs",
)
N_ENTITIES = len(ENTITIES)
DESCRIPTION_MAX_LENGTH = 64  # the zero-shot test scripts (pretraining used 128)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer (``normalize_before=True`` path of the official DETR copy)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt [Q,B,D], memory [N,B,D] → (tgt, head-averaged cross-attention [B,Q,N])."""
        t2 = self.norm1(tgt)
        t2 = self.self_attn(t2, t2, value=t2, need_weights=False)[0]
        tgt = tgt + self.dropout1(t2)
        t2 = self.norm2(tgt)
        t2, attn = self.multihead_attn(query=t2, key=memory, value=memory, need_weights=True,
                                       average_attn_weights=True)
        tgt = tgt + self.dropout2(t2)
        t2 = self.norm3(tgt)
        t2 = self.linear2(self.dropout(F.relu(self.linear1(t2))))
        return tgt + self.dropout3(t2), attn


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ws = []
        for layer in self.layers:
            tgt, w = layer(tgt, memory)
            ws.append(w)
        return self.norm(tgt), ws


@dataclass
class MedKLIPConfig:
    """Everything that rebuilds a MedKLIP; the defaults are the official model."""

    backbone: str | None = None  # None: torchvision ResNet-50 (official); else an benchmark.backbones arch
    width: int = 64  # stem width of a ``backbone`` trunk
    d_model: int = 256
    nhead: int = 4
    num_layers: int = 4
    dim_feedforward: int = 1024
    text_dim: int = 768
    dropout: float = 0.1
    attribute_set_size: int = 2
    entity_book: bool = False  # the 75 query embeddings as a buffer (in the state dict)
    input_size: int | None = None  # resize the 224 input to this side inside the model (None: official)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> MedKLIPConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown MedKLIP model options {unknown}; expected some of {sorted(names)}")
        return cls(**d)


class MedKLIP(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 4, num_layers: int = 4, text_dim: int = 768,
                 dropout: float = 0.1, attribute_set_size: int = 2, *, backbone: str | None = None, width: int = 64,
                 dim_feedforward: int = 1024, entity_book: bool = False, input_size: int | None = None):
        super().__init__()
        self.cfg = MedKLIPConfig(backbone=backbone, width=width, d_model=d_model, nhead=nhead, num_layers=num_layers,
                                 dim_feedforward=dim_feedforward, text_dim=text_dim, dropout=dropout,
                                 attribute_set_size=attribute_set_size, entity_book=entity_book, input_size=input_size)
        self.disease_embedding_layer = nn.Linear(text_dim, d_model)
        self.cl_fc = nn.Linear(d_model, text_dim)  # training-only (position contrast), kept for strict loading
        self.res_features, channels = _trunk(backbone, width)
        self.res_l1 = nn.Linear(channels, channels)
        self.res_l2 = nn.Linear(channels, d_model)
        self.decoder = Decoder(DecoderLayer(d_model, nhead, dim_feedforward, dropout), num_layers, d_model)
        self.dropout_feas = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, attribute_set_size)
        if entity_book:
            self.register_buffer("entity_book", torch.zeros(N_ENTITIES, text_dim))

    @classmethod
    def from_config(cls, cfg: MedKLIPConfig) -> MedKLIP:
        return cls(**cfg.to_dict())

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,224,224] → patch features [B, 196, d_model] (row-major patches; (input_size/16)² of them
        when ``input_size`` is set: the frame is the same, the grid coarser and the model cheaper)."""
        s = self.cfg.input_size
        if s and tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        f = self.res_features(x)
        f = f.flatten(2).transpose(1, 2)
        return self.res_l2(F.relu(self.res_l1(f)))

    def decode(self, memory: torch.Tensor, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B,N,D]; queries [Q,768] (shared) or [B,Q,768], default the stored ``entity_book`` →
        (logits [B,Q,2], attention [B,Q,N] averaged over heads and the layers, as the official
        grounding script averages ``ws[-4:]``)."""
        if queries is None:
            if not self.cfg.entity_book:
                raise ValueError("this MedKLIP keeps no entity_book: pass the query embeddings")
            queries = self.entity_book
        q = self.disease_embedding_layer(queries)
        tgt = q.unsqueeze(1).repeat(1, memory.shape[0], 1) if q.dim() == 2 else q.transpose(0, 1)
        out, ws = self.decoder(tgt, memory.transpose(0, 1))
        logits = self.classifier(self.dropout_feas(out)).transpose(0, 1)
        attn = (ws[-4] + ws[-3] + ws[-2] + ws[-1]) / 4 if len(ws) >= 4 else torch.stack(ws).mean(0)
        return logits, attn


def _trunk(backbone: str | None, width: int) -> tuple[nn.Sequential, int]:
    """ResNet stem + layer1..layer3 as ``nn.Sequential`` (the official ``children()[:-3]``), and its channels."""
    if backbone is None:
        from torchvision.models import resnet50

        resnet = resnet50(weights=None)
        return nn.Sequential(*list(resnet.children())[:-3]), 1024

    b = ResNetBackbone(backbone, width)
    return nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3), b.channels[1]


def official_init(model: MedKLIP) -> None:
    """The official ``_init_weights`` applied to a fresh model before training: N(0, 0.02) for every
    Linear weight and both attention projections (biases and the ResNet trunk keep their init)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight.data.normal_(mean=0.0, std=0.02)
            m.out_proj.weight.data.normal_(mean=0.0, std=0.02)


def entity_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MedKLIP's ``loss_ce``: 2-way cross-entropy over the (image, entity) cells with a known label.

    ``logits`` [B,Q,2]; ``labels`` [B,Q] with 1 present, 0 absent, -1 unknown (masked out, as the
    official -1 "not mentioned" and 2). Computed in float32. A batch without any known label gives a
    zero loss that keeps the graph (the official code would return NaN)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    y = labels.reshape(-1).long()
    known = (y == 0) | (y == 1)
    if not bool(known.any()):
        return flat.sum() * 0.0
    return F.cross_entropy(flat[known], y[known])


def load_trunk_weights(model: MedKLIP, source: str) -> None:
    """ImageNet (``"imagenet"``) or a local state-dict file into ``res_features`` (layers up to layer3)."""

    b = ResNetBackbone(model.cfg.backbone or "resnet50", model.cfg.width if model.cfg.backbone else 64)
    load_pretrained(b, source)
    trunk = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3)
    model.res_features.load_state_dict(trunk.state_dict(), strict=True)


def preprocess_image(image: Any) -> torch.Tensor:
    """The official test transform: resize to 224×224 (PIL bilinear, aspect ratio not kept), ToTensor,
    ImageNet normalisation, on the PIL RGB image (gray input is replicated to 3 channels)."""

    return to_tensor(pil_resize_exact(image, 224, 224), IMAGENET_MEAN, IMAGENET_STD)


# -- entity descriptions -------------------------------------------------------------------
def read_descriptions(path: Any) -> list[str]:
    """The 75 descriptions of ``observation explanation.json`` in file order (checked against the entity names)."""

    data = read_json(path)
    if len(data) != N_ENTITIES or not all(isinstance(v, str) for v in data.values()):
        raise CheckpointError(path, f"expected MedKLIP's 'observation explanation.json': {N_ENTITIES} entity → "
                                    f"description strings, found {len(data)} entries")
    keys = list(data)
    # key 20 is spelt "eumonia" in the release; order is what matters
    wrong = [(i, k) for i, k in enumerate(keys) if k != ENTITIES[i] and not (i == 20 and k == "eumonia")]
    if wrong:
        raise CheckpointError(path, f"entity order differs from MedKLIP's (first: position {wrong[0][0]} is "
                                    f"{wrong[0][1]!r}, expected {ENTITIES[wrong[0][0]]!r})")
    return [data[k] for k in keys]


def tokenize_cls_only(tokenizer: Any, texts: Sequence[str], max_length: int = DESCRIPTION_MAX_LENGTH) -> dict:
    """MedKLIP's tokenizer: ``[CLS]`` + word pieces (no ``[SEP]``), truncated to ``max_length``, padded."""
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)
    ids = torch.full((len(texts), max_length), int(tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for i, row in enumerate(enc["input_ids"]):
        row = [int(tokenizer.cls_token_id)] + list(row)
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def cls_embeddings(bert: Any, enc: dict, batch: int = 16, pooling: str = "cls") -> torch.Tensor:
    """Last-layer states [N, hidden] of a frozen BERT: the ``[CLS]`` state (official), or with
    ``pooling="mean"`` the mean over the word pieces after ``[CLS]`` (the demo's randomly initialised
    encoder, whose ``[CLS]`` states barely depend on the text)."""
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
    out = []
    with torch.no_grad():
        for i in range(0, enc["input_ids"].shape[0], batch):
            dev = next(bert.parameters()).device
            mask = enc["attention_mask"][i:i + batch].to(dev)
            h = bert(input_ids=enc["input_ids"][i:i + batch].to(dev), attention_mask=mask).last_hidden_state
            if pooling == "cls":
                out.append(h[:, 0, :])
            else:
                m = mask.clone()
                m[:, 0] = 0
                m = m.to(h.dtype).unsqueeze(-1)
                out.append((h * m).sum(1) / m.sum(1).clamp(min=1.0))
    return torch.cat(out)
