"""DenseNet multi-label chest X-ray classifiers: the model under the saliency baselines.

Why a module of its own: CheXlocalize's saliency maps come from CheXpert-style DenseNet121
classifiers (14 sigmoid outputs), and the checkpoints users hold come in several layouts
(torchvision state dicts with ``module.``/``model.`` prefixes and old ``norm.1`` names,
CheXNet-style ``classifier.0`` heads, torchxrayvision's pickled ``DenseNet`` objects, and the
files ``baselines.saliency.train`` writes). They all load into one module,
``DenseNetClassifier``, whose last feature map is produced by a *non-inplace* ReLU module so
that Grad-CAM hooks record activations nothing mutates afterwards (torchvision's
``F.relu(features, inplace=True)`` makes CPU and GPU CAMs differ when ``features[-1]`` is
hooked).

Loading never unpickles arbitrary objects (``benchmark.io.checkpoints``): a pickled torchxrayvision
model is read with every module class bound to an inert record, from which the parameters are
collected.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchxrayvision as xrv
from torch import nn
from torchvision.models import DenseNet

from benchmark.dataset import DataError
from benchmark.io.checkpoints import MODULE_PREFIXES, InertRecord, module_state, read_tensors, safe_torch_load
from benchmark.pathologies import canonical_name, is_known

# CheXpert's 14 observations in the order of CheXlocalize's ``CHEXPERT_TASKS`` (which says
# "Airspace Opacity" where CheXpert's csv says "Lung Opacity").
CHEXPERT_TASKS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
LOCALIZATION_TASKS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
    "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
XRV_SCALE = 1024.0  # torchxrayvision maps uint8 0..255 to [-1024, 1024]



# A classifier output answers queries for its own finding. CheXpert's csv column "Lung Opacity" is
# the observation CheXlocalize calls "Airspace Opacity" (one output answers both).
SAME_OUTPUT = {"Lung Opacity": "Airspace Opacity"}
# CheXpert's labeler counts these findings under a broader observation; used only when no output
# names the finding itself (a classifier with its own "Mass" output keeps it).
FALLBACKS = {"Mass": "Lung Lesion", "Nodule": "Lung Lesion", "Infiltration": "Airspace Opacity"}


def output_key(name: str) -> str:
    """The finding an output (or label column) answers: its canonical name, "Lung Opacity" folded into
    "Airspace Opacity"; a name outside the canonical table is kept as written."""

    canon = canonical_name(name) if is_known(name) else str(name).strip()
    return SAME_OUTPUT.get(canon, canon)


def label_index(finding: str, labels: Sequence[str]) -> int:
    """Index of the classifier output that answers a query for ``finding`` (a canonical name).

    Raises ``KeyError`` naming the finding and the outputs when none does.
    """
    keys = [output_key(lb) if lb else "" for lb in labels]
    want = output_key(finding)
    for key in (want, FALLBACKS.get(want)):
        if key and key in keys:
            return keys.index(key)
    shown = ", ".join(lb for lb in labels if lb)
    raise KeyError(f"no classifier output answers {finding!r}; outputs: {shown}")


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
@dataclass
class ClassifierSpec:
    """Architecture and input conventions of a DenseNet classifier (stored with its weights)."""

    labels: list[str] = field(default_factory=lambda: list(CHEXPERT_TASKS))
    in_channels: int = 3
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    normalization: str = "imagenet"  # "imagenet" (3-channel) or "xrv" ([-1024, 1024], 1-channel)
    input_geometry: str = "resize:320x320"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["block_config"] = list(self.block_config)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "block_config" in known:
            known["block_config"] = tuple(int(b) for b in known["block_config"])
        return cls(**known)


class DenseNetClassifier(nn.Module):
    """torchvision-layout DenseNet (``features.*``, ``classifier.*``) returning raw logits.

    ``final_relu`` is a separate non-inplace module: its output is the feature map the head
    pools, and it is the CAM target layer (``cam_layer``).
    """

    def __init__(self, spec: ClassifierSpec):
        super().__init__()

        base = DenseNet(growth_rate=spec.growth_rate, block_config=tuple(spec.block_config),
                        num_init_features=spec.num_init_features, bn_size=spec.bn_size,
                        num_classes=len(spec.labels))
        if spec.in_channels != 3:
            base.features.conv0 = nn.Conv2d(spec.in_channels, spec.num_init_features, kernel_size=7, stride=2,
                                            padding=3, bias=False)
            nn.init.kaiming_normal_(base.features.conv0.weight)
        self.spec = spec
        self.features = base.features
        self.final_relu = nn.ReLU(inplace=False)
        self.classifier = base.classifier

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def cam_layer(self) -> nn.Module:
        return self.final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the feature map before the final ReLU (the CAM layer onwards)."""
        fmap = self.final_relu(features)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, (1, 1)), 1)
        return self.classifier(pooled)

    def head_module(self) -> nn.Module:
        """The head as a module of its own (sharing these weights), for CAMs computed from features
        already extracted: the CAM layer's activations and gradients are those of the whole model."""
        return _Head(self)


class _Head(nn.Module):
    def __init__(self, model: DenseNetClassifier):
        super().__init__()
        self.final_relu = model.final_relu
        self.classifier = model.classifier
        self._model = [model]  # a plain reference: the head owns no features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._model[0].head(features)


def build_classifier(spec: ClassifierSpec | None = None, seed: int | None = 0) -> DenseNetClassifier:
    """A randomly initialised classifier (seeded, so random-weight outputs are reproducible)."""
    spec = spec or ClassifierSpec()
    if seed is None:
        return DenseNetClassifier(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DenseNetClassifier(spec)


# ----------------------------------------------------------------------------------------
# Checkpoint reading
# ----------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What loading a checkpoint did, by key name (printed by the adapter, kept for records)."""

    path: str
    source_format: str
    prefix_stripped: str = ""
    renamed: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    benign_missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.source_format}"]
        if self.prefix_stripped:
            parts.append(f"prefix {self.prefix_stripped!r} stripped")
        if self.renamed:
            parts.append(f"{self.renamed} keys renamed")
        for what in ("missing", "unexpected", "ignored", "benign_missing"):
            keys = getattr(self, what)
            if keys:
                shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {what.replace('_', ' ')}: {shown}")
        return "; ".join(parts)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Return ``(state_dict, meta, source_format)`` for any supported classifier file."""

    path = Path(path)
    expected = "a classifier checkpoint (state dict, safetensors or a pickled DenseNet)"
    if path.suffix == ".safetensors":
        meta = _safetensors_meta(path)
        fmt = "afloc-bench classifier (safetensors)" if meta else "safetensors state dict"
        return dict(read_tensors(path, expected=expected)), meta, fmt
    obj = safe_torch_load(path, expected=expected, extra_prefixes=MODULE_PREFIXES)
    if isinstance(obj, InertRecord):  # a whole pickled model (torch.save(model)), read as records
        qualname = obj.qualname
        fmt = "torchxrayvision pickled model" if qualname.startswith("torchxrayvision.") else f"pickled {qualname}"
        return dict(module_state(obj)), {"pickled_class": qualname}, fmt
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("afloc_bench_classifier"), dict):
            meta = dict(obj["afloc_bench_classifier"])
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                fmt = "afloc-bench classifier" if meta else f"state dict under {key!r}"
                return dict(inner), meta, fmt
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, meta, "state dict"
    raise DataError(path, f"expected a state dict (or a dict holding one under 'state_dict'), "
                          f"found {type(obj).__name__}")


_OLD_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def canonical_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, int, list[str]]:
    """Map common DenseNet layouts onto ``features.*`` / ``classifier.*``.

    Returns ``(state_dict, stripped_prefix, n_renamed, ignored_keys)``.
    """
    anchor = [k for k in sd if k.endswith("features.conv0.weight")]
    if not anchor:
        raise KeyError("no 'features.conv0.weight' key: not a DenseNet state dict")
    prefix = min(anchor, key=len)[: -len("features.conv0.weight")]
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    renamed = 0
    for k, v in sd.items():
        if not k.startswith(prefix):
            ignored.append(k)
            continue
        key = k[len(prefix):]
        m = _OLD_DENSE_KEY.match(key)
        if m:  # torchvision before 0.3 wrote "norm.1" for "norm1"
            key = m.group(1) + m.group(2)
            renamed += 1
        if re.match(r"^classifier\.\d+\.(weight|bias)$", key):  # Sequential(Linear, Sigmoid) heads
            key = "classifier." + key.split(".")[-1]
            renamed += 1
        out[key] = v
    return out, prefix, renamed, ignored


def infer_spec(sd: dict[str, torch.Tensor], labels: Sequence[str] | None = None) -> ClassifierSpec:
    """Read the DenseNet hyper-parameters off the tensor shapes."""
    conv0 = sd["features.conv0.weight"]
    blocks = []
    for b in range(1, 10):
        layers = {int(m.group(1)) for k in sd
                  if (m := re.match(rf"^features\.denseblock{b}\.denselayer(\d+)\.", k))}
        if not layers:
            break
        blocks.append(max(layers))
    if not blocks:
        raise KeyError("no 'features.denseblock1.*' keys: not a DenseNet state dict")
    conv2 = sd["features.denseblock1.denselayer1.conv2.weight"]
    conv1 = sd["features.denseblock1.denselayer1.conv1.weight"]
    growth = int(conv2.shape[0])
    bn_size = int(conv1.shape[0]) // growth
    n_out = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else len(CHEXPERT_TASKS)
    if labels is None:
        labels = list(CHEXPERT_TASKS) if n_out == len(CHEXPERT_TASKS) else [f"output_{i}" for i in range(n_out)]
    labels = list(labels)
    if len(labels) != n_out:
        raise ValueError(f"{len(labels)} labels given for a head with {n_out} outputs")
    return ClassifierSpec(labels=labels, in_channels=int(conv0.shape[1]), growth_rate=growth,
                          block_config=tuple(blocks), num_init_features=int(conv0.shape[0]), bn_size=bn_size)


def xrv_labels(weights_name: str | None = None) -> list[str]:
    """Output names of a torchxrayvision DenseNet (from the package's own tables, no download)."""

    if weights_name:
        if weights_name not in xrv.models.model_urls:
            raise KeyError(f"unknown torchxrayvision weights name {weights_name!r}")
        return list(xrv.models.model_urls[weights_name]["labels"])
    return list(xrv.datasets.default_pathologies)


def load_classifier(path: str | os.PathLike, *, labels: Sequence[str] | None = None,
                    xrv_weights: str | None = None) -> tuple[DenseNetClassifier, LoadReport]:
    """Load any supported DenseNet classifier file; raises ``DataError`` on missing weights."""
    path = Path(path)
    raw, meta, fmt = read_checkpoint(path)
    try:
        sd, prefix, renamed, ignored = canonical_state_dict(raw)
    except KeyError as e:
        raise DataError(path, f"expected a DenseNet classifier ({e.args[0]})") from None
    is_xrv = "torchxrayvision" in fmt or xrv_weights is not None or str(meta.get("pickled_class", "")).startswith(
        "torchxrayvision")
    if "op_threshs" in sd:  # torchxrayvision's calibration buffer; probabilities stay sigmoid(logit)
        ignored.append("op_threshs")
        sd.pop("op_threshs")
        is_xrv = True
    if meta.get("spec"):
        spec = ClassifierSpec.from_dict(meta["spec"])
        if labels is not None:
            spec.labels = list(labels)
    else:
        if labels is None and is_xrv:
            labels = xrv_labels(xrv_weights)
        try:
            spec = infer_spec(sd, labels)
        except (KeyError, ValueError) as e:
            raise DataError(path, f"cannot infer the DenseNet architecture: {e}") from None
        if is_xrv:
            spec.normalization = "xrv"
            spec.input_geometry = "resize_crop:224:224"
    model = DenseNetClassifier(spec)
    result = model.load_state_dict(sd, strict=False)
    report = LoadReport(path=str(path), source_format=fmt + (" (torchxrayvision layout)" if is_xrv else ""),
                        prefix_stripped=prefix, renamed=renamed, ignored=sorted(ignored))
    report.benign_missing = sorted(k for k in result.missing_keys if k.endswith("num_batches_tracked"))
    report.missing = sorted(k for k in result.missing_keys if not k.endswith("num_batches_tracked"))
    report.unexpected = sorted(result.unexpected_keys)
    if report.missing:
        raise DataError(path, "checkpoint lacks classifier weights: " + ", ".join(report.missing[:10])
                        + (" ..." if len(report.missing) > 10 else ""))
    model.eval()
    return model, report


SAFETENSORS_META_KEY = "afloc_bench_classifier"


def save_classifier(model: DenseNetClassifier, path: str | os.PathLike, **meta: Any) -> Path:
    """Write weights plus the spec. A ``.safetensors`` path keeps the spec as JSON in the file's
    metadata; any other suffix writes plain containers (readable with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = {"spec": model.spec.to_dict(), **_plain(meta)}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={SAFETENSORS_META_KEY: json.dumps(record, sort_keys=True)})
    else:
        torch.save({"state_dict": state, "afloc_bench_classifier": record}, str(tmp))
    os.replace(tmp, path)
    return path


def _safetensors_meta(path: Path) -> dict[str, Any]:
    """The classifier record a ``.safetensors`` file carries in its metadata (empty when none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(SAFETENSORS_META_KEY)
    except Exception:  # noqa: BLE001 - unreadable files are reported by read_tensors with their name
        return {}
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"metadata {SAFETENSORS_META_KEY!r} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(path, f"metadata {SAFETENSORS_META_KEY!r} must be a JSON object")
    return meta


def _plain(obj: Any) -> Any:
    """Turn numpy scalars and tuples into plain python for the checkpoint's metadata."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ----------------------------------------------------------------------------------------
# Input conversion
# ----------------------------------------------------------------------------------------
def to_input_tensor(frame: np.ndarray, spec: ClassifierSpec) -> torch.Tensor:
    """uint8 gray frame (already in the model's geometry) → normalised ``[C, H, W]`` float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32))
    if x.ndim == 3:  # rgb given: the classifiers are grayscale models replicated to 3 channels
        x = x.mean(-1)
    if spec.normalization == "xrv":
        x = (x / 255.0) * (2 * XRV_SCALE) - XRV_SCALE
        x = x[None].repeat(spec.in_channels, 1, 1)
    else:
        x = (x / 255.0)[None].repeat(spec.in_channels, 1, 1)
        c = spec.in_channels
        mean = torch.tensor(IMAGENET_MEAN[:c] if c == 3 else [float(np.mean(IMAGENET_MEAN))] * c)
        std = torch.tensor(IMAGENET_STD[:c] if c == 3 else [float(np.mean(IMAGENET_STD))] * c)
        x = (x - mean[:, None, None]) / std[:, None, None]
    return x
