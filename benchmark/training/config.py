"""Training options: one dataclass, read from the task's YAML recipes and the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    task: str = "afloc"  # the objective and model family (benchmark.training.task.TRAIN_TASKS)
    preset: str = "paper"  # paper | demo | tiny: the model architecture (afloc.config)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's ModelConfig
    text_encoder: str | None = None  # local BERT folder (weights + tokenizer), e.g. Bio_ClinicalBERT
    vocab: str | None = None  # WordPiece vocabulary for randomly initialised text encoders
    pretrained_vision: str | None = "imagenet"
    dataset: str = "mimic_cxr"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # keep only the pairs whose study labels have these values ({"No Finding": 1}: the normal images,
    # for objectives trained on normal images only; benchmark.training.data.select_pairs); None: all pairs
    select_labels: dict[str, float] | None = None
    # how a training image is read (the official data.image.flag): 0 = cv2.imread(p, 0), gray (chest X-rays);
    # 1 = colour in cv2's B, G, R order (the pathology model); a checkpoint records it for evaluation
    image_flag: int = 0
    train_split: str = "train"
    val_split: str | None = "validate"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-5
    # learning rates for parameters whose name starts with a prefix ({"text_encoder.": 1e-4});
    # the longest matching prefix wins, every other parameter gets ``lr``
    lr_by_prefix: dict[str, float] = field(default_factory=dict)
    optimizer: str = "adam"  # adam (weight_decay as L2, torch's Adam) | adamw (decoupled weight decay)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-6
    lr_gamma: float = 0.9
    grad_clip: float | None = 0.25
    amp: str = "auto"  # auto (CUDA only) | on | off
    forward_chunks: int = 1
    negatives: str = "local"  # local | global
    captions_per_image: int = 5
    compat: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    val_batches: int | None = None
    log_every: int = 10
    save_every_steps: int | None = None
    # random shift/zoom/rotation of training images ({"translate": 0.1, "scale": [0.9, 1.1],
    # "degrees": 5}); off in the paper recipe (the official training has no augmentation)
    augment: dict[str, Any] = field(default_factory=dict)
    image_cache: str | None = None  # a folder of letterboxed frames, or "memory" (with num_workers 0)
    # a folder written by `afloc-bench prepare` (benchmark.training.prepared): the training split's
    # frames read from its memory-mapped table instead of decoded from the image files (same bytes);
    # its dataset and split must be this run's ``dataset`` and ``train_split``
    prepared: str | None = None
    # best/ = the epoch with the lowest validation loss (paper recipe); False: best/ = the last
    # epoch (the demo: its single validation batch of 32 pairs rises while localization improves)
    select_best: bool = True
    # exponential moving average of the weights (0.99: about the last 100 steps), updated after
    # every optimiser step; validation and the saved model use the average (None: off, as in the
    # paper recipe). It smooths the end point of short, noisy from-scratch runs
    ema_decay: float | None = None
    # masked-LM pretraining of the text encoder on the training reports before the contrastive
    # steps ({"steps": 800, "batch_size": 64, "lr": 1e-3}; benchmark.training.text_pretrain): the demo's stand-in
    # for starting from a pretrained BERT (None: off, as in the paper recipe, which loads one)
    text_pretrain: dict[str, Any] | None = None

    @classmethod
    def from_mapping(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown training options {unknown}")
        d = dict(d)
        if "betas" in d and d["betas"] is not None:
            d["betas"] = tuple(float(b) for b in d["betas"])
        if d.get("text_pretrain") is not None:  # checked, and recorded with every option it runs with
            from benchmark.training.text_pretrain import TextPretrainConfig

            d["text_pretrain"] = dataclasses.asdict(
                TextPretrainConfig.from_mapping(d["text_pretrain"], f"{source}: text_pretrain"))
        if d.get("ema_decay") is not None:
            ema = float(d["ema_decay"])
            if not 0.0 < ema < 1.0:
                raise ValueError(f"{source}: ema_decay must be in (0, 1) or null, got {d['ema_decay']!r}")
            d["ema_decay"] = ema
        if d.get("image_flag", 0) not in (0, 1):
            raise ValueError(f"{source}: image_flag must be 0 (gray) or 1 (colour), got {d['image_flag']!r}")
        if d.get("optimizer", "adam") not in ("adam", "adamw"):
            raise ValueError(f"{source}: optimizer must be adam or adamw, got {d['optimizer']!r}")
        if d.get("select_labels") is not None:
            try:
                d["select_labels"] = {str(k): float(v) for k, v in dict(d["select_labels"]).items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: select_labels must map label names to values, "
                                 f"got {d['select_labels']!r}") from e
            if not d["select_labels"]:
                raise ValueError(f"{source}: select_labels is empty; use null to keep every pair")
        if d.get("lr_by_prefix"):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                d["lr_by_prefix"] = {str(k): float(v) for k, v in dict(d["lr_by_prefix"]).items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: lr_by_prefix must map name prefixes to numbers, "
                                 f"got {d['lr_by_prefix']!r}") from e
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def load_train_config(spec: str | None, task: str = "afloc") -> TrainConfig:
    """``paper`` / ``demo`` (the task's shipped YAML) or the path of a YAML file."""
    import yaml

    from benchmark.training.task import get_task

    spec = spec or "paper"
    path = get_task(task).config_path(spec) if not spec.endswith((".yaml", ".yml")) else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training config not found (use paper, demo or a YAML file)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of training options")
    data.setdefault("task", task)
    if data["task"] != task:
        raise ValueError(f"{path}: a config of task {data['task']!r}, not {task!r}")
    return TrainConfig.from_mapping(data, str(path))
