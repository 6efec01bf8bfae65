"""What the shared trainer (``afloc.train.Trainer``) asks of a model family: a *training task*.

The trainer owns everything that does not depend on the model: the data plan (seeded batches,
sampled captions), devices and processes (DDP by hand, gloo/NCCL), the optimiser and schedule,
mixed precision, gradient clipping, validation, checkpoints, resume and the metrics log. A task
owns the rest:

* ``build(cfg, tokenizer)`` → ``(model, tokenizer)``; the tokenizer is a callable from a list of
  captions to a dict of tensors that includes ``attention_mask``;
* ``image_fn`` (path → image tensor) when the family's training input differs from AFLoc's
  letterbox-224, ``Normalize(0.5, 0.5)``; ``label_fn`` (list of per-pair label dicts → tensor)
  when the objective needs labels (added to the batch as ``labels``);
* ``loss_terms(model, batch, autocast)`` → dict of scalar tensors with the total under ``loss``;
* ``metric_columns`` / ``metric_row(terms)``: the loss parts written to ``metrics.csv``;
* ``save(model, folder, extra)`` / ``load_weights(model, folder)``: the checkpoint folder that the
  family's adapter loads with ``--ckpt NAME=FOLDER`` (weights in ``model.safetensors``);
* ``global_terms(...)`` only for families with ``global_negatives = True`` (cross-rank negatives).

Tasks are registered by name in ``TRAIN_TASKS`` (``"module:Class"``, imported on use), and a
training config names its task (``task: gloria``); ``afloc-bench train NAME`` runs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

TRAIN_TASKS: dict[str, str] = {
    "afloc": "afloc.train_task:AFLocTask",
    "gloria": "baselines.gloria_train:GloriaTask",
    "convirt": "baselines.convirt_train:ConvirtTask",
    "biovil": "baselines.biovil_train:BiovilTask",
    "medklip": "baselines.medklip_train:MedklipTask",
}


def get_task(name: str) -> "TrainTask":
    if name not in TRAIN_TASKS:
        raise ValueError(f"unknown training task {name!r}; expected one of {sorted(TRAIN_TASKS)}")
    module, cls = TRAIN_TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def pair_sum(terms: dict[str, float], prefix: str) -> float | None:
    """``prefix0 + prefix1`` (the two directions of a contrastive loss), None when absent."""
    if f"{prefix}0" not in terms:
        return None
    return terms[f"{prefix}0"] + terms[f"{prefix}1"]


class TrainTask:
    """Base: the defaults are AFLoc's data path; subclasses define the model side."""

    name = ""
    config_dir: Path = Path(__file__).parent / "configs"
    global_negatives = False
    metric_columns: tuple[str, ...] = ()
    image_fn: Callable[[str], Any] | None = None  # None: AFLoc's letterbox-224 input (cached if asked)
    label_fn: Callable[[Sequence[dict | None]], Any] | None = None

    def config_path(self, spec: str) -> Path:
        """``paper``/``demo``/... → the shipped YAML: ``afloc/configs/<spec>.yaml`` for AFLoc,
        ``baselines/configs/<task>-<spec>.yaml`` for the baselines."""
        if self.name == "afloc":
            return self.config_dir / f"{spec}.yaml"
        return Path(__file__).parent.parent / "baselines" / "configs" / f"{self.name}-{spec}.yaml"

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:
        raise NotImplementedError

    def model_config(self, model: Any) -> dict[str, Any]:
        cfg = getattr(model, "cfg", None)
        return cfg.to_dict() if hasattr(cfg, "to_dict") else {}

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:
        raise NotImplementedError

    def text_bert(self, model: Any) -> Any:
        """The BERT inside ``model`` that ``text_pretrain`` trains."""
        raise ValueError(f"the {self.name} objective does not support text_pretrain")

    def global_terms(self, model: Any, batches: list[dict[str, Any]], autocast: Any, dist_on: bool) -> dict[str, Any]:
        raise ValueError(f"the {self.name} objective has no cross-rank negatives (negatives: global); "
                         "use negatives: local")

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {c: terms.get(c) for c in self.metric_columns}

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:
        raise NotImplementedError

    def load_weights(self, model: Any, folder: Path) -> None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)


class AFLocTask(TrainTask):
    """AFLoc's multi-level objective (word↔shallow, sentence↔deep, report↔global)."""

    name = "afloc"
    global_negatives = True
    metric_columns = ("global_loss", "sentence_loss", "word_loss")

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:
        import torch

        from afloc import config as C
        from afloc.model import AFLoc
        from afloc.tokenizer import Tokenizer
        from afloc.train import _deep_merge

        if cfg.preset not in C.PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; expected one of {sorted(C.PRESETS)}")
        if tokenizer is not None:
            tok = tokenizer
        elif cfg.text_encoder:
            tok = Tokenizer.from_path(cfg.text_encoder)
        elif cfg.vocab:
            tok = Tokenizer.from_path(cfg.vocab)
        elif cfg.preset == "demo":
            from afloc.vocab import ensure_demo_vocab

            tok = Tokenizer.from_path(ensure_demo_vocab())
        else:
            raise ValueError(f"preset {cfg.preset!r} needs a text encoder folder (--text-encoder, e.g. "
                             "Bio_ClinicalBERT with vocab.txt) or a vocabulary (--vocab)")
        if cfg.preset == "paper":
            mcfg = C.paper(bert=cfg.text_encoder)
        else:
            mcfg = C.PRESETS[cfg.preset](vocab_size=len(tok))
        if cfg.model:
            mcfg = C.ModelConfig.from_dict(_deep_merge(mcfg.to_dict(), cfg.model))
        mcfg.vision.pretrained = cfg.pretrained_vision
        tok.max_length = mcfg.text.max_length
        torch.manual_seed(cfg.seed)
        model = AFLoc(mcfg)
        model.attach_tokenizer(tok)
        return model, tok

    def text_bert(self, model: Any) -> Any:
        return model.text_encoder.model

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:
        with autocast:
            img = model.encode_image(batch["images"], shallow=model.cfg.loss.use_word)
            txt = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return model.loss_terms(img, txt)

    def global_terms(self, model: Any, batches: list[dict[str, Any]], autocast: Any, dist_on: bool) -> dict[str, Any]:
        """Features of this rank's chunks, all-gathered with gradients, scored as one global batch."""
        import torch

        from afloc.aggregate import TextLevels
        from afloc.model import ImageFeatures
        from afloc.train import _gather_cat, _gather_nograd

        use_word = model.cfg.loss.use_word
        imgs, txts = [], []
        for b in batches:
            with autocast:
                imgs.append(model.encode_image(b["images"], shallow=use_word))
                txts.append(model.encode_text(b["input_ids"], b["attention_mask"], b["token_type_ids"]))

        def cat(xs):
            return torch.cat(xs, 0) if len(xs) > 1 else xs[0]

        img = ImageFeatures(deep=_gather_cat(cat([i.deep for i in imgs]), dist_on),
                            shallow=_gather_cat(cat([i.shallow for i in imgs]), dist_on) if use_word else None,
                            global_=_gather_cat(cat([i.global_ for i in imgs]), dist_on))
        txt = TextLevels(words=_gather_cat(cat([t.words for t in txts]), dist_on),
                         word_lens=_gather_nograd(cat([t.word_lens for t in txts]), dist_on),
                         sentences=_gather_cat(cat([t.sentences for t in txts]), dist_on),
                         sentence_lens=_gather_nograd(cat([t.sentence_lens for t in txts]), dist_on),
                         report=_gather_cat(cat([t.report for t in txts]), dist_on),
                         n_words=cat([t.n_words for t in txts]), n_sentences=cat([t.n_sentences for t in txts]))
        return model.loss_terms(img, txt)

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {c: pair_sum(terms, c) for c in self.metric_columns}

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:
        from afloc.checkpoint import save_checkpoint

        save_checkpoint(folder, model, extra=extra)
