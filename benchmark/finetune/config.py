"""Fine-tuning settings: a named preset (``configs/<name>.yaml``; classification: ``cls_<name>.yaml``)
or a YAML file, every choice a key.

Keys are documented in ``docs/finetune.md``; an unknown key is an error naming the file, so a typo
cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESETS = ("demo", "paper")


class ConfigError(ValueError):
    """A configuration that cannot be used (names the file and the key)."""


@dataclass
class FinetuneConfig:
    image_size: int = 224
    batch_size: int = 8
    max_epochs: int = 50
    lr: float = 2e-4
    weight_decay: float = 0.05
    freeze_encoder: bool = True
    loss: dict[str, float] = field(default_factory=lambda: {"focal_weight": 10.0, "focal_gamma": 2.0})
    augment: dict[str, float] = field(default_factory=lambda: {"p": 0.5, "scale": 0.1, "rotate": 10.0})
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    train_negatives: str = "balanced"  # balanced: positives + as many negatives (MGCA) | all
    test_split: str | None = "test"  # a split of the dataset card, or null: carve test_share of the patients
    test_share: float = 0.15
    val_share: float = 0.15
    split_seed: int = 0
    patient_key: str = "dicom"  # dicom: the DICOM PatientID (image id without one) | image
    early_stopping: dict[str, Any] = field(default_factory=lambda: {"metric": "val_dice", "patience": 10})
    threshold: float = 0.5
    n_boot: int = 1000
    random_encoder: dict[str, Any] = field(default_factory=lambda: {"arch": "resnet50", "width": 64})
    name: str = "custom"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        where = check_shared(self, "val_dice")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"{where}: image_size must be a multiple of 32 (the U-Net's stride), "
                              f"not {self.image_size}")
        if len(self.decoder_channels) != 5:
            raise ConfigError(f"{where}: decoder_channels needs 5 values (one per U-Net stage)")


def check_shared(cfg: Any, metric: str) -> str:
    """The checks of the fields segmentation and classification configs share; returns where the config
    came from (for the caller's own messages)."""
    where = cfg.source or cfg.name
    if cfg.train_negatives not in ("balanced", "all"):
        raise ConfigError(f"{where}: train_negatives must be balanced or all, not {cfg.train_negatives!r}")
    if cfg.patient_key not in ("dicom", "image"):
        raise ConfigError(f"{where}: patient_key must be dicom or image, not {cfg.patient_key!r}")
    if cfg.early_stopping.get("metric") not in (metric, "val_loss"):
        raise ConfigError(f"{where}: early_stopping.metric must be {metric} or val_loss")
    for key in ("test_share", "val_share"):
        if not 0 < float(getattr(cfg, key)) < 1:
            raise ConfigError(f"{where}: {key} must be in (0, 1), not {getattr(cfg, key)!r}")
    return where


@dataclass
class ClsConfig:
    """Classification: a linear head on the globally pooled trunk (``cls``)."""

    image_size: int = 224  # the crop fed to the encoder
    resize: int = 256  # images are resized to resize² first; training crops at random, evaluation at the centre
    batch_size: int = 48
    max_epochs: int = 50
    lr: float = 5e-4
    encoder_lr: float | None = None  # --mode full: the encoder's learning rate (null: lr)
    weight_decay: float = 1e-6
    dropout: float = 0.0
    cache_features: bool = False  # --mode linear: encode the centre crops once (no random crops)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    train_negatives: str = "all"
    test_split: str | None = "test"
    test_share: float = 0.15
    val_share: float = 0.15
    split_seed: int = 0
    patient_key: str = "dicom"
    early_stopping: dict[str, Any] = field(default_factory=lambda: {"metric": "val_auroc", "patience": 10})
    n_boot: int = 1000
    random_encoder: dict[str, Any] = field(default_factory=lambda: {"arch": "resnet50", "width": 64})
    name: str = "custom"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        where = check_shared(self, "val_auroc")
        if self.image_size < 32 or self.resize < self.image_size:
            raise ConfigError(f"{where}: need 32 <= image_size <= resize, not {self.image_size} and {self.resize}")
        if not 0 <= float(self.dropout) < 1:
            raise ConfigError(f"{where}: dropout must be in [0, 1), not {self.dropout!r}")


TASKS = {"seg": ("", FinetuneConfig), "cls": ("cls_", ClsConfig)}


def load_config(spec: str | None = None, overrides: dict[str, Any] | None = None, task: str = "seg"):
    """``spec``: a preset name (``demo``, ``paper``) or a YAML path; ``None`` is ``demo``. ``task``
    picks the presets and keys (``seg``: ``FinetuneConfig``, ``cls``: ``ClsConfig``)."""
    prefix, kind = TASKS[task]
    spec = spec or "demo"
    path = CONFIG_DIR / f"{prefix}{spec}.yaml" if spec in PRESETS else Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {spec}: expected a preset ({', '.join(PRESETS)}) or a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    data.update(overrides or {})
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} for finetune {task}; "
                          f"known: {sorted(known - {'name', 'source'})}")
    cfg = kind(**{**data, "name": spec if spec in PRESETS else path.stem, "source": str(path)})
    cfg.check()
    return cfg
