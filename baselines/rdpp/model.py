"""RD++ (Tien et al., CVPR 2023, "Revisiting Reverse Distillation for Anomaly Detection").

Reverse distillation (WideResNet-50-2 teacher, one-class bottleneck, mirrored student decoder) with a
*multi-projection layer* between the teacher and the bottleneck: one small convolutional network per
scale (four 3×3 convolutions, each followed by InstanceNorm without affine parameters and LeakyReLU)
trained with self-supervised optimal-transport, reconstruction and contrast losses so that the
projected features of noised images stay close to those of normal ones. At test time:
``encoder(x)`` → projection → bottleneck → decoder, and the anomaly map compares the *encoder* maps
(not the projected ones) with the decoder maps, three pairs.

Attribute names follow the official file written by ``main.py``: ``{'proj': MultiProjectionLayer,
'bn': BN_layer, 'decoder': de_wide_resnet50_2}`` state dicts become ``proj.*``, ``bn.*``,
``decoder.*`` here; the encoder (``encoder.*``) is the ImageNet network, which the official code
never saves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from baselines.common.reverse_distillation import (
    SCALE_CHANNELS,
    OneClassBottleneck,
    RDConfig,
    ReverseDecoder,
    make_trunk,
)

N_PAIRS = 3
PARTS = ("proj", "bn", "decoder")  # the official checkpoint's entries (the encoder is not saved)


class ScaleProjection(nn.Module):
    """The official ``ProjLayer(in_c, out_c)``: C → C/2 → C/4 → C/2 → out, 3×3 convolutions with bias,
    each followed by ``InstanceNorm2d`` (no affine, no running statistics) and ``LeakyReLU(0.01)``."""

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        widths = [in_c, in_c // 2, in_c // 4, in_c // 2, out_c]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, kernel_size=3, stride=1, padding=1), nn.InstanceNorm2d(b), nn.LeakyReLU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MultiScaleProjection(nn.Module):
    """The official ``MultiProjectionLayer(base=64)``: ``proj_a``, ``proj_b``, ``proj_c`` for the 256-,
    512- and 1024-channel maps."""

    def __init__(self, channels: Sequence[int] = SCALE_CHANNELS) -> None:
        super().__init__()
        a, b, c = channels
        self.proj_a = ScaleProjection(a, a)
        self.proj_b = ScaleProjection(b, b)
        self.proj_c = ScaleProjection(c, c)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.proj_a(feats[0]), self.proj_b(feats[1]), self.proj_c(feats[2])]


class RDPlusPlusNet(nn.Module):
    """``forward(x)`` → ``(encoder maps, decoder maps)``, three each, paired by position (layer1-3)."""

    def __init__(self, cfg: RDConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RDConfig()
        c = self.cfg
        self.encoder = make_trunk(c)
        self.proj = MultiScaleProjection(c.channels)
        self.bn = OneClassBottleneck(c.fuse_blocks, c.width)
        self.decoder = ReverseDecoder(output_heads=0, width=c.width, blocks=c.blocks)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.encoder(x)
        return feats, self.decoder(self.bn(self.proj(feats)))

    def train(self, mode: bool = True) -> RDPlusPlusNet:  # type: ignore[override]
        """The encoder (the fixed teacher) stays in eval mode, as ``main.py`` keeps it."""
        super().train(mode)
        self.encoder.train(False)
        return self
