"""MedKLIP's pretraining objective on the shared trainer: ``afloc-bench train medklip``.

Supervision: entity presence. MedKLIP's own labels come from RadGraph triplets of each report
(75 entities: present / absent / not mentioned). This project has no RadGraph output, so the
labels come from the study's CheXpert table (``Pair.labels``: MIMIC-CXR's
``mimic-cxr-2.0.0-chexpert.csv``; on the demo data the table the generator derives from each
OpenI report's MeSH tags), mapped onto the entities by ``CHEXPERT_TO_ENTITIES``:

    CheXpert column             MedKLIP entities
    No Finding                  normal
    Pleural Effusion            effusion
    Lung Opacity                opacity
    Pneumothorax                pneumothorax
    Edema                       edema
    Atelectasis                 atelectasis
    Consolidation               consolidation
    Pneumonia                   pneumonia
    Cardiomegaly                cardiomegaly
    Enlarged Cardiomediastinum  enlarge      (the adapter's choice for this class too)
    Fracture                    fracture
    Lung Lesion                 nodule, mass, lesion
    Support Devices             device, tube, line, catheter
    Pleural Other               (none: it spans thickening, plaques, fibrosis)

1.0 → present, 0.0 → absent; uncertain (-1.0) and blank → unknown, left out of the loss, like
MedKLIP's "not mentioned". A column naming several entities gives its value to each of them
(coarse: "Lung Lesion" present marks nodule, mass and lesion present). The other 60 entities
stay unknown.

Loss: MedKLIP's ``loss_ce``, the 2-way cross-entropy of the classifier over every (image, entity)
cell with a known label (``baselines.medklip.model.entity_ce_loss``). Its second term, the position
contrast ``loss_cl`` (``cl_fc`` output against the anatomy embeddings of the entity's RadGraph
location), needs RadGraph positions that the data does not have, so it is left out; ``cl_fc`` is
kept (untrained) so the checkpoint keeps the official keys. Captions are sampled and tokenised
by the trainer as for every task but this objective does not read them.

Entity queries: the official model encodes the 75 descriptions of ``observation explanation.json``
once with a frozen Bio_ClinicalBERT (``[CLS]`` of the last layer, no ``[SEP]``). Preset ``paper``
does the same (``text_encoder`` folder with weights, ``model.entity_descriptions`` file; max
length 128 as the pretraining script). Preset ``demo`` has neither file: the descriptions are
the entity names themselves, encoded once by the demo text encoder (a 2-layer, 64-wide BERT over
the demo WordPiece vocabulary, randomly initialised and frozen) and mean-pooled over their word
pieces, because the ``[CLS]`` states of a random encoder hardly depend on the text (measured:
mean pairwise cosine 0.9999 over the 75 names, 0.63 with mean pooling). Either way the query
embeddings are stored in the checkpoint (``entity_book``), and a randomly initialised text
encoder is saved beside the weights (``text_encoder/``, with the pooling in ``config.json``) for
free-text prompts, so the adapter loads a trained folder without options.

Initialisation (``model.init``): ``official`` (MedKLIP's N(0, 0.02) for every Linear and attention
projection, the paper preset) or ``torch`` (PyTorch's defaults; the demo, see its config).

``cfg.model`` takes the ``MedKLIPConfig`` fields (sizes) plus ``entity_descriptions``,
``description_max_length``, ``description_pooling`` (``cls`` | ``mean``) and ``init``.

Input: the adapter's (``baselines.medklip.model.preprocess_image``: 224×224 resize, ImageNet normalisation),
so training and evaluation see the same frames; no augmentation (the official recipe's random
resized crop, flip and RandAugment are not reproduced).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import BertModel

from baselines.common.text_folder import (
    bert_config,
    call_quietly,
    folder_weights,
    read_json,
    text_folder,
    wordpiece_tokenizer,
)
from baselines.medklip.adapter import FOLDER_FORMAT, FOLDER_FORMAT_VERSION
from baselines.medklip.model import (
    ENTITIES,
    MedKLIP,
    MedKLIPConfig,
    cls_embeddings,
    entity_ce_loss,
    load_trunk_weights,
    official_init,
    preprocess_image,
    read_descriptions,
    tokenize_cls_only,
)
from benchmark.demo.vocab import ensure_demo_vocab
from benchmark.io.checkpoints import load_checked, strip_prefix
from benchmark.io.images import read_image
from benchmark.training.task import TrainTask

CHEXPERT_TO_ENTITIES: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Pleural Effusion": ("effusion",),
    "Lung Opacity": ("opacity",),
    "Pneumothorax": ("pneumothorax",),
    "Edema": ("edema",),
    "Atelectasis": ("atelectasis",),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Cardiomegaly": ("cardiomegaly",),
    "Enlarged Cardiomediastinum": ("enlarge",),
    "Fracture": ("fracture",),
    "Lung Lesion": ("nodule", "mass", "lesion"),
    "Support Devices": ("device", "tube", "line", "catheter"),
}
UNMAPPED_COLUMNS = ("Pleural Other",)
UNKNOWN = -1

# the demo text encoder: afloc's demo BERT sizes (2 layers, 64 wide, 2 heads, 256 intermediate, no dropout)
DEMO_MODEL = dict(backbone="resnet18", width=16, d_model=64, nhead=4, num_layers=4, dim_feedforward=256,
                  dropout=0.1, entity_book=True)
# cfg.model keys that are not MedKLIPConfig fields: the text side and the initialisation
TASK_OPTIONS = ("entity_descriptions", "description_max_length", "description_pooling", "init")


def entity_labels(labels: dict | None) -> list[int]:
    """One study's CheXpert labels → 75 entity labels (1 present, 0 absent, -1 unknown)."""

    out = [UNKNOWN] * len(ENTITIES)
    for col, value in (labels or {}).items():
        ents = CHEXPERT_TO_ENTITIES.get(col)
        if ents is None:
            if col in UNMAPPED_COLUMNS:
                continue
            raise ValueError(f"unknown CheXpert column {col!r} in the pair labels; expected one of "
                             f"{sorted(CHEXPERT_TO_ENTITIES) + list(UNMAPPED_COLUMNS)}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        v = float(value)
        if v not in (1.0, 0.0, -1.0):
            raise ValueError(f"CheXpert label {col}={value!r}: expected 1.0, 0.0, -1.0 or blank")
        if v == -1.0:  # uncertain: not used
            continue
        for e in ents:
            i = ENTITIES.index(e)
            out[i] = max(out[i], int(v))  # "present" wins if two columns name one entity
    return out


def labels_tensor(batch_labels: Sequence[dict | None]):
    """The trainer's ``label_fn``: per-pair label dicts → LongTensor [B, 75] (-1 unknown)."""

    if batch_labels and all(lab is None for lab in batch_labels):
        raise ValueError("the MedKLIP objective needs per-study labels and no pair of this batch has any; "
                         "the mimic_cxr loader reads them from mimic-cxr-2.0.0-chexpert.csv(.gz) in its root")
    return torch.tensor([entity_labels(lab) for lab in batch_labels], dtype=torch.long)


def read_input(path: str):
    """The trainer's ``image_fn``: image file → the adapter's input tensor (3×224×224)."""

    return preprocess_image(read_image(path, "medklip"))


class CaptionTokenizer:
    """Captions → ``[CLS]`` + word pieces (no ``[SEP]``): the tokenisation the adapter gives prompts."""

    def __init__(self, hf_tokenizer: Any, max_length: int):
        self.hf, self.max_length = hf_tokenizer, int(max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, Any]:

        return tokenize_cls_only(self.hf, texts, self.max_length)


class TextSide:
    """The frozen text encoder that made the entity queries, kept with the model for ``save``."""

    def __init__(self, bert: Any, tokenizer: Any, vocab: Path, source: str | None, descriptions: str,
                 max_length: int, pooling: str):
        self.bert, self.tokenizer, self.vocab = bert, tokenizer, vocab
        self.source = source  # the pretrained folder, None for a randomly initialised encoder (saved)
        self.descriptions, self.max_length, self.pooling = descriptions, max_length, pooling


class MedklipTask(TrainTask):
    name = "medklip"
    metric_columns = ("loss_ce", "known_fraction")
    image_fn = staticmethod(read_input)
    label_fn = staticmethod(labels_tensor)

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:


        overrides = dict(cfg.model or {})
        text_opts = {k: overrides.pop(k) for k in TASK_OPTIONS if k in overrides}
        if cfg.preset == "demo":
            vocab = self._demo_vocab(cfg)
            hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer or wordpiece_tokenizer(vocab)
            from afloc.config import demo as demo_config

            bert_cfg = dict(demo_config(vocab_size=len(hf.get_vocab())).text.bert_config)
            torch.manual_seed(cfg.seed)
            bert = call_quietly(lambda: BertModel(bert_config(bert_cfg), add_pooling_layer=False))
            source = None
            names = [e.replace("_", " ") for e in ENTITIES]
            descriptions, what = names, "the entity names"
            max_length = int(text_opts.get("description_max_length", 64))
            pooling = str(text_opts.get("description_pooling", "mean"))
            mcfg = MedKLIPConfig(**DEMO_MODEL, text_dim=bert.config.hidden_size)
        elif cfg.preset == "paper":
            folder = text_folder(cfg.text_encoder, "Bio_ClinicalBERT", "https://huggingface.co/emilyalsentzer/"
                                 "Bio_ClinicalBERT", files=("config.json", "vocab.txt"))
            vocab = folder
            hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer or wordpiece_tokenizer(folder)
            bert = call_quietly(lambda: BertModel(bert_config(read_json(folder / "config.json")),
                                                  add_pooling_layer=False))
            load_checked(bert, strip_prefix(folder_weights(folder, "Bio_ClinicalBERT weights"), "bert."),
                         source=folder, expected="Bio_ClinicalBERT weights",
                         ignore=[r"cls\..*", r"pooler\..*", r".*position_ids", r".*token_type_ids"])
            source = str(folder.resolve())
            desc = text_opts.get("entity_descriptions")
            if not desc:
                raise ValueError("preset paper needs MedKLIP's entity descriptions: set model.entity_descriptions to "
                                 "the release's 'observation explanation.json' (--set model.entity_descriptions=PATH)")
            descriptions, what = read_descriptions(Path(desc)), str(Path(desc).resolve())
            max_length = int(text_opts.get("description_max_length", 128))
            pooling = str(text_opts.get("description_pooling", "cls"))
            mcfg = MedKLIPConfig(entity_book=True, text_dim=bert.config.hidden_size)
        else:
            raise ValueError(f"unknown preset {cfg.preset!r} for medklip; expected demo or paper")
        if overrides:
            mcfg = MedKLIPConfig.from_dict({**mcfg.to_dict(), **overrides}, "training config model")
        if not mcfg.entity_book:
            raise ValueError("a trained MedKLIP keeps its queries: model.entity_book must stay true")
        bert.eval()
        for p in bert.parameters():
            p.requires_grad_(False)
        book = cls_embeddings(bert, tokenize_cls_only(hf, descriptions, max_length), pooling=pooling)
        torch.manual_seed(cfg.seed)
        model = MedKLIP.from_config(mcfg)
        init = str(text_opts.get("init", "official"))
        if init not in ("official", "torch"):
            raise ValueError(f"model.init must be 'official' (MedKLIP's N(0, 0.02)) or 'torch' (PyTorch's defaults), "
                             f"not {init!r}")
        if init == "official":
            official_init(model)
        if cfg.pretrained_vision:
            load_trunk_weights(model, cfg.pretrained_vision)
        model.entity_book.copy_(book)
        model.text_side = TextSide(bert, hf, vocab, source, what, max_length, pooling)
        return model, CaptionTokenizer(hf, max_length)

    @staticmethod
    def _demo_vocab(cfg: Any) -> Path:
        if cfg.text_encoder:
            return Path(cfg.text_encoder)
        if cfg.vocab:
            return Path(cfg.vocab).parent if Path(cfg.vocab).is_file() else Path(cfg.vocab)

        return ensure_demo_vocab()

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:

        with autocast:
            logits, _ = model.decode(model.image_features(batch["images"]))
        labels = batch["labels"]
        loss = entity_ce_loss(logits.float(), labels)
        known = ((labels == 0) | (labels == 1)).float().mean()
        return {"loss": loss, "loss_ce": loss.detach(), "known_fraction": known}

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:
        """``model.safetensors`` (with the entity_book) + ``config.json`` (+ ``text_encoder/`` when the
        text encoder was randomly initialised: weights, config and vocabulary)."""


        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": FOLDER_FORMAT})
        side: TextSide | None = getattr(model, "text_side", None)
        text: dict[str, Any] = {"folder": None, "source": None, "descriptions": None, "max_length": 64,
                                "pooling": "cls"}
        if side is not None:
            text.update(descriptions=side.descriptions, max_length=side.max_length, source=side.source,
                        pooling=side.pooling)
            if side.source is None:
                text["folder"] = "text_encoder"
                self._save_text_encoder(side, folder / "text_encoder")
        doc = {"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION, "model": model.cfg.to_dict(),
               "text": text, "objective": "loss_ce (entity presence from CheXpert labels; no loss_cl)",
               "label_map": {k: list(v) for k, v in CHEXPERT_TO_ENTITIES.items()}, **(extra or {})}
        (folder / "config.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    @staticmethod
    def _save_text_encoder(side: TextSide, where: Path) -> None:


        where.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in side.bert.state_dict().items()},
                  str(where / "model.safetensors"))
        (where / "config.json").write_text(side.bert.config.to_json_string())
        vocab = side.vocab / "vocab.txt" if side.vocab.is_dir() else side.vocab
        shutil.copy2(vocab, where / "vocab.txt")
        settings = side.vocab / "tokenizer_config.json" if side.vocab.is_dir() else None
        if settings is not None and settings.is_file():
            shutil.copy2(settings, where / "tokenizer_config.json")
