"""ResNet backbones with torchvision's module names and an adjustable width.

Why not ``torchvision.models.resnet50`` directly: the demo needs a narrow network, and
torchvision fixes the stem at 64 channels. The modules here carry the same attribute names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) and the same
initialisation, so at width 64 the state dict is key-for-key and shape-for-shape the one of
torchvision (and of the official checkpoint, whose ``fc`` is an Identity without keys).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
}


class ResNetBackbone(nn.Module):
    """ResNet trunk without the classifier; exposes the stage outputs the encoder needs."""

    def __init__(self, arch: str = "resnet50", width: int = 64):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        self.arch, self.width = arch, width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        e = block.expansion
        # channels of layer2 / layer3 / layer4 outputs
        self.channels = (width * 2 * e, width * 4 * e, width * 8 * e)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (layer2, layer3, layer4) feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        l2 = self.layer2(x)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return l2, l3, l4


def load_pretrained(backbone: ResNetBackbone, source: str) -> None:
    """Initialise from torchvision ImageNet weights (``"imagenet"``) or a local state-dict file."""
    if source == "imagenet":
        if backbone.width != 64:
            raise ValueError("ImageNet weights exist only for width 64")
        import torchvision.models as tvm

        weights = getattr(tvm, TORCHVISION_WEIGHTS[backbone.arch]).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - offline machines end here
            raise RuntimeError(
                f"cannot obtain torchvision ImageNet weights for {backbone.arch} ({type(exc).__name__}: {exc}); "
                f"place the file {weights.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints or set "
                "vision.pretrained to the path of a local state-dict file") from exc
    else:
        from benchmark.io.checkpoints import read_state_dict

        state = read_state_dict(source)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: backbone weights do not fit {backbone.arch} "
                         f"(missing {sorted(missing)[:5]}..., unexpected {sorted(unexpected)[:5]}...)")
