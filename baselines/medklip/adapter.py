"""MedKLIP (Wu et al., ICCV 2023): knowledge-enhanced entity queries, re-implemented.

A query's finding (its canonical category) is mapped to a MedKLIP entity through a fixed table
(``ENTITY_OF``): "Pleural Effusion" → ``effusion``. All 75 entity queries always run, in the
official order (they attend to each other, so dropping or reordering any changes every output).
A query whose finding has no entity (or free text) becomes an extra query (BERT ``[CLS]`` of the
prompt → ``disease_embedding_layer``) appended after the 75 in a separate decoder pass, so the
75 standard outputs are never changed by it.

Heatmap: the decoder's cross-attention to the 14×14 patches, averaged over heads and over the 4
layers (as the official RSNA grounding script does), for the mapped entity. The official ×16 nearest \
upsampling and its 0.008 threshold belong
to a protocol.

Zero-shot: softmax over the 2-way head, probability of "present" for the mapped entity (the
official CXR14 recipe). MedKLIP has no negative prompt; the negative embedding is not used.

Checkpoints (``--ckpt medklip=PATH``):
  * the official ``checkpoint_final.pth``: needs ``text_encoder`` (Bio_ClinicalBERT with weights)
    and ``entity_descriptions`` to rebuild the 75 query embeddings, which the file lacks;
  * a folder written by ``afloc-bench train medklip`` (``model.safetensors`` + ``config.json``):
    the query embeddings are in the weights (``entity_book``); a randomly initialised text
    encoder (the demo's) is saved beside them in ``text_encoder/``, so no option is needed;
  * nothing: the demo model (the demo weights of ``baselines/manifest.yaml``, trained on first use and cached), unless
    ``text_encoder`` or ``entity_descriptions`` is given, which name the official model's files:
    then its ``checkpoint_final.pth`` is required.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertModel

from baselines.common.adapter import BaselineAdapter
from baselines.common.text_folder import (
    bert_config,
    call_quietly,
    folder_weights,
    read_json,
    text_folder,
    wordpiece_tokenizer,
)
from baselines.medklip.model import (
    ENTITIES,
    MedKLIP,
    MedKLIPConfig,
    cls_embeddings,
    preprocess_image,
    read_descriptions,
    tokenize_cls_only,
)
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Query, as_queries
from benchmark.io.checkpoints import (
    CheckpointError,
    load_checked,
    need_file,
    read_tensors,
    state_dict_from,
    strip_prefix,
)

PUBLISHED = ("https://github.com/MediaBrain-SJTU/MedKLIP (checkpoints/README.md: Google Drive folder "
             "1HBShH7J_pO8onkzuweDgDq2QPqj6zjG_, file checkpoint_final.pth)")
DESCRIPTIONS_PUBLISHED = ("https://github.com/MediaBrain-SJTU/MedKLIP, file "
                          "Sample_zero-shot_Classification_CXR14/observation explanation.json")
TEXT_PUBLISHED = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT (config.json, vocab.txt, weights)"
EXTRA = 75  # column of the appended free-text query in the text embedding
FOLDER_FORMAT = "afloc-bench/medklip"  # config.json "format" of the checkpoint folders this project writes
FOLDER_FORMAT_VERSION = 1
OFFICIAL_FILE_OPTIONS = ("text_encoder", "entity_descriptions")  # options that only the official file needs

# Canonical findings (benchmark.pathologies) → MedKLIP entities.
ENTITY_OF: dict[str, str] = {
    "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
    "Edema": "edema", "Pleural Effusion": "effusion", "Lung Opacity": "opacity", "Airspace Opacity": "opacity",
    "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax", "Lung Lesion": "lesion", "Lesion": "lesion",
    "Support Devices": "device",
    "Enlarged Cardiomediastinum": "enlarge",  # no exact entity; ``enlarge`` is the documented choice
    "Infiltration": "infiltrate", "Mass": "mass", "Nodule": "nodule", "Emphysema": "emphysema",
    "Fibrosis": "tail_abnorm_obs", "Pleural Thickening": "thicken", "Hernia": "hernia", "Fracture": "fracture",
    "Calcification": "calcification",
}


class MedKlipAdapter(BaselineAdapter):
    """MedKLIP ResNet-50 (to layer3) + entity-query transformer decoder from ``checkpoint_final.pth``.

    Options: ``entity_descriptions`` (the release's ``observation explanation.json``),
    ``text_encoder`` (local Bio_ClinicalBERT folder with weights: encodes the 75 descriptions and
    free-text prompts), ``free_text`` (true: prompts naming no known disease become an extra
    query; false: such a prompt is an error), ``random_init``, ``seed``. A checkpoint folder of
    this project needs none of them (``text_encoder`` only for free-text prompts of a model
    trained on a pretrained text encoder that has moved since).
    """

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_geometry = "resize:224x224"
    preprocessing_id = "medklip-pilbilinear-resize224x224-imagenet-v1"
    decode = "medklip"  # PIL RGB (RSNA DICOM: histogram-equalised)
    checkpoint_name = "checkpoint_final.pth"
    checkpoint_url = PUBLISHED
    needs_checkpoint = False  # no checkpoint: the demo model, trained on first use

    def load(self, checkpoint: str | None, device: str) -> None:

        self.checkpoint = checkpoint
        self.free_text = self.opt_bool("free_text", True)
        self.checkpoint_kind = "official"
        if checkpoint is None and not self.opt_bool("random_init") and \
                not any(self.opt(k) for k in OFFICIAL_FILE_OPTIONS):
            checkpoint = self.demo_checkpoint()
            logging.getLogger(__name__).info("medklip: no checkpoint given, using the demo model %s", checkpoint)
        folder = _project_folder(checkpoint) if checkpoint is not None and not self.opt_bool("random_init") else None
        if folder is not None:
            self._load_folder(folder, device)
        else:
            self._load_official(checkpoint, device)

    def _load_official(self, checkpoint: str | None, device: str) -> None:


        self.checkpoint = checkpoint
        random_init = self.wants_random_init(checkpoint)
        sd = None
        if not random_init:  # read the checkpoint first: a wrong file fails before anything else loads
            raw = read_tensors(checkpoint, expected="MedKLIP's checkpoint_final.pth")
            sd = strip_prefix(state_dict_from(raw, checkpoint, containers=("model", "state_dict"),
                                              expected="MedKLIP's checkpoint (a dict with 'model')"), "module.")
        folder = text_folder(self.opt("text_encoder"), "Bio_ClinicalBERT", TEXT_PUBLISHED,
                             files=("config.json", "vocab.txt"))
        desc_path = need_file(self.opt("entity_descriptions"), "MedKLIP's entity descriptions "
                              "(`observation explanation.json`)", DESCRIPTIONS_PUBLISHED, "entity_descriptions")
        descriptions = read_descriptions(desc_path)
        self.tokenizer = wordpiece_tokenizer(folder)
        self.seed_init()
        bert = call_quietly(lambda: BertModel(bert_config(read_json(folder / "config.json")), add_pooling_layer=False))
        if random_init:
            self.text_key_report = None
        else:
            self.text_key_report = load_checked(bert, strip_prefix(folder_weights(folder, "Bio_ClinicalBERT weights"),
                                                                   "bert."),
                                                source=folder, expected="Bio_ClinicalBERT weights",
                                                ignore=[r"cls\..*", r"pooler\..*", r".*position_ids",
                                                        r".*token_type_ids"])
        self.bert = self.place(bert, device)
        model = MedKLIP(text_dim=bert.config.hidden_size)
        if sd is not None:
            self.key_report = load_checked(model, sd, source=checkpoint, expected="the MedKLIP model")
        self.model = self.place(model, device)
        enc = tokenize_cls_only(self.tokenizer, descriptions)
        self.entity_book = cls_embeddings(self.bert, enc)  # [75, 768], not in the checkpoint
        self.entity_book_sha = _tensor_sha(self.entity_book)

    def _load_folder(self, folder: Any, device: str) -> None:
        """A checkpoint folder of this project: config.json + model.safetensors (+ text_encoder/)."""

        doc = read_json(folder / "config.json")
        if doc.get("format") != FOLDER_FORMAT:
            raise CheckpointError(folder / "config.json", f"expected format {FOLDER_FORMAT!r} (a MedKLIP checkpoint "
                                                          f"folder of this project), found {doc.get('format')!r}")
        try:
            cfg = MedKLIPConfig.from_dict(dict(doc.get("model") or {}), str(folder / "config.json"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(folder / "config.json", f"expected MedKLIP model options: {exc}") from None
        if not cfg.entity_book:
            raise CheckpointError(folder / "config.json", "expected a model that keeps its entity_book (the 75 "
                                                          "query embeddings) in the weights")
        ignored = [k for k in OFFICIAL_FILE_OPTIONS if self.opt(k) and k != "text_encoder"]
        if ignored:
            logging.getLogger(__name__).warning("medklip: %s ignored: %s carries its own entity queries",
                                                ", ".join(ignored), folder)
        self.checkpoint, self.checkpoint_kind = str(folder), "folder"
        self.seed_init()
        model = MedKLIP.from_config(cfg)
        sd = read_tensors(folder / "model.safetensors", expected="MedKLIP weights (model.safetensors)")
        self.key_report = load_checked(model, sd, source=folder / "model.safetensors",
                                       expected=f"the MedKLIP model of {folder / 'config.json'}")
        self.model = self.place(model, device)
        self.entity_book = self.model.entity_book
        self.entity_book_sha = _tensor_sha(self.entity_book)
        self.bert, self.tokenizer, self.text_key_report = self._folder_text_encoder(folder, doc.get("text") or {},
                                                                                    cfg.text_dim, device)
        self.description_max_length = int((doc.get("text") or {}).get("max_length", 64))
        self.text_pooling = str((doc.get("text") or {}).get("pooling", "cls"))

    def _folder_text_encoder(self, folder: Any, text: dict[str, Any], dim: int, device: str) -> tuple:
        """The text encoder free-text prompts need: the folder's own ``text_encoder/``, else the
        ``text_encoder`` option, else the folder recorded at training; (None, None, None) when absent."""



        where = None
        if text.get("folder"):
            where = folder / text["folder"]
            if not where.is_dir():
                raise CheckpointError(where, "missing: the checkpoint's text encoder folder named in config.json")
        elif self.opt("text_encoder"):
            where = Path(str(self.opt("text_encoder")))
        elif text.get("source") and Path(text["source"]).is_dir():
            where = Path(text["source"])
        if where is None:
            return None, None, None
        bert = call_quietly(lambda: BertModel(bert_config(read_json(where / "config.json")), add_pooling_layer=False))
        if bert.config.hidden_size != dim:
            raise CheckpointError(where, f"expected a text encoder of width {dim} (the model's text_dim), "
                                         f"found {bert.config.hidden_size}")
        report = load_checked(bert, strip_prefix(folder_weights(where, "text encoder weights"), "bert."), source=where,
                              expected="the text encoder weights", ignore=[r"cls\..*", r"pooler\..*",
                                                                           r".*position_ids", r".*token_type_ids"])
        return self.place(bert, device), wordpiece_tokenizer(where), report

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["checkpoint_kind"] = getattr(self, "checkpoint_kind", None)
        d["entity_book_sha256"] = getattr(self, "entity_book_sha", None)
        if getattr(self, "text_key_report", None) is not None:
            d["text_key_report"] = self.text_key_report.as_dict()
        return d

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """Resize to 224×224 (PIL bilinear, aspect ratio not kept), ToTensor, ImageNet normalisation
        (the training input of ``afloc-bench train medklip`` too)."""

        return preprocess_image(image)

    def encode_images(self, batch: Any) -> Any:

        with torch.no_grad():
            return self.model.image_features(batch.to(self.device))

    # -- text ------------------------------------------------------------------------------
    def encode_texts(self, queries: Sequence[Query]) -> dict[str, Any]:
        """Per query: ``weights`` [P, 76] over the 75 entities plus the extra query, ``extra`` [P, 768]."""

        queries = as_queries(queries)
        P = len(queries)
        weights = torch.zeros(P, EXTRA + 1, dtype=torch.float64)
        extra = torch.zeros(P, self.entity_book.shape[1], dtype=self.entity_book.dtype)
        free = []
        for i, q in enumerate(queries):
            entity = ENTITY_OF.get(q.finding) if q.finding else None
            if entity is not None:
                weights[i, ENTITIES.index(entity)] = 1.0
            elif self.free_text:
                weights[i, EXTRA] = 1.0
                free.append(i)
            else:
                raise ValueError(f"medklip: finding {q.finding!r} of prompt {q.text!r} has no MedKLIP entity (known: "
                                 f"{', '.join(ENTITY_OF)}); set free_text=true to use the prompt as an extra query")
        if free:
            if self.bert is None:
                raise ValueError(f"medklip: prompt {queries[free[0]].text!r} names no known disease and "
                                 f"{self.checkpoint} has no text encoder to encode it as an extra query; pass "
                                 "text_encoder=FOLDER (the one it was trained with) or set free_text=false")
            emb = cls_embeddings(self.bert, tokenize_cls_only(self.tokenizer, [queries[i].text for i in free],
                                                              getattr(self, "description_max_length", 64)),
                                 pooling=getattr(self, "text_pooling", "cls"))
            extra[free] = emb.to(extra.dtype).cpu()
        return {"weights": weights, "extra": extra}

    def encode_prompt_ensemble(self, queries: Sequence[Query]) -> dict[str, Any]:
        """Entity weights averaged over the queries; free-text queries share one mean extra query."""
        e = self.encode_texts(list(queries))
        w = e["weights"].mean(0, keepdim=True)
        is_free = e["weights"][:, EXTRA] > 0
        extra = e["extra"][is_free].mean(0, keepdim=True) if bool(is_free.any()) else e["extra"][:1] * 0
        return {"weights": w, "extra": extra}

    # -- outputs -----------------------------------------------------------------------------
    def _decode(self, memory: Any, text_emb: dict[str, Any]) -> tuple[Any, Any]:
        """(P(present) [B, 76], attention [B, 76, 196]); column 75 only where an extra query is used."""

        B = memory.shape[0]
        with torch.no_grad():
            # the entity queries depend on the image only: an image paired with several prompts
            # (consecutive equal rows) is decoded once; the decoder treats each row on its own
            unique, group = _consecutive_unique_rows(memory)
            logits, attn = self.model.decode(unique, self.entity_book)
            if group is not None:
                logits, attn = logits[group], attn[group]
            prob = torch.softmax(logits, dim=-1)[..., 1]
            prob = torch.cat([prob, torch.zeros(B, 1, dtype=prob.dtype, device=prob.device)], dim=1)
            attn = torch.cat([attn, torch.zeros(B, 1, attn.shape[2], dtype=attn.dtype, device=attn.device)], dim=1)
            rows = torch.nonzero(text_emb["weights"][:, EXTRA] > 0).flatten()
            if len(rows):
                r = rows.to(memory.device)
                book = self.entity_book.unsqueeze(0).expand(len(rows), -1, -1)
                q = torch.cat([book, text_emb["extra"][rows].to(book)[:, None]], dim=1)
                lg, at = self.model.decode(memory[r], q)
                prob[r, EXTRA] = torch.softmax(lg, dim=-1)[:, EXTRA, 1]
                attn[r, EXTRA] = at[:, EXTRA]
        return prob.double().cpu(), attn.double().cpu()

    def similarity_map(self, image_emb: Any, text_emb: dict[str, Any]) -> np.ndarray:

        _, attn = self._decode(image_emb, text_emb)
        maps = torch.einsum("bq,bqn->bn", text_emb["weights"], attn)
        side = int(round(attn.shape[2] ** 0.5))
        return maps.reshape(-1, side, side).float().numpy()

    def score(self, image_emb: Any, positive: dict[str, Any], negative: Any) -> np.ndarray:
        prob, _ = self._decode(image_emb, positive)
        return (prob * positive["weights"]).sum(1).numpy()


def _consecutive_unique_rows(rows: Any) -> tuple[Any, Any]:
    """(rows without consecutive repeats, index restoring every row) or (rows, None) when none repeat."""
    if rows.shape[0] < 2:
        return rows, None
    flat = rows.reshape(rows.shape[0], -1)
    repeat = (flat[1:] == flat[:-1]).all(dim=1)
    if not bool(repeat.any()):
        return rows, None
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=rows.device), ~repeat])
    return rows[starts], torch.cumsum(starts.long(), 0) - 1


def _project_folder(checkpoint: str) -> Any:
    """The checkpoint folder when ``checkpoint`` is one of this project's (or a file inside one), else None."""

    p = Path(checkpoint)
    if p.is_file() and p.name in ("model.safetensors", "config.json"):
        p = p.parent
    if not p.is_dir():
        return None
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        from benchmark.io.checkpoints import CheckpointError

        raise CheckpointError(p, "expected a MedKLIP checkpoint folder written by `afloc-bench train medklip` "
                                 "(config.json + model.safetensors) or the official checkpoint_final.pth file")
    return p


def _tensor_sha(t: Any) -> str:

    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
