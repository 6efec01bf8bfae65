"""ReContrast (Guo et al., NeurIPS 2023): reverse distillation with a trainable encoder and a frozen copy.

Two WideResNet-50-2 encoders see the image: ``encoder`` (fine-tuned with a small learning rate, its
BatchNorm in training mode while training) and ``encoder_freeze`` (the ImageNet network, never
updated, always in eval mode). Their three feature maps are stacked along the batch, the shared
one-class bottleneck and decoder run once on both halves, and the decoder has two sets of 1×1
output convolutions. The contrast is crossed: set 0 decoded from the *trainable* encoder's half is
compared with the *frozen* encoder's maps, set 1 decoded from the frozen half with the trainable
encoder's maps. So six pairs enter the anomaly map (three scales × two branches), not three.

Attribute names are the official ``models/recontrast.py`` ``ReContrast`` module's, so the state dict
of that module (``encoder.*``, ``encoder_freeze.*``, ``bottleneck.*``, ``decoder.*``; no ``layer4``/``fc``)
loads key for key.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from baselines.common.reverse_distillation import OneClassBottleneck, RDConfig, ReverseDecoder, make_trunk

N_PAIRS = 6


class ReContrastNet(nn.Module):
    """``forward(x)`` → ``(encoder maps, decoder maps)``, six each, paired by position: the frozen
    encoder's layer1-3 with the decoder's set 0 on the trainable half, then the trainable encoder's
    layer1-3 with set 1 on the frozen half (the official return order ``en_freeze + en, de``)."""

    def __init__(self, cfg: RDConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RDConfig()
        c = self.cfg
        self.encoder = make_trunk(c)
        self.encoder_freeze = make_trunk(c)
        self.encoder_freeze.load_state_dict(self.encoder.state_dict())  # a copy of the encoder, as at the start
        self.bottleneck = OneClassBottleneck(c.fuse_blocks, c.width)
        self.decoder = ReverseDecoder(output_heads=2, width=c.width, blocks=c.blocks)
        for p in self.encoder_freeze.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        trainable = self.encoder(x)
        with torch.no_grad():
            frozen = self.encoder_freeze(x)
        both = [torch.cat([t, f], dim=0) for t, f in zip(trainable, frozen)]
        halves = [d.chunk(2, dim=0) for d in self.decoder(self.bottleneck(both))]
        decoded = [halves[0][0], halves[1][0], halves[2][0], halves[3][1], halves[4][1], halves[5][1]]
        return list(frozen) + list(trainable), decoded

    def train(self, mode: bool = True, encoder_bn_train: bool = True) -> ReContrastNet:  # type: ignore[override]
        """As the official module: in training, the trainable encoder's BatchNorm follows
        ``encoder_bn_train`` (True in every official script) and the frozen encoder stays in eval mode."""
        self.training = mode
        self.encoder.train(mode and encoder_bn_train)
        self.encoder_freeze.train(False)
        self.bottleneck.train(mode)
        self.decoder.train(mode)
        return self
