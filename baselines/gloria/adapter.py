"""GLoRIA (Huang et al., ICCV 2021): global–local image–text representations, re-implemented.

Two registered variants differ only in the heatmap (docs/models.md):
- ``gloria``: GLoRIA's own word–region attention (double softmax, temperature 4), averaged over
  the caption's words ([CLS] excluded), on the 19×19 ``layer3`` grid;
- ``gloria_dot``: the raw dot product of each region embedding with the sentence embedding
  (the map third-party benchmarks and AFLoc's pipeline compute for GLoRIA).

Zero-shot: the official similarity ((local + global) / 2, local from the character-count word
slice, max over a class's prompts); the probability is the softmax of the positive and
negative scores. The official per-batch z-score is not applied: it makes one image's score
depend on the others in its batch.

Weights: the official ``chexpert_resnet50.ckpt`` (with the ``text_encoder`` folder), a folder
written by ``afloc-bench train gloria`` (weights, config and vocabulary; no option needed), or,
with neither, the demo model (the demo weights of ``baselines/manifest.yaml``: trained on the demo pairs on first
use and cached). Both variants use the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.common.adapter import BaselineAdapter, softmax_pair
from baselines.common.text_folder import read_json, text_folder, wordpiece_tokenizer
from baselines.gloria.model import (
    Gloria,
    GloriaConfig,
    TokenTables,
    char_cap_len,
    encode_captions,
    global_similarity,
    image_input,
    local_feature_map,
    local_similarity,
    word_attention_map,
)
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Query, query_texts
from benchmark.io.checkpoints import CheckpointError, load_checked, load_lightning_checkpoint, read_tensors

PUBLISHED = "https://stanfordmedicine.box.com/s/j5h7q99f3pfi7enc0dom73m4nsm6yzvh (GLoRIA README)"
TEXT_PUBLISHED = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT (config.json and vocab.txt)"
FOLDER_FORMAT = "afloc-bench/gloria"  # config.json "format" of a checkpoint folder written by the trainer
log = logging.getLogger(__name__)


class GloriaAdapter(BaselineAdapter):
    """GLoRIA: the official ResNet-50 + Bio_ClinicalBERT ``chexpert_resnet50.ckpt``, a trained
    checkpoint folder, or (no checkpoint) the demo model.

    Options: ``text_encoder`` (folder with Bio_ClinicalBERT's config.json and vocab.txt, for the
    official file; the BERT weights are in the checkpoint), ``heatmap`` (attention | dot),
    ``keep_short_sentences`` (false = official cleaning, which empties one-word prompts),
    ``train_mode`` (true = the image encoder in training mode, as the official loader leaves it),
    ``random_init``, ``seed``.
    """

    # ``gloria`` and ``gloria_dot`` differ in their maps only: their zero-shot scores are computed once
    score_family = "gloria"
    grounding_only_options = ("heatmap",)
    capabilities = (GROUNDING, ZEROSHOT_CLS)
    needs_checkpoint = False  # no --ckpt: the demo model
    input_geometry = "letterbox_crop:256:224"
    preprocessing_id = "gloria-cv2area-letterbox256-crop224-half-v1"
    decode = "cv2-gray"  # GLoRIA.process_img: cv2.imread(path, 0)
    checkpoint_name = "chexpert_resnet50.ckpt"
    checkpoint_url = PUBLISHED

    def load(self, checkpoint: str | None, device: str) -> None:

        self.heatmap = self.opt_choice("heatmap", "attention", ("attention", "dot"))
        self.keep_short = self.opt_bool("keep_short_sentences", False)
        if checkpoint is None and not self.opt_bool("random_init"):
            checkpoint = self.demo_checkpoint()
            log.info("%s: no checkpoint given, using the demo model %s", self.name or "gloria", checkpoint)
        self.checkpoint = checkpoint
        path = None if checkpoint is None else Path(checkpoint).expanduser()
        if path is not None and path.suffix == ".safetensors" and path.is_file():
            path = path.parent  # the weights file of a checkpoint folder: load the folder
        if path is not None and path.is_dir():
            model, self.tokenizer = self._load_folder(path)
        else:
            model, self.tokenizer = self._load_official(checkpoint)
        self.model = self.place(model, device)
        if self.opt_bool("train_mode", False):
            # the official loader never calls .eval(): the ResNet's BatchNorm uses (and updates) the
            # statistics of each batch, so outputs depend on the batch; off by default (eval mode)
            self.model.img_encoder.train()
        self.tables = TokenTables.from_tokenizer(self.tokenizer)
        cfg = self.cfg
        if cfg.crop_size:
            self.input_geometry = f"letterbox_crop:{cfg.imsize}:{cfg.crop_size}"
        else:
            self.input_geometry = f"letterbox:{cfg.imsize}"
        self.preprocessing_id = f"gloria-cv2area-letterbox{cfg.imsize}-crop{cfg.crop_size}-{cfg.img_norm}-v1"

    def _load_official(self, checkpoint: str | None) -> tuple[Any, Any]:
        """The official Lightning file (or random weights) with the Bio_ClinicalBERT folder."""

        folder = text_folder(self.opt("text_encoder"), "Bio_ClinicalBERT", TEXT_PUBLISHED,
                             files=("config.json", "vocab.txt"))
        bert = read_json(folder / "config.json")
        random_init = self.wants_random_init(checkpoint)
        ckpt = None if random_init else load_lightning_checkpoint(checkpoint, "a GLoRIA Lightning checkpoint")
        cfg = GloriaConfig.from_hparams(ckpt["hyper_parameters"] if ckpt else {}, bert)
        self.cfg = cfg
        self.seed_init()
        model = Gloria(cfg)
        if ckpt is not None:
            sd = {k.split("gloria.")[-1]: v for k, v in ckpt["state_dict"].items()}  # the official rule
            self.key_report = load_checked(model, sd, source=checkpoint, expected="a GLoRIA checkpoint",
                                           ignore=[r".*embeddings\.position_ids", r".*embeddings\.token_type_ids"])
        return model, wordpiece_tokenizer(folder)

    def _load_folder(self, folder: Path) -> tuple[Any, Any]:
        """A checkpoint folder of ``afloc-bench train gloria``: ``config.json`` (the model config),
        ``model.safetensors`` and the WordPiece ``vocab.txt`` it was trained with."""
        model, tok, report = load_folder(folder)
        if self.opt("text_encoder"):
            log.info("%s: option text_encoder ignored, the checkpoint folder carries its vocabulary", folder)
        self.cfg, self.key_report = model.cfg, report
        return model, tok

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """cv2 gray → letterbox to 256 (INTER_AREA) → centre crop 224 → [-1, 1] ('half' normalisation)."""

        return image_input(image, self.cfg)

    def encode_images(self, batch: Any) -> dict[str, Any]:

        with torch.no_grad():
            g, loc = self.model.img_encoder(batch.to(self.device))
        return {"global": g, "local": loc}

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, Any]:


        out = encode_captions(self.tokenizer, self.tables, list(prompts), self.cfg.word_num, self.keep_short)
        out["char_len"] = torch.tensor([char_cap_len(p) for p in prompts], dtype=torch.long)
        return out

    def encode_texts(self, queries: Sequence[Query]) -> dict[str, Any]:
        """Rows of one prompt each: words [P,1,D,97], sent [P,1,D], cap_len/char_len/valid [P,1]."""

        prompts = query_texts(queries)
        t = self.tokenize(prompts)
        dev = self.device
        with torch.no_grad():
            words, sent = self.model.text_encoder(t["input_ids"].to(dev), t["attention_mask"].to(dev),
                                                  t["token_type_ids"].to(dev), t["word_index"].to(dev))
        return {"words": words[:, None], "sent": sent[:, None], "cap_len": t["cap_len"][:, None],
                "char_len": t["char_len"][:, None], "valid": torch.ones(len(prompts), 1, dtype=torch.bool)}

    def encode_prompt_ensemble(self, queries: Sequence[Query]) -> dict[str, Any]:
        """One row holding all of a class's prompts (the official score takes the max over them)."""
        e = self.encode_texts(list(queries))
        return {k: v.transpose(0, 1) for k, v in e.items()}

    @staticmethod
    def concat(embs: Sequence[Any]) -> Any:
        """Rows with different prompt counts are padded (``valid`` marks the real prompts)."""

        if not isinstance(embs[0], dict) or "valid" not in embs[0]:
            return BaselineAdapter.concat(embs)
        k = max(e["valid"].shape[1] for e in embs)

        def pad(x: torch.Tensor) -> torch.Tensor:
            extra = k - x.shape[1]
            if extra == 0:
                return x
            return torch.cat([x, torch.zeros((x.shape[0], extra) + tuple(x.shape[2:]), dtype=x.dtype,
                                             device=x.device)], dim=1)

        return {key: torch.cat([pad(e[key]) for e in embs]) for key in embs[0]}

    @staticmethod
    def take(emb: Any, index: Any) -> Any:
        """Prompt-ensemble rows are indexed lazily (the rows plus an index): a class's ensemble holds
        every prompt's word embeddings (megabytes a row), and a batch pairs each with many images."""

        idx = list(index)
        if isinstance(emb, tuple):  # (positive, negative)
            return tuple(GloriaAdapter.take(e, idx) for e in emb)
        if isinstance(emb, dict) and "valid" in emb and emb["valid"].shape[1] > 1:
            return {"ensemble": emb, "index": torch.as_tensor(idx, dtype=torch.long)}
        if isinstance(emb, dict) and "ensemble" in emb:
            return {"ensemble": emb["ensemble"], "index": emb["index"][torch.as_tensor(idx, dtype=torch.long)]}
        return BaselineAdapter.take(emb, idx)

    # -- outputs -----------------------------------------------------------------------------
    def similarity_map(self, image_emb: dict[str, Any], text_emb: dict[str, Any]) -> np.ndarray:


        loc = image_emb["local"]
        with torch.no_grad():
            if self.heatmap == "dot":
                maps = local_feature_map(loc, text_emb["sent"][:, 0].to(loc.device))
            else:
                maps = word_attention_map(loc, text_emb["words"][:, 0].to(loc.device), text_emb["cap_len"][:, 0],
                                          self.cfg.temp1)
        return maps.float().cpu().numpy()

    def similarities(self, image_emb: dict[str, Any], text_emb: dict[str, Any]) -> Any:
        """Official combined similarity (local + global) / 2 per paired row and prompt: [B, K]."""

        loc, g = image_emb["local"], image_emb["global"]
        if "ensemble" in text_emb:  # rows of ``take``: the ensembles and, per paired row, its ensemble
            text_emb, src = text_emb["ensemble"], text_emb["index"]
        else:
            src = torch.arange(len(text_emb["valid"]))
        valid = text_emb["valid"][src]
        B, K = valid.shape
        out = torch.full((B, K), float("-inf"), dtype=torch.float64)
        with torch.no_grad():
            for k in range(K):
                rows = torch.nonzero(valid[:, k]).flatten()
                if len(rows) == 0:
                    continue
                r, e = rows.to(loc.device), src[rows]
                local = local_similarity(loc[r], text_emb["words"][e, k].to(loc.device), text_emb["char_len"][e, k])
                glob = global_similarity(g[r], text_emb["sent"][e, k].to(g.device))
                out[rows, k] = ((local + glob) / 2).double().cpu()
        return out

    def score(self, image_emb: dict[str, Any], positive: dict[str, Any], negative: dict[str, Any]) -> np.ndarray:
        if negative is None:
            raise ValueError("gloria.score needs negative prompts (the probability is softmax(positive, negative))")
        pos = self.similarities(image_emb, positive).max(dim=1).values
        neg = self.similarities(image_emb, negative).max(dim=1).values
        return softmax_pair(pos, neg).numpy()

    def class_logit(self, image_emb: dict[str, Any], positive: dict[str, Any]) -> np.ndarray:
        """The ensemble's best combined similarity, as its zero-shot probability uses it."""
        return self.similarities(image_emb, positive).max(dim=1).values.double().cpu().numpy()


def load_folder(folder: Path) -> tuple[Any, Any, Any]:
    """(model, WordPiece tokenizer, key report) of a checkpoint folder written by ``GloriaTask.save``."""

    expected = f"a GLoRIA checkpoint folder (config.json of format {FOLDER_FORMAT!r}, model.safetensors, vocab.txt)"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(folder, f"no config.json; expected {expected}")
    doc = read_json(cfg_path)
    if doc.get("format") != FOLDER_FORMAT or not isinstance(doc.get("model"), dict):
        raise CheckpointError(cfg_path, f"format {doc.get('format')!r}; expected {expected}")
    try:
        cfg = GloriaConfig.from_dict(doc["model"])
        model = Gloria(cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"cannot build the model from its config ({exc}); expected {expected}") \
            from None
    sd = read_tensors(folder / "model.safetensors", expected=expected)
    report = load_checked(model, sd, source=folder / "model.safetensors", expected=expected)
    return model, wordpiece_tokenizer(folder), report
