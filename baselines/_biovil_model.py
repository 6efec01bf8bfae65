"""BioViL (Boecking et al., ECCV 2022) image and text models with hi-ml-multimodal's key names.

Image: a torchvision ResNet-50 (its ``fc`` is kept: the released file has ``fc.*`` and hi-ml
loads it strictly) whose ``layer4`` grid (2048 channels, stride 32) goes through a 1×1-conv
MLP 2048→128 (no bias) → BatchNorm → ReLU → 128→128; patch embeddings are L2-normalised over
channels; the global embedding is the spatial mean of the *projected* patches.

Text: CXR-BERT, a BERT whose ``[CLS]`` state of the last layer goes through a projection head
768→128 → GELU → LayerNorm(eps 1e-12) → 128→128. The masked-language-model head of the released
weights (``cls.predictions.*``) is not used for embeddings and not built.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

JOINT_FEATURE_SIZE = 128


class _ResNetHolder(nn.Module):
    """``encoder.encoder.*``: the torchvision ResNet-50, forward = layer4 output."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

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


class BioVilImageModel(nn.Module):
    def __init__(self, joint_feature_size: int = JOINT_FEATURE_SIZE) -> None:
        super().__init__()
        self.encoder = _ResNetHolder()
        self.projector = _Projector(2048, joint_feature_size, joint_feature_size)

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
        from transformers import BertModel

        from ._checkpoints import call_quietly
        from ._text_folder import bert_config

        cfg = {k: v for k, v in config.items() if k != "projection_size"}
        self.config = bert_config(cfg)
        self.projection_size = int(config.get("projection_size", JOINT_FEATURE_SIZE))
        self.bert = call_quietly(lambda: BertModel(self.config, add_pooling_layer=False))
        self.cls_projection_head = ProjectionHead(self.config.hidden_size, self.projection_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected ``[CLS]`` embedding [B, projection_size], not normalised."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return self.cls_projection_head(out.last_hidden_state[:, 0, :])


def remap_to_uint8(array: Any) -> Any:
    """hi-ml's ``remap_to_uint8``: global min–max to [0, 255], truncated to uint8."""
    import numpy as np

    a = np.asarray(array).astype(float)
    a -= a.min()
    mx = a.max()
    if mx > 0:
        a /= mx
    a *= 255
    return a.astype(np.uint8)
