"""The reverse-distillation family (RD4AD, RD++, ReContrast): what RD++ and ReContrast share.

A WideResNet-50-2 encoder (layers 1-3) gives three feature maps; a one-class bottleneck (OCBE, with
multi-scale feature fusion) folds them into one small map; a decoder that mirrors the encoder (a
ResNet run backwards: transposed 2×2 convolutions where the encoder strides) rebuilds the three
maps. Trained on normal images only, the decoder fails where the image is abnormal. The anomaly map
is, per encoder/decoder pair, ``1 - cos(encoder feature, decoder feature)`` over channels, bilinearly
upsampled (``align_corners=True``) to the input size and summed over the pairs (three scales; six for
ReContrast's two crossed branches), then smoothed with a Gaussian (scipy, σ 4); the image score is the
maximum of the smoothed map.

Module and parameter names follow the official code (``BN_layer`` of ``model(s)/resnet.py`` and the
``de_resnet.py`` decoder), so the official state dicts load key for key; the encoder is torchvision's
WideResNet-50-2, the network the official code copies. Written from the papers and the official
repositories' behaviour (``guojiajeremy/ReContrast`` @381ef13, ``tientrandinh/Revisiting-Reverse-
Distillation`` @7f2ceb7); equality is measured in docs/parity.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torchvision.models.resnet import Bottleneck, ResNet, conv1x1, conv3x3

from baselines.common.adapter import BaselineAdapter
from baselines.common.image_prep import IMAGENET_MEAN, IMAGENET_STD
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Query
from benchmark.io.checkpoints import (
    CheckpointError,
    KeyReport,
    load_checked,
    need_file,
    read_state_dict,
    read_tensors,
    state_dict_from,
    strip_prefix,
)
from benchmark.training.task import TrainTask

log = logging.getLogger(__name__)

EXPANSION = 4  # Bottleneck.expansion
WIDE = 128  # WideResNet-50-2: width_per_group 64 * 2
SCALE_CHANNELS = (256, 512, 1024)  # layer1, layer2, layer3 outputs of the encoder (and the decoder's outputs)
OFFICIAL_SIGMA = 4.0  # scipy.ndimage.gaussian_filter(anomaly_map, sigma=4) in both official evaluations
OFFICIAL_SIZE = 256  # both official medical / MVTec settings: 256×256 input, the map at 256×256
IMAGENET_FILE = "wide_resnet50_2-95faca4d.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE} (torchvision's IMAGENET1K_V1 weights)"
PROMPTS_IGNORED = "ignored (anomaly detector: one map and one score per image, the same for every prompt)"


# -- networks ------------------------------------------------------------------------------------------
@dataclass
class RDConfig:
    """The network's size; the defaults are the official WideResNet-50-2 (every official weight file fits
    them). ``width`` scales every channel count (64: official) and ``blocks`` the blocks of encoder layer1-3
    (the decoder's stages take the same counts, as the official decoder does); smaller values give the
    demo's CPU-sized variant of the same architecture. Saved in a checkpoint folder's ``config.json``."""

    backbone: str = "wide_resnet50_2"
    width: int = 64
    blocks: tuple[int, int, int] = (3, 4, 6)
    fuse_blocks: int = 3  # residual blocks of the one-class bottleneck
    image_size: int = OFFICIAL_SIZE  # the input side the network was trained at (the adapter's default)
    loss: dict[str, Any] = field(default_factory=dict)  # the training objective's settings (recorded only)

    def __post_init__(self) -> None:
        if self.backbone != "wide_resnet50_2":
            raise ValueError(f"backbone {self.backbone!r}: only wide_resnet50_2 (scaled by width and blocks) exists")
        self.blocks = tuple(int(b) for b in self.blocks)  # type: ignore[assignment]
        if len(self.blocks) != 3 or min(self.blocks) < 1 or int(self.width) < 4 or int(self.fuse_blocks) < 1:
            raise ValueError(f"invalid network size: width {self.width}, blocks {self.blocks}, "
                             f"fuse_blocks {self.fuse_blocks}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size {self.image_size}: expected a multiple of 32")

    @property
    def official(self) -> bool:
        return (self.width, self.blocks, self.fuse_blocks) == (64, (3, 4, 6), 3)

    @property
    def channels(self) -> tuple[int, int, int]:
        """Channels of the encoder's layer1-3 outputs (official: 256, 512, 1024)."""
        return (4 * self.width, 8 * self.width, 16 * self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RDConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown network options {unknown}")
        return cls(**dict(d))


def make_trunk(cfg: RDConfig | None) -> nn.Module:
    """The official trunk (torchvision's WideResNet-50-2, ImageNet-loadable) or a scaled copy of it."""
    if cfg is None or cfg.official:
        return WideResNetTrunk()
    return ScaledTrunk(cfg.width, cfg.blocks)


class WideResNetTrunk(ResNet):
    """torchvision's WideResNet-50-2 up to ``layer3``: returns the outputs of layer1, layer2, layer3.

    The architecture and key names of ``torchvision.models.wide_resnet50_2``; ``layer4`` and ``fc`` are
    not built, as ReContrast removes them (``encoder.layer4 = None``), so the state dict has no such keys.
    RD++'s encoder keeps them but never uses their output, and never saves the encoder."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3], width_per_group=WIDE)
        self.layer4 = None
        self.fc = None

    def _make_layer(self, block: type[Bottleneck], planes: int, blocks: int, stride: int = 1,  # type: ignore[override]
                    dilate: bool = False) -> nn.Sequential:
        if planes == 512:  # layer4: not part of the trunk, so not built (and not initialised) at all
            return nn.Sequential()
        return super()._make_layer(block, planes, blocks, stride, dilate)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        return [a, b, c]


class ScaledTrunk(nn.Module):
    """WideResNet-50-2's layout up to ``layer3`` at another width and depth (same key names): a stem of
    ``width`` channels, then stages of wide bottleneck blocks with ``width``, ``2·width``, ``4·width`` planes."""

    def __init__(self, width: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, blocks[0], 1)
        self.layer2 = self._make_layer(2 * width, blocks[1], 2)
        self.layer3 = self._make_layer(4 * width, blocks[2], 2)
        _init_like_official(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            down = nn.Sequential(conv1x1(self.inplanes, planes * EXPANSION, stride),
                                 nn.BatchNorm2d(planes * EXPANSION))
        layers = [Bottleneck(self.inplanes, planes, stride, down, base_width=WIDE)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes, base_width=WIDE) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    forward = WideResNetTrunk.forward


def _init_like_official(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) for ``Conv2d``, ones/zeros for BatchNorm; transposed convolutions
    and biases keep PyTorch's defaults (the official bottleneck and decoder initialise so)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class OneClassBottleneck(nn.Module):
    """OCBE with multi-scale feature fusion (the official ``BN_layer(Bottleneck, 3)`` of WideResNet-50-2).

    The layer1 map goes through two stride-2 3×3 convolutions, the layer2 map through one; both meet
    the layer3 map, the three are concatenated (3 × 1024 channels) and a stride-2 residual stage of
    three wide bottleneck blocks gives a 2048-channel map at 1/32 of the input. ``conv4``/``bn4`` exist
    in the official module (and its state dict) but are never used."""

    def __init__(self, blocks: int = 3, width: int = 64) -> None:
        super().__init__()
        c1, c2, c3 = 4 * width, 8 * width, 16 * width  # official: SCALE_CHANNELS
        inplanes, planes = 3 * c3, 8 * width
        down = nn.Sequential(conv1x1(inplanes, planes * EXPANSION, 2), nn.BatchNorm2d(planes * EXPANSION))
        layers = [Bottleneck(inplanes, planes, 2, down, base_width=WIDE)]
        layers += [Bottleneck(planes * EXPANSION, planes, base_width=WIDE) for _ in range(1, blocks)]
        self.bn_layer = nn.Sequential(*layers)
        self.conv1 = conv3x3(c1, c2, 2)
        self.bn1 = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c2, c3, 2)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = conv3x3(c2, c3, 2)
        self.bn3 = nn.BatchNorm2d(c3)
        self.conv4 = conv1x1(2 * planes * EXPANSION, planes * EXPANSION, 1)
        self.bn4 = nn.BatchNorm2d(planes * EXPANSION)
        _init_like_official(self)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        a = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(feats[0]))))))
        b = self.relu(self.bn3(self.conv3(feats[1])))
        return self.bn_layer(torch.cat([a, b, feats[2]], 1)).contiguous()


class DecoderBottleneck(nn.Module):
    """A bottleneck block run backwards: where the encoder's block strides, a 2×2 transposed convolution
    (stride 2) doubles the resolution; the shortcut ``upsample`` does the same with a 2×2 transposed
    convolution and BatchNorm."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, upsample: nn.Module | None = None,
                 base_width: int = WIDE) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = (nn.ConvTranspose2d(width, width, kernel_size=2, stride=2, bias=False) if stride == 2
                      else conv3x3(width, width))
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * EXPANSION)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.upsample(x) if self.upsample is not None else x
        return self.relu(out + identity)


class ReverseDecoder(nn.Module):
    """The student decoder (the official ``de_wide_resnet50_2``): three stages of 3, 4 and 6 decoder
    blocks (widths as WideResNet-50-2's layer3, layer2, layer1), each doubling the resolution.

    Returns the maps that pair with the encoder's ``[layer1, layer2, layer3]``, in that order.
    With ``output_heads=k`` (ReContrast: 2) each output goes through k sets of 1×1 convolutions
    (``out1``/``out2``/``out3``) and the result lists set 0's three maps, then set 1's, ..."""

    def __init__(self, output_heads: int = 0, width: int = 64, blocks: Sequence[int] = (3, 4, 6)) -> None:
        super().__init__()
        self.inplanes = 8 * width * EXPANSION
        self.layer1 = self._make_layer(4 * width, blocks[0])
        self.layer2 = self._make_layer(2 * width, blocks[1])
        self.layer3 = self._make_layer(width, blocks[2])
        self.output_heads = int(output_heads)
        c1, c2, c3 = 4 * width, 8 * width, 16 * width  # official: SCALE_CHANNELS
        if self.output_heads > 0:
            self.out1, self.out2, self.out3 = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(self.output_heads):
                self.out1.append(nn.Conv2d(c1, c1, 1))
                self.out2.append(nn.Conv2d(c2, c2, 1))
                self.out3.append(nn.Conv2d(c3, c3, 1))
        _init_like_official(self)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        up = nn.Sequential(nn.ConvTranspose2d(self.inplanes, planes * EXPANSION, kernel_size=2, stride=2, bias=False),
                           nn.BatchNorm2d(planes * EXPANSION))
        layers = [DecoderBottleneck(self.inplanes, planes, 2, up)]
        self.inplanes = planes * EXPANSION
        layers += [DecoderBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c = self.layer1(x)  # pairs with the encoder's layer3 (1024 channels)
        b = self.layer2(c)
        a = self.layer3(b)  # pairs with layer1 (256 channels)
        if self.output_heads == 0:
            return [a, b, c]
        out = []
        for i in range(self.output_heads):
            out += [self.out1[i](a), self.out2[i](b), self.out3[i](c)]
        return out


# -- anomaly maps and scores -----------------------------------------------------------------------------
def scale_distances(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor],
                    size: int | tuple[int, int]) -> list[torch.Tensor]:
    """Per pair of maps: ``1 - cos`` over channels (``F.cosine_similarity``, eps 1e-8), upsampled bilinearly
    with ``align_corners=True`` to ``size``; float32 ``[B, H, W]`` each, in the order of the pairs."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for e, d in zip(encoder_feats, decoder_feats, strict=True):
        dist = 1 - F.cosine_similarity(e, d)
        out.append(F.interpolate(dist.unsqueeze(1), size=size, mode="bilinear", align_corners=True)[:, 0])
    return out


def raw_anomaly_map(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor],
                    size: int | tuple[int, int]) -> np.ndarray:
    """The official ``cal_anomaly_map(..., amap_mode='a')``, batched: the float32 per-pair maps added in
    order into float64 zeros. ``[B, H, W]`` float64, before smoothing."""
    maps = scale_distances(encoder_feats, decoder_feats, size)
    total = np.zeros(tuple(maps[0].shape), dtype=np.float64)
    for m in maps:
        total += m.detach().float().cpu().numpy()
    return total


def smooth_maps(maps: np.ndarray, sigma: float = OFFICIAL_SIGMA) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(map, sigma)`` on each ``[H, W]`` map (mode ``reflect``, truncate 4),
    in float64; ``sigma <= 0`` leaves the maps as they are."""
    maps = np.asarray(maps, dtype=np.float64)
    if sigma <= 0:
        return maps.copy()
    return np.stack([gaussian_filter(m, sigma=sigma) for m in maps])


REDUCTIONS = ("max", "mean")


def image_scores(maps: np.ndarray, reduction: str = "max") -> np.ndarray:
    """The image anomaly score of each map: its maximum (``evaluation_noseg(reduction='max')``, the
    official default; RD++'s only score) or its mean (ReContrast's ISIC script). float64 ``[B]``."""
    maps = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if reduction == "max":
        return maps.max(axis=1)
    if reduction == "mean":
        return maps.mean(axis=1)
    raise ValueError(f"reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")


# -- preprocessing ------------------------------------------------------------------------------------------
def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` from a gray or RGB(A) array (gray replicated, as PIL's ``convert('RGB')``)."""
    img = np.asarray(image)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return np.ascontiguousarray(img[:, :, :3])
    raise ValueError(f"expected a gray (H, W) or colour (H, W, 3) image, got shape {img.shape}")


def pil_resize_normalise(image: np.ndarray, size: int) -> torch.Tensor:
    """ReContrast's ``get_data_transforms(size, size)`` on a PIL RGB image: ``Resize((size, size))`` (PIL
    bilinear), ``ToTensor``, ``CenterCrop(size)`` (no-op), ImageNet ``Normalize``; float32 ``[3, size, size]``."""
    from PIL import Image

    rgb = as_rgb(image)
    resized = np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return x.sub(mean).div(std)


def cv2_float_resize_normalise(image: np.ndarray, size: int) -> torch.Tensor:
    """RD++'s test transform on ``cv2.cvtColor(cv2.imread(path), BGR2RGB)``: ``/255.`` in float64,
    ``cv2.resize(img, (size, size))`` (bilinear, on the float image), ImageNet mean/std in float64, then
    channels first and ``.float()``; float32 ``[3, size, size]``."""
    import cv2

    img = as_rgb(image) / 255.0
    img = cv2.resize(img, (size, size))
    img = (img - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()


# -- weights ------------------------------------------------------------------------------------------------
def load_imagenet_trunk(trunk: WideResNetTrunk, path: str | os.PathLike, option: str) -> KeyReport:
    """torchvision's WideResNet-50-2 ImageNet state dict (``wide_resnet50_2-95faca4d.pth``, the file the
    official code downloads) into ``trunk``; ``layer4.*`` and ``fc.*`` are ignored on purpose."""
    p = need_file(path, "the ImageNet WideResNet-50-2 weights (torchvision state dict)", IMAGENET_URL, option=option)
    sd = read_state_dict(p)
    return load_checked(trunk, sd, source=p, expected="torchvision wide_resnet50_2 ImageNet weights",
                        ignore=[r"layer4\..*", r"fc\..*"])


def read_weights(path: str | os.PathLike, parts: dict[str, str], expected: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``.safetensors`` or a torch file read with ``weights_only=True``), flat
    with the module's prefixes. Two layouts: a flat state dict (possibly under ``model``/``state_dict``,
    ``module.`` prefixes of a multi-GPU run removed), or a dict of per-part state dicts as RD++'s
    ``main.py`` saves (``{'proj': ..., 'bn': ..., 'decoder': ...}``), each entry named in ``parts``
    (entry → prefix); other top-level entries of such a dict (an epoch, an optimiser) are not weights
    and are left out, with a log line."""
    raw = read_tensors(path, expected=expected)
    if isinstance(raw, Mapping) and any(k in parts for k in raw):
        out: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            if key not in parts:
                log.info("%s: entry %r is not a part of the model; left out", path, key)
                continue
            sd = state_dict_from(value, path, containers=(), expected=f"{expected}: a state dict under {key!r}")
            out.update({f"{parts[key]}.{k}": v for k, v in strip_prefix(sd, "module.").items()})
        return out
    sd = state_dict_from(raw, path, containers=("model", "state_dict"), expected=expected)
    return strip_prefix(sd, "module.")


def build_network(factory: Any, random_init: bool) -> nn.Module:
    """``factory()`` with its (seeded) random initialisation, or, when every tensor is about to be loaded
    from files, built on the meta device and given uninitialised CPU storage (no time spent drawing
    145 M random numbers). The loaders below account for every key, so nothing stays uninitialised."""
    if random_init:
        return factory()
    with torch.device("meta"):
        net = factory()
    return net.to_empty(device="cpu")


# -- checkpoint folders of the shared trainer ---------------------------------------------------------------
def folder_of(checkpoint: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder ``checkpoint`` names (the folder, or its ``model.safetensors`` beside a
    ``config.json``), None for a single weights file (the official layouts)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        return path.parent
    return None


def load_folder(folder: Path, factory: Any, folder_format: str) -> tuple[nn.Module, RDConfig, KeyReport]:
    """(network, its config, key report) of a folder written by the training task (``save``): ``config.json``
    of format ``folder_format`` with the network's ``RDConfig`` under ``model``, every tensor in
    ``model.safetensors`` (the encoders included), loaded strictly."""
    expected = f"a checkpoint folder (config.json of format {folder_format!r}, model.safetensors)"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(folder, f"no config.json; expected {expected}")
    try:
        doc = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(cfg_path, f"not JSON ({exc}); expected {expected}") from None
    if not isinstance(doc, dict) or doc.get("format") != folder_format or not isinstance(doc.get("model"), dict):
        got = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(cfg_path, f"format {got!r}; expected {expected}")
    try:
        cfg = RDConfig.from_dict(doc["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"cannot build the network from its config ({exc})") from None
    net = build_network(lambda: factory(cfg), random_init=False)
    sd = read_tensors(folder / "model.safetensors", expected=expected)
    report = load_checked(net, sd, source=folder / "model.safetensors", expected=expected)
    return net, cfg, report


# -- the adapter both models share --------------------------------------------------------------------------
class AnomalyMapAdapter(BaselineAdapter):
    """An unsupervised anomaly detector as a benchmark model: one anomaly map and one image score per
    image, whatever the prompt (prompts are accepted and ignored; ``describe()`` says so).

    ``encode_images`` runs the network and computes the smoothed anomaly map at the input resolution
    (the native grid of the official code: 256×256, ``input_geometry`` ``resize:256x256``) and its image
    score; ``similarity_map`` returns the map for every prompt, ``score`` the image anomaly score (the
    official one: higher = more abnormal; not a probability, so only rank-based metrics such as AUROC
    are meaningful; a 0.5 cut-off is not).

    Options shared by ``recontrast`` and ``rdpp``: ``imagenet`` (local torchvision WideResNet-50-2
    ImageNet weights), ``sigma`` (Gaussian σ of the map, default 4 as official; 0 = the raw summed map),
    ``reduction`` (``max``, official, or ``mean``), ``image_size`` (default 256, official), ``random_init``,
    ``seed``.
    """

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    needs_checkpoint = False  # without --ckpt: the demo weights (demo_weights in the manifest)
    input_geometry = f"resize:{OFFICIAL_SIZE}x{OFFICIAL_SIZE}"
    n_pairs = 3  # encoder/decoder map pairs summed into the map

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.imagenet_key_report: KeyReport | None = None
        self.image_size = int(self.opt("image_size", OFFICIAL_SIZE))
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"model option image_size={self.image_size}: expected a multiple of 32 (at least 32)")
        self.sigma = float(self.opt("sigma", OFFICIAL_SIGMA))
        self.reduction = self.opt_choice("reduction", "max", REDUCTIONS)
        self._set_size(self.image_size)

    def _set_size(self, size: int) -> None:
        self.image_size = int(size)
        cls = type(self)
        self.input_geometry = f"resize:{size}x{size}"
        self.preprocessing_id = cls.preprocessing_id if size == OFFICIAL_SIZE else f"{cls.preprocessing_id}-size{size}"

    def load_trained_folder(self, folder: Path, factory: Any, folder_format: str) -> nn.Module:
        """A folder of the training task: the network and its key report; its ``image_size`` becomes the
        input size unless the ``image_size`` option is given."""
        net, cfg, self.key_report = load_folder(folder, factory, folder_format)
        if self.opt("imagenet"):
            log.info("%s: option imagenet not used, the checkpoint folder carries the encoder(s)", folder)
        if self.opt("image_size") is None:
            self._set_size(cfg.image_size)
        self.net_config = cfg
        return net

    def weights_fingerprint(self) -> str | None:
        """Without a checkpoint (``random_init``) but with ``imagenet``: the ImageNet file's content, which
        the model id (holding only its path) does not name."""
        imagenet = self.opt("imagenet")
        if not imagenet:
            return None
        from benchmark.cache import checkpoint_sha256

        return f"seed={self.opt('seed', 0)};imagenet={checkpoint_sha256(imagenet)}"

    # -- the network: set by the subclass ------------------------------------------------------------------
    def features(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(encoder maps, decoder maps), paired by position."""
        raise NotImplementedError

    # -- the contract --------------------------------------------------------------------------------------
    def encode_images(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{"map": float32 [B, H, W] smoothed anomaly map, "score": float64 [B]}``."""
        with torch.no_grad():
            x = batch.to(self.device)
            enc, dec = self.features(x)
            raw = raw_anomaly_map(enc, dec, tuple(x.shape[-2:]))
        smoothed = smooth_maps(raw, self.sigma)
        scores = image_scores(smoothed, self.reduction)
        return {"map": torch.from_numpy(smoothed.astype(np.float32)), "score": torch.from_numpy(scores)}

    def encode_texts(self, queries: Sequence[Query]) -> torch.Tensor:
        """One empty row per query: the prompts do not enter the model."""
        return torch.zeros(len(queries), 1)

    def similarity_map(self, image_emb: dict[str, Any], text_emb: Any) -> np.ndarray:
        return image_emb["map"].float().cpu().numpy()

    def score(self, image_emb: dict[str, Any], positive: Any, negative: Any) -> np.ndarray:
        return image_emb["score"].double().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        n = self.image_size
        d["prompts"] = PROMPTS_IGNORED
        d["map"] = (f"sum over {self.n_pairs} encoder/decoder pairs of 1 - cosine, bilinear (align_corners) to the "
                    f"{n}x{n} input, Gaussian sigma {self.sigma:g} (scipy); native grid {n}x{n}")
        d["score"] = f"{self.reduction} of the smoothed anomaly map (official image anomaly score; not a probability)"
        if self.imagenet_key_report is not None:
            d["imagenet_key_report"] = self.imagenet_key_report.as_dict()
        return d


# -- the distillation loss both models train with -------------------------------------------------------------
def flat_cosine_loss(encoder_feats: Sequence[torch.Tensor], decoder_feats: Sequence[torch.Tensor],
                     detach_encoder: bool = True) -> torch.Tensor:
    """Reverse distillation's loss: over the pairs, ``mean_b(1 - cos(flat(encoder map_b), flat(decoder map_b)))``
    with each map flattened whole (channels and positions), summed over the pairs in order. ReContrast's
    ``global_cosine`` stops the gradient at the encoder map (``detach_encoder=True``); RD++'s ``loss_fucntion``
    does not (its encoder is not optimised, so only the encoder's unused gradients differ)."""
    loss = torch.zeros((), device=decoder_feats[0].device)
    for e, d in zip(encoder_feats, decoder_feats, strict=True):
        e = e.detach() if detach_encoder else e
        loss = loss + torch.mean(1 - F.cosine_similarity(e.reshape(e.shape[0], -1), d.reshape(d.shape[0], -1)))
    return loss


# -- training on the shared trainer (``afloc-bench train recontrast|rdpp``) ---------------------------------------
# the demo network: the same architecture at an eighth of the width, one block per stage, 128x128 input
# (about a million weights: 4 MB shipped, where width 16 needs 17 MB)
DEMO_NET = dict(width=8, blocks=[1, 1, 1], fuse_blocks=1, image_size=128)


class IgnoredCaptions:
    """The trainer's caption tokenizer for an image-only objective: no text model, one empty slot per
    caption (the trainer sorts a batch by caption length; all are equal here, so the order stays)."""

    def __call__(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"attention_mask": torch.zeros(len(captions), 1, dtype=torch.long)}


def imagenet_file(source: str) -> str:
    """``imagenet`` → torchvision's file in the local torch hub cache (never downloaded); else a path."""
    if source != "imagenet":
        return source
    path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_vision imagenet: {path} not found (nothing is downloaded); place "
                                f"{IMAGENET_URL} there or give its path: --set pretrained_vision=PATH")
    return str(path)


class ReverseDistillationTask(TrainTask):
    """What the ReContrast and RD++ training tasks share: the network from ``RDConfig`` (preset ``paper``: the
    official WideResNet-50-2; ``demo``: ``DEMO_NET``; ``model:`` overrides its fields, ``model.loss`` the
    objective's settings), ImageNet initialisation from a local file (``pretrained_vision``), the adapter's
    own preprocessing as the training input (so the trained network is evaluated on what it saw), no text
    (captions are ignored) and checkpoint folders that ``--ckpt NAME=FOLDER`` loads."""

    uses_captions = False  # the trainer keeps images whose report has no usable sentence
    net_class: Any = None
    folder_format = ""
    decode = ""  # benchmark.io.images recipe the adapter reads images with
    preprocess: Any = None  # (uint8 image, size) -> float32 [3, size, size]

    def __init__(self) -> None:
        self.size = OFFICIAL_SIZE
        self.global_step = 0  # set by the trainer before every optimisation step
        self.loss_cfg: dict[str, Any] = {}

    def net_config(self, cfg: Any) -> RDConfig:
        if cfg.preset not in ("paper", "demo"):
            raise ValueError(f"unknown {self.name} preset {cfg.preset!r}; expected paper or demo")
        base = RDConfig().to_dict() if cfg.preset == "paper" else {**RDConfig().to_dict(), **DEMO_NET}
        over = dict(cfg.model or {})
        return RDConfig.from_dict({**base, **over, "loss": {**base["loss"], **dict(over.get("loss") or {})}})

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:
        net_cfg = self.net_config(cfg)
        torch.manual_seed(cfg.seed)
        model = self.net_class(net_cfg)
        if cfg.pretrained_vision:
            if not net_cfg.official:
                raise ValueError(f"pretrained_vision: ImageNet weights fit the official network only, not width "
                                 f"{net_cfg.width}, blocks {list(net_cfg.blocks)}; use pretrained_vision: null")
            source = imagenet_file(cfg.pretrained_vision)
            report = load_imagenet_trunk(model.encoder, source, "pretrained_vision")
            log.info("%s: encoder initialised from %s (%d of its %d tensors; %d file keys ignored: layer4, fc)",
                     self.name, source, report.n_module - len(report.missing), report.n_module, len(report.ignored))
        self.size, self.loss_cfg = net_cfg.image_size, dict(net_cfg.loss)
        self.prepare(model, cfg)
        return model, IgnoredCaptions()

    def prepare(self, model: nn.Module, cfg: Any) -> None:
        """After the weights are in place: freeze what the recipe does not train."""

    def image_fn(self, path: str) -> torch.Tensor:
        from benchmark.io.images import read_image

        return self.preprocess(read_image(path, self.decode), self.size)

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))
        doc = {"format": self.folder_format, "format_version": 1, "model": model.cfg.to_dict(), **extra}
        (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
