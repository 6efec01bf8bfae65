"""The U-Net (``segmentation_models_pytorch``) on a model's ResNet trunk, and the weight transfer.

The trunk is found in the loaded adapter (the module with ``conv1``, ``bn1``, ``layer1..4``:
AFLoc's ``img_encoder.model``, GLoRIA's ``img_encoder.model``, ...). A torchvision-shaped trunk
(stem width 64: ResNet-18/34/50/101/152) uses smp's own encoder of that name; a narrower trunk (the
demo presets, e.g. ResNet-18 at width 16) uses ``BenchResNetEncoder``, a thin smp-compatible
encoder over ``benchmark.backbones.ResNetBackbone`` registered under ``bench-<arch>-w<width>``.
Either way the encoder's keys are the trunk's keys under ``encoder.``: the transfer renames
``conv1.weight`` → ``encoder.conv1.weight`` and reports matched, missing and unexpected keys.
Classification (``cls``) puts the same trunk, as a ``ResNetBackbone`` named ``encoder``, under a
linear head through the same transfer (``encoder_for(..., build=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmark.backbones import ARCHS, ResNetBackbone

SMP_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CONTROLS = ("random", "imagenet")


def _encoder_class():
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    class BenchResNetEncoder(ResNetBackbone, EncoderMixin):
        """``ResNetBackbone`` with smp's encoder interface: features at strides 1, 2, 4, 8, 16, 32."""

        def __init__(self, out_channels, depth: int = 5, output_stride: int = 32, arch: str = "resnet18",
                     width: int = 64):
            super().__init__(arch, width)
            self._depth, self._in_channels, self._out_channels = depth, 3, out_channels
            self._output_stride = output_stride

        def get_stages(self):
            return {16: [self.layer3], 32: [self.layer4]}

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
            feats = [x]
            x = self.relu(self.bn1(self.conv1(x)))
            feats.append(x)
            x = self.layer1(self.maxpool(x))
            feats.append(x)
            for layer in (self.layer2, self.layer3, self.layer4):
                x = layer(x)
                feats.append(x)
            return feats

    return BenchResNetEncoder


def encoder_name(arch: str, width: int) -> str:
    """The smp encoder name of a trunk, registering the thin wrapper for a non-torchvision width."""
    if arch not in ARCHS:
        raise ValueError(f"encoder architecture {arch!r} is not a ResNet ({sorted(ARCHS)})")
    if width == 64 and arch in SMP_RESNETS:
        return arch
    from segmentation_models_pytorch.encoders import encoders

    name = f"bench-{arch}-w{width}"
    if name not in encoders:
        e = ARCHS[arch][0].expansion
        encoders[name] = {"encoder": _encoder_class(), "pretrained_settings": {},
                          "params": {"out_channels": [3, width, width * e, width * 2 * e, width * 4 * e,
                                                      width * 8 * e], "arch": arch, "width": width}}
    return name


def build_unet(arch: str, width: int, decoder_channels) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder_name(arch, width), encoder_weights=None, in_channels=3, classes=1,
                    activation=None, decoder_channels=list(decoder_channels))


def is_resnet_trunk(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))


def trunk_shape(m: nn.Module) -> tuple[str, int]:
    """``(arch, width)`` of a ResNet trunk (``ResNetBackbone`` or torchvision ``ResNet``)."""
    if isinstance(m, ResNetBackbone):
        return m.arch, m.width
    block = type(m.layer1[0]).__name__
    layers = tuple(len(getattr(m, f"layer{i}")) for i in range(1, 5))
    for arch, (cls, n) in ARCHS.items():
        if cls.__name__ == block and tuple(n) == layers:
            return arch, int(m.conv1.out_channels)
    raise ValueError(f"a ResNet trunk with {block} blocks {layers} matches no known architecture")


def find_trunk(obj: Any, _seen: set[int] | None = None, _depth: int = 0) -> nn.Module | None:
    """The first ResNet trunk inside ``obj`` (an adapter, an engine or a module)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or _depth > 4:
        return None
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        for _, m in obj.named_modules():
            if is_resnet_trunk(m):
                return m
        return None
    for value in list(vars(obj).values()) if hasattr(obj, "__dict__") else []:
        if isinstance(value, nn.Module) or hasattr(value, "__dict__") and not isinstance(value, type):
            found = find_trunk(value, seen, _depth + 1)
            if found is not None:
                return found
    return None


def find_cut_trunk(obj: Any) -> tuple[dict[str, torch.Tensor], tuple[str, int]] | None:
    """A trunk cut after ``layer3`` as an ``nn.Sequential`` of torchvision's first seven children
    (MedKLIP's ``res_features``): ``(state dict under torchvision names, (arch, width))``, or None."""
    mods = [v for v in (vars(obj).values() if hasattr(obj, "__dict__") else []) if isinstance(v, nn.Module)]
    for top in mods:
        for _, m in top.named_modules():
            if (isinstance(m, nn.Sequential) and len(m) == 7 and isinstance(m[0], nn.Conv2d)
                    and isinstance(m[1], nn.BatchNorm2d) and all(isinstance(m[i], nn.Sequential) for i in (4, 5, 6))):
                block = type(m[4][0]).__name__
                counts = (len(m[4]), len(m[5]), len(m[6]))
                for arch, (cls, n) in ARCHS.items():
                    if cls.__name__ == block and tuple(n[:3]) == counts:
                        names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
                        sd = {f"{names[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v.detach().clone()
                              for k, v in m.state_dict().items()}
                        return sd, (arch, int(m[0].out_channels))
    for value in [v for v in (vars(obj).values() if hasattr(obj, "__dict__") else [])
                  if hasattr(v, "__dict__") and not isinstance(v, (nn.Module, type))]:
        found = find_cut_trunk(value)
        if found is not None:
            return found
    return None


def trunk_state(trunk_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trunk's state dict without the classifier (``fc.*``: absent from smp's encoders)."""
    return {k: v for k, v in trunk_sd.items() if not k.startswith("fc.")}


def transfer(unet: nn.Module, trunk_sd: dict[str, torch.Tensor], source: str,
             absent: str | None = None) -> dict[str, Any]:
    """Load the trunk's weights into ``unet.encoder`` (any network naming its trunk ``encoder``); the
    key report (all names, after the rename).
    ``absent``: a key prefix the source model does not have (reported as missing, left at init)."""
    target = unet.state_dict()
    enc_keys = [k for k in target if k.startswith("encoder.")]
    renamed = {f"encoder.{k}": v for k, v in trunk_state(trunk_sd).items()}
    matched = [k for k in enc_keys if k in renamed and renamed[k].shape == target[k].shape]
    mismatched = [k for k in enc_keys if k in renamed and renamed[k].shape != target[k].shape]
    missing = [k for k in enc_keys if k not in renamed]
    unexpected = sorted(k for k in renamed if k not in target)
    if mismatched or unexpected or [k for k in missing if not (absent and k.startswith(absent))]:
        raise ValueError(f"{source}: the trunk does not fit the network's encoder (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]})")
    unet.load_state_dict({**target, **{k: renamed[k] for k in matched}}, strict=True)
    return {"source": source, "rename": "<trunk key> -> encoder.<trunk key>", "encoder_keys": len(enc_keys),
            "matched": len(matched), "missing": missing, "unexpected": unexpected, "shape_mismatch": mismatched,
            "weights_sha256": _sd_hash({k: renamed[k] for k in matched})}


def _sd_hash(sd: dict[str, torch.Tensor]) -> str:
    from benchmark.cache import state_dict_sha256

    return state_dict_sha256(sd)


def trunk_source(model: str, *, ckpt: str | None = None, imagenet_weights: str | None = None,
                 model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pretrained trunk of ``model``: ``{sd, arch, width, source, absent}`` (``absent``: a key
    prefix the model lacks). ``imagenet``: torchvision's ResNet-50 from the local file
    ``imagenet_weights`` (never downloaded); any registered model: its adapter's trunk, from ``ckpt``
    or its demo weights."""
    absent = None
    if model == "imagenet":
        if not imagenet_weights:
            raise ValueError("--model imagenet needs --imagenet-weights PATH (torchvision's resnet50-*.pth or a "
                             "safetensors state dict on this machine; nothing is downloaded)")
        from benchmark.io.checkpoints import read_state_dict

        sd = read_state_dict(imagenet_weights)
        trunk = ResNetBackbone("resnet50", 64)
        trunk.load_state_dict(trunk_state(sd), strict=True)
        arch, width, sd, src = "resnet50", 64, trunk.state_dict(), str(imagenet_weights)
    else:
        from benchmark.adapter import build_adapter

        adapter = build_adapter(model)
        for k, v in (model_options or {}).items():
            adapter.options[k] = v
        adapter.load(ckpt, "cpu")
        trunk = find_trunk(adapter)
        src = str(adapter.checkpoint or model)
        if trunk is not None:
            arch, width = trunk_shape(trunk)
            sd = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
        elif (cut := find_cut_trunk(adapter)) is not None:  # no layer4: it stays at its initialisation
            sd, (arch, width), absent = cut[0], cut[1], "encoder.layer4."
        else:
            raise ValueError(f"model {model!r}: no ResNet image encoder found (conv1, bn1, layer1..4); fine-tuning "
                             "transfers ResNet trunks (and, for cls, the CLIP family's vision towers)")
    return {"sd": sd, "arch": arch, "width": width, "source": src, "absent": absent}


def encoder_for(model: str, cfg, *, ckpt: str | None = None, imagenet_weights: str | None = None,
                model_options: dict[str, Any] | None = None,
                build: Callable[[str, int], nn.Module] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(network with its ``encoder`` initialised from ``model``, key report)``.

    ``build(arch, width)`` makes the network around a trunk of that shape, named ``encoder``
    (default: the U-Net of ``cfg.decoder_channels``). ``random``: ``cfg.random_encoder``'s shape at
    its initialisation (seeded by the caller); otherwise the trunk of ``trunk_source``.
    """
    build = build or (lambda arch, width: build_unet(arch, width, cfg.decoder_channels))
    if model == "random":
        arch, width = str(cfg.random_encoder["arch"]), int(cfg.random_encoder["width"])
        net = build(arch, width)
        return net, {"source": "random", "arch": arch, "width": width, "matched": 0,
                     "encoder_keys": sum(1 for k in net.state_dict() if k.startswith("encoder.")),
                     "missing": [], "unexpected": [], "shape_mismatch": []}
    src = trunk_source(model, ckpt=ckpt, imagenet_weights=imagenet_weights, model_options=model_options)
    arch, width, absent = src["arch"], src["width"], src["absent"]
    net = build(arch, width)
    report = transfer(net, src["sd"], src["source"], absent)
    if absent:
        report["note"] = "the model's trunk ends at layer3; encoder.layer4 keeps its random initialisation"
    impl = getattr(net, "encoder_impl", None) or ("smp" if encoder_name(arch, width) == arch else "BenchResNetEncoder")
    report.update(arch=arch, width=width, encoder_impl=impl)
    return net, report
