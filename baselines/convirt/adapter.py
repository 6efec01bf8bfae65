"""ConVIRT (Zhang et al., 2020) — ViLMedic's re-implementation layout; there is no official checkpoint.

Accepted checkpoints:
- ViLMedic's model-zoo ``selfsup/convirt-mimic`` ``.pth`` (``torch.load(...)["model"]``, keys
  ``visual.cnn.*`` or ``visual.model.*``, ``linguistic.encoder.*`` RoBERTa, ``vis_proj``,
  ``lin_proj``); its ``config.yml`` next to it is read (safely) for the projection size, the
  tokenizer length and the report cleaning;
- checkpoints trained by this project (``afloc-bench train convirt``): a folder (or the
  ``.safetensors`` file inside it) holding ``model.safetensors`` and ``config.json``
  (``ConvirtConfig``); when it also holds its tokenizer files (``vocab.txt``), no ``text_encoder``
  option is needed;
- nothing (and no ``random_init``): the demo model (the demo weights of ``baselines/manifest.yaml``: ResNet-18 width 16
  + 2-layer BERT over the demo vocabulary, trained on the demo pairs on first use and cached).

Heatmap (ConVIRT has no local alignment, so any map is derived): ``vis_proj`` applied at every
``layer4`` location (7×7 for 224 input, also for the demo's small trunk), cosine with the text
embedding. The projection head is non-linear, so this map approximates how the pooled embedding
would respond to each location.

Zero-shot: cosines of the image embedding with the positive and negative prompts, divided by
the training temperature τ (0.1), softmax.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from baselines.common.adapter import BaselineAdapter, softmax_pair
from baselines.common.text_folder import bpe_tokenizer, read_json, text_folder, wordpiece_tokenizer
from baselines.convirt.model import FORMAT, VILMEDIC_RENAMES, CaptionTokenizer, ConVIRT, ConvirtConfig, image_input
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Query, query_texts
from benchmark.io.checkpoints import (
    CheckpointError,
    apply_rename,
    load_checked,
    read_tensors,
    state_dict_from,
    strip_prefix,
    to_plain,
)

PUBLISHED = ("no official weights exist; ViLMedic model zoo `selfsup/convirt-mimic` (Google Drive id "
             "1py2k6kFO1tbSlHroAKmHjOnayIakOtMm, listed in jbdel/vilmedic vilmedic/zoo/modeling_auto.py), or a "
             "folder with model.safetensors + config.json trained by this project")
log = logging.getLogger(__name__)
TEXT_PUBLISHED = ("the checkpoint's text encoder folder: https://huggingface.co/allenai/biomed_roberta_base "
                  "(config.json, vocab.json, merges.txt) for ViLMedic's ConVIRT")


class ConvirtAdapter(BaselineAdapter):
    """ConVIRT: ResNet-50 + RoBERTa/BERT with 2-layer projection heads (or the demo's small model).

    Options: ``text_encoder`` (local folder: config.json plus vocab.json/merges.txt for RoBERTa or
    vocab.txt for BERT; not needed for folders that carry their tokenizer), ``random_init``,
    ``seed``; for ``random_init`` also ``proj_dim``.
    """

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    needs_checkpoint = False  # no --ckpt: the demo model
    input_geometry = "resize:224x224"
    preprocessing_id = "convirt-pilbilinear-resize224x224-imagenet-v1"
    decode = "pil-rgb"  # ViLMedic: PIL RGB
    checkpoint_name = "convirt-mimic (ViLMedic zoo .pth) or model.safetensors + config.json"
    checkpoint_url = PUBLISHED

    def load(self, checkpoint: str | None, device: str) -> None:

        if checkpoint is None and not self.opt_bool("random_init"):
            checkpoint = self.demo_checkpoint()
            log.info("%s: no checkpoint given, using the demo model %s", self.name or "convirt", checkpoint)
        self.checkpoint = checkpoint
        random_init = self.wants_random_init(checkpoint)
        own = None if random_init else _project_folder(Path(checkpoint))
        if own is not None:  # trained by this project: config.json (checked first), maybe its vocabulary
            weights_path, cfg, fmt = _resolve(Path(checkpoint), "roberta", {})
            if any((own / f).is_file() for f in ("vocab.txt", "vocab.json")):
                if self.opt("text_encoder"):
                    log.info("%s: option text_encoder ignored, the checkpoint folder carries its tokenizer", own)
                folder = own
            else:
                folder = text_folder(self.opt("text_encoder"), "the ConVIRT text encoder", TEXT_PUBLISHED)
                if not cfg.text_config:
                    cfg.text_config = read_json(folder / "config.json")
        else:
            folder = text_folder(self.opt("text_encoder"), "the ConVIRT text encoder", TEXT_PUBLISHED)
            kind = "roberta" if (folder / "vocab.json").is_file() else "bert"
            text_cfg = read_json(folder / "config.json")
            weights_path = None
            if random_init:
                cfg = ConvirtConfig(text_kind=kind, text_config=text_cfg, proj_dim=int(self.opt("proj_dim", 768)))
            else:
                weights_path, cfg, fmt = _resolve(Path(checkpoint), kind, text_cfg)
        raw = None
        if weights_path is not None:
            raw = read_tensors(weights_path, expected="a ConVIRT checkpoint")
            embedded = raw.get("config") if isinstance(raw, dict) and fmt == "ViLMedic" else None
            if embedded is not None and not (weights_path.parent / "config.yml").is_file():
                # a file of ViLMedic's own trainer carries its (OmegaConf) config, read as plain data
                _apply_vilmedic_config(cfg, to_plain(embedded), weights_path)
        self.cfg = cfg
        self.seed_init()
        try:
            model = ConVIRT(cfg)
        except (TypeError, ValueError) as exc:
            if own is None:
                raise
            from benchmark.io.checkpoints import CheckpointError

            raise CheckpointError(own / "config.json", f"cannot build ConVIRT from this config ({exc})") from None
        if raw is not None:
            sd = state_dict_from(raw, weights_path, containers=("model", "state_dict"),
                                 expected="a ConVIRT state dict (ViLMedic: a dict with 'model')")
            sd = apply_rename(strip_prefix(sd, "module."), VILMEDIC_RENAMES)  # module.: a multi-GPU run
            self.key_report = load_checked(model, sd, source=weights_path, expected=f"a ConVIRT model ({fmt})",
                                           ignore=[r".*embeddings\.position_ids", r".*embeddings\.token_type_ids"])
        self.model = self.place(model, device)
        hf = bpe_tokenizer(folder) if cfg.text_kind == "roberta" else wordpiece_tokenizer(folder)
        self.tokenizer = CaptionTokenizer(hf, cfg)

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """ViLMedic evaluation transform: Resize((224, 224)) (PIL bilinear), ToTensor, ImageNet normalisation."""

        return image_input(image)

    def encode_images(self, batch: Any) -> dict[str, Any]:

        with torch.no_grad():
            g, dense = self.model.encode_image(batch.to(self.device))
        return {"global": g, "dense": dense}

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The same encoding as training (``baselines.convirt.model.CaptionTokenizer``)."""
        return self.tokenizer(list(prompts))

    def encode_texts(self, queries: Sequence[Query]) -> Any:

        enc = self.tokenize(query_texts(queries))
        with torch.no_grad():
            return self.model.encode_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    # -- outputs -----------------------------------------------------------------------------
    def similarity_map(self, image_emb: dict[str, Any], text_emb: Any) -> np.ndarray:

        with torch.no_grad():
            d = F.normalize(image_emb["dense"], dim=-1)
            t = F.normalize(text_emb.to(d.device), dim=-1)
            return torch.einsum("bhwd,bd->bhw", d, t).float().cpu().numpy()

    def cosine(self, image_emb: dict[str, Any], text_emb: Any) -> Any:

        g = image_emb["global"]
        return F.cosine_similarity(g, text_emb.to(g.device), dim=-1, eps=1e-8).double().cpu()

    def score(self, image_emb: dict[str, Any], positive: Any, negative: Any) -> np.ndarray:
        if negative is None:
            raise ValueError("convirt.score needs negative prompts (the probability is softmax(positive, negative))")
        tau = float(self.cfg.tau)
        return softmax_pair(self.cosine(image_emb, positive) / tau, self.cosine(image_emb, negative) / tau).numpy()

    def class_logit(self, image_emb: dict[str, Any], positive: Any) -> np.ndarray:
        """cosine / τ, the logit its zero-shot probability compares."""
        return (self.cosine(image_emb, positive) / float(self.cfg.tau)).numpy()


def _project_folder(path: Path) -> Path | None:
    """The folder of a checkpoint written by this project (``config.json`` beside the weights), else None."""
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        return folder
    return None


def _resolve(path: Path, kind: str, text_cfg: dict[str, Any]) -> tuple[Path, Any, str]:
    """(weights file, ConvirtConfig, format name) for a project folder/file or a ViLMedic ``.pth``."""

    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        data = read_json(folder / "config.json")
        if data.get("format") != FORMAT:
            raise CheckpointError(folder / "config.json", f"expected a config with \"format\": \"{FORMAT}\"")
        weights = path if path.is_file() else folder / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(folder, "expected model.safetensors next to config.json")
        cfg = ConvirtConfig.from_json(data)
        if not cfg.text_config:
            cfg.text_config = text_cfg
        return weights, cfg, "afloc-bench safetensors"
    if path.is_dir():
        pth = sorted(path.glob("*.pth"))
        if len(pth) != 1:
            raise CheckpointError(path, "expected one ViLMedic .pth file (or model.safetensors + config.json)")
        path = pth[0]
    cfg = ConvirtConfig(text_kind=kind, text_config=text_cfg)
    zoo_cfg = folder / "config.yml"
    if zoo_cfg.is_file():
        _apply_vilmedic_yaml(cfg, zoo_cfg)
    return path, cfg, "ViLMedic"


def _apply_vilmedic_yaml(cfg: Any, path: Path) -> None:
    """Projection size, tokenizer length and report cleaning from a ViLMedic ``config.yml`` (safe YAML)."""

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(path, f"expected ViLMedic's YAML config: {exc}") from None
    _apply_vilmedic_config(cfg, data, path)


def _apply_vilmedic_config(cfg: Any, data: Any, path: Path) -> None:
    """The settings of a ViLMedic config (``config.yml``, or the ``config`` a trainer file holds)."""

    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected ViLMedic's config as a mapping, found {type(data).__name__}")
    model = data.get("model") or {}
    proj = model.get("projection") or {}
    seq = (data.get("dataset") or {}).get("seq") or {}
    cfg.proj_dim = int(proj.get("projection_dim", cfg.proj_dim))
    cfg.visual_dim = int(proj.get("visual_embedding_dim", cfg.visual_dim))
    cfg.max_length = int(seq.get("tokenizer_max_len", cfg.max_length))
    cfg.text_processing = "r2gen" if seq.get("processing") == "r2gen_clean_report" else "none"
    cfg.add_special_tokens = seq.get("source", "src") == "tgt"
    loss = model.get("loss") or {}
    cfg.tau = float(loss.get("tau", cfg.tau))
    cfg.lambda_ = float(loss.get("lambda_", cfg.lambda_))
