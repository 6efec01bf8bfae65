"""Checkpoints: the official Lightning ``.ckpt`` (imported safely) and this project's own format.

Official file (``Pretrained_CXR.ckpt``): a PyTorch-Lightning dict whose ``state_dict`` keys carry
the ``afloc.`` prefix and whose ``hyper_parameters`` is a pickled omegaconf 2.0.5 ``DictConfig``.
It is read by ``benchmark.io.checkpoints`` (``torch.load(weights_only=True)`` with every class
the file names bound to an inert record; a global outside the allow-list stops the load), and the
configuration is rebuilt as plain dicts, so the omegaconf version that wrote it does not matter.

Key rename official → this model: strip the leading ``afloc.``; drop the
``text_encoder.model.embeddings.position_ids`` buffer (recent transformers no longer store it).
Every other key maps by identity; missing and unexpected keys are reported by name.

Own format: a folder with ``model.safetensors`` (weights), ``config.json`` (``ModelConfig``),
``tokenizer/`` (the WordPiece files) and optionally ``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from afloc.config import ModelConfig, TextConfig, VisionConfig
from afloc.model import AFLoc
from afloc.tokenizer import Tokenizer
from benchmark.io.checkpoints import (
    CheckpointError,
    load_lightning_checkpoint,
    read_tensors,
    to_plain,
)

OFFICIAL_PREFIX = "afloc."
DROPPED_OFFICIAL_KEYS = ("text_encoder.model.embeddings.position_ids",)
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "afloc-bench/model"
FORMAT_VERSION = 1

@dataclass
class OfficialCheckpoint:
    path: str
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def read_lightning_checkpoint(path: str | os.PathLike) -> OfficialCheckpoint:
    """Weights and configuration of an official AFLoc Lightning checkpoint, read safely."""
    raw = load_lightning_checkpoint(path, "an official AFLoc Lightning checkpoint (Pretrained_CXR.ckpt)")
    sd = raw["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(path, "'state_dict' is not a mapping of tensors")
    meta = {k: to_plain(v) for k, v in raw.items() if k in ("epoch", "global_step", "pytorch-lightning_version",
                                                              "hparams_name")}
    return OfficialCheckpoint(str(path), dict(sd), raw["hyper_parameters"], meta)


# ---------------------------------------------------------------------------------------------
# official -> this model
@dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    dropped: list[str]

    def __str__(self) -> str:
        parts = [f"missing keys ({len(self.missing)}): {self.missing}" if self.missing else "no missing keys",
                 f"unexpected keys ({len(self.unexpected)}): {self.unexpected}" if self.unexpected
                 else "no unexpected keys"]
        if self.dropped:
            parts.append(f"dropped by the key rename: {self.dropped}")
        return "; ".join(parts)


def official_to_model_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``afloc.`` and drop the buffers recent transformers do not keep; returns (dict, dropped)."""
    out, dropped = {}, []
    for k, v in state_dict.items():
        nk = k[len(OFFICIAL_PREFIX):] if k.startswith(OFFICIAL_PREFIX) else k
        if nk in DROPPED_OFFICIAL_KEYS:
            dropped.append(k)
            continue
        out[nk] = v
    return out, dropped


def bert_config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """BERT geometry implied by the weights (heads assumed 64-dimensional, as in every BERT)."""
    p = "text_encoder.model."
    try:
        vocab, hidden = sd[p + "embeddings.word_embeddings.weight"].shape
        max_pos = sd[p + "embeddings.position_embeddings.weight"].shape[0]
        types = sd[p + "embeddings.token_type_embeddings.weight"].shape[0]
        inter = sd[p + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise KeyError(f"state dict lacks the BERT weight {exc}") from None
    layers = 1 + max(int(k[len(p + "encoder.layer."):].split(".")[0]) for k in sd if k.startswith(p + "encoder.layer."))
    return dict(vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
                num_attention_heads=max(1, int(hidden) // 64), intermediate_size=int(inter),
                max_position_embeddings=int(max_pos), type_vocab_size=int(types), hidden_act="gelu",
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12,
                initializer_range=0.02)


def _official_arch(model_name: str | None) -> str:
    name = (model_name or "resnet_50").replace("_", "")
    if name not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        raise ValueError(f"official vision.model_name {model_name!r} is not a supported ResNet")
    return name


def _stem_width(sd: dict[str, torch.Tensor]) -> int:
    w = sd.get("img_encoder.model.conv1.weight")
    return int(w.shape[0]) if w is not None else 64


def model_config_from_official(hp: dict[str, Any], sd: dict[str, torch.Tensor],
                               text_encoder: str | None) -> ModelConfig:
    """This project's ``ModelConfig`` for an official checkpoint (weights decide the sizes)."""
    m = hp.get("model", {}) or {}
    text = m.get("text", {}) or {}
    vision = m.get("vision", {}) or {}
    loss = m.get("afloc", {}) or {}
    word_num = ((hp.get("data", {}) or {}).get("text", {}) or {}).get("word_num", 97)
    bert_cfg = bert_config_from_state_dict(sd)
    if text_encoder:
        cfg_file = Path(text_encoder) / "config.json"
        if cfg_file.is_file():
            declared = json.loads(cfg_file.read_text())
            for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size",
                      "max_position_embeddings", "type_vocab_size"):
                if k in declared and int(declared[k]) != int(bert_cfg[k]):
                    raise CheckpointError(cfg_file, f"text encoder {k}={declared[k]} does not match the checkpoint "
                                                    f"weights ({bert_cfg[k]})")
            for k in bert_cfg:  # heads, activation, dropout ... cannot be read off the weights
                if k in declared:
                    bert_cfg[k] = declared[k]
    cfg = ModelConfig(
        vision=VisionConfig(arch=_official_arch(vision.get("model_name")), width=_stem_width(sd), upsample=299,
                            pretrained=None),
        text=TextConfig(bert=None, bert_config=bert_cfg, vocab=None,
                        last_n_layers=int(text.get("last_n_layers", 4)),
                        aggregate_method=str(text.get("aggregate_method", "sum")),
                        max_length=int(word_num)),
    )
    for ours, theirs in (("temp1", "temp1"), ("temp2", "temp2"), ("temp3", "temp3"),
                         ("global_weight", "global_report_loss_weight"),
                         ("sentence_weight", "local_sent_loss_weight"), ("word_weight", "local_word_loss_weight"),
                         ("use_global", "use_global_report_loss"), ("use_sentence", "use_local_sent_loss"),
                         ("use_word", "use_local_word_loss")):
        if loss.get(theirs) is not None:
            setattr(cfg.loss, ours, type(getattr(cfg.loss, ours))(loss[theirs]))
    if text.get("norm") or (m.get("norm") is True):
        raise CheckpointError(None, "official config with text norm=true is not supported (the published model uses "
                                    "raw features)")
    return cfg


def resolve_text_encoder(text_encoder: str | os.PathLike | None, hp: dict[str, Any]) -> str:
    """Local folder of the tokenizer files for an official checkpoint."""
    if text_encoder:
        p = Path(text_encoder)
        if not p.exists():
            raise CheckpointError(p, "text encoder folder not found (expected Bio_ClinicalBERT's vocab.txt / "
                                     "tokenizer files)")
        return str(p)
    name = (((hp.get("model") or {}).get("text") or {}).get("bert_type")) or "emilyalsentzer/Bio_ClinicalBERT"
    try:  # a copy already in the local Hugging Face cache works offline
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001
        raise CheckpointError(None, f"the official checkpoint needs the tokenizer of {name}: pass its local folder "
                                    "(vocab.txt or tokenizer files), e.g. --text-encoder /models/Bio_ClinicalBERT "
                                    "or --model-option afloc.text_encoder=/models/Bio_ClinicalBERT") from None


def load_official(path: str | os.PathLike, text_encoder: str | os.PathLike | None = None,
                  strict: bool = True):
    """Build this project's model from an official checkpoint. Returns (model, LoadReport).

    ``strict``: raise when a model weight is missing from the file (unexpected keys, e.g. a
    ``local_f_embedder`` of an old configuration, are reported and ignored, as in the official
    non-strict loader).
    """

    ck = read_lightning_checkpoint(path)
    sd, dropped = official_to_model_keys(ck.state_dict)
    if not any(k.startswith("img_encoder.") for k in sd) or not any(k.startswith("text_encoder.") for k in sd):
        raise CheckpointError(path, "no AFLoc weights: expected keys 'afloc.img_encoder.*' and 'afloc.text_encoder.*'")
    te = resolve_text_encoder(text_encoder, ck.hyper_parameters)
    cfg = model_config_from_official(ck.hyper_parameters, sd, te)
    model = AFLoc(cfg)  # real init: non-persistent buffers (BERT position ids) must hold values
    _check_shapes(path, model, sd)
    result = model.load_state_dict(sd, strict=False)
    report = LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys), dropped)
    if strict and report.missing:
        raise CheckpointError(path, f"weights missing from the checkpoint: {report.missing}")
    tok = Tokenizer.from_path(te, max_length=cfg.text.max_length)
    model.attach_tokenizer(tok)
    model.image_flag = official_image_flag(ck.hyper_parameters)  # type: ignore[attr-defined]
    model.eval()
    return model, report


def official_image_flag(hp: dict[str, Any]) -> int:
    """The official ``cfg.data.image.flag``: how localization reads an image file (0, the chest model:
    ``cv2.imread(p, 0)``, letterboxed; otherwise the pathology model's colour read, not resized)."""
    flag = (((hp.get("data") or {}).get("image") or {}).get("flag"))
    try:
        return int(flag or 0)
    except (TypeError, ValueError):
        raise CheckpointError(None, f"official config data.image.flag={flag!r}: expected an integer") from None


def _check_shapes(path, model, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(path, "weights of the wrong shape for the configured model: " + "; ".join(bad[:10]))


# ---------------------------------------------------------------------------------------------
# own format
def save_checkpoint(folder: str | os.PathLike, model, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + ``tokenizer/`` into ``folder``."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    cfg = model.cfg.to_dict()
    cfg["text"]["bert"] = None  # the weights are in the file; never re-read a pretrained folder
    cfg["vision"]["pretrained"] = None
    cfg["text"]["vocab"] = TOKENIZER_DIR
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg, **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save(folder / TOKENIZER_DIR)
    return folder


def load_checkpoint(folder: str | os.PathLike, device: str = "cpu"):
    """Model from a folder written by ``save_checkpoint`` (weights via safetensors, config via JSON)."""

    folder = Path(folder)
    if folder.is_file() and folder.name in (MODEL_FILE, CONFIG_FILE):
        folder = folder.parent
    cfg_path, w_path = folder / CONFIG_FILE, folder / MODEL_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(folder, f"not an afloc-bench checkpoint folder (expected {CONFIG_FILE} and {MODEL_FILE})")
    try:
        doc = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise CheckpointError(cfg_path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(cfg_path, f"expected format {FORMAT!r}, found {found!r}")
    try:
        cfg = ModelConfig.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"not an AFLoc model configuration ({type(exc).__name__}: {exc})") from None
    cfg.text.bert = None
    cfg.vision.pretrained = None
    model = AFLoc(cfg)
    state = read_tensors(w_path, expected="AFLoc weights (model.safetensors)")
    _check_shapes(w_path, model, state)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(w_path, f"weights do not fit the config: missing {sorted(result.missing_keys)}, "
                                      f"unexpected {sorted(result.unexpected_keys)}")
    model.attach_tokenizer(Tokenizer.from_path(folder / (cfg.text.vocab or TOKENIZER_DIR),
                                               max_length=cfg.text.max_length, lowercase=cfg.text.lowercase))
    model.image_flag = int(doc.get("image_flag", 0))  # written by a training config that reads colour
    model.eval()
    return model.to(device)


def load_model(path: str | os.PathLike, text_encoder: str | os.PathLike | None = None, device: str = "cpu"):
    """Any supported checkpoint: own folder/safetensors, or an official Lightning file."""
    p = Path(path)
    if p.is_dir() or p.suffix in (".safetensors", ".json"):
        return load_checkpoint(p, device)
    model, report = load_official(p, text_encoder)
    model.load_report = report  # type: ignore[attr-defined]
    return model.to(device)
