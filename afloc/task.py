"""AFLoc's training task on the shared trainer (``benchmark.training``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from afloc import config as C
from afloc.aggregate import TextLevels
from afloc.checkpoint import save_checkpoint
from afloc.inference import to_model_input
from afloc.model import AFLoc, ImageFeatures
from afloc.tokenizer import Tokenizer
from benchmark.training.distributed import gather_cat, gather_nograd
from benchmark.training.task import TrainTask, deep_merge, pair_sum


class AFLocTask(TrainTask):
    """AFLoc's multi-level objective (word↔shallow, sentence↔deep, report↔global)."""

    name = "afloc"
    global_negatives = True
    metric_columns = ("global_loss", "sentence_loss", "word_loss")
    frame_input = staticmethod(to_model_input)  # letterbox 224, Normalize(0.5, 0.5), 3 channels

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:


        if cfg.preset not in C.PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; expected one of {sorted(C.PRESETS)}")
        if tokenizer is not None:
            tok = tokenizer
        elif cfg.text_encoder:
            tok = Tokenizer.from_path(cfg.text_encoder)
        elif cfg.vocab:
            tok = Tokenizer.from_path(cfg.vocab)
        elif cfg.preset == "demo":
            from benchmark.demo.vocab import ensure_demo_vocab

            tok = Tokenizer.from_path(ensure_demo_vocab())
        else:
            raise ValueError(f"preset {cfg.preset!r} needs a text encoder folder (--text-encoder, e.g. "
                             "Bio_ClinicalBERT with vocab.txt) or a vocabulary (--vocab)")
        if cfg.preset == "paper":
            mcfg = C.paper(bert=cfg.text_encoder)
        else:
            mcfg = C.PRESETS[cfg.preset](vocab_size=len(tok))
        if cfg.model:
            mcfg = C.ModelConfig.from_dict(deep_merge(mcfg.to_dict(), cfg.model))
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

        use_word = model.cfg.loss.use_word
        imgs, txts = [], []
        for b in batches:
            with autocast:
                imgs.append(model.encode_image(b["images"], shallow=use_word))
                txts.append(model.encode_text(b["input_ids"], b["attention_mask"], b["token_type_ids"]))

        def cat(xs):
            return torch.cat(xs, 0) if len(xs) > 1 else xs[0]

        img = ImageFeatures(deep=gather_cat(cat([i.deep for i in imgs]), dist_on),
                            shallow=gather_cat(cat([i.shallow for i in imgs]), dist_on) if use_word else None,
                            global_=gather_cat(cat([i.global_ for i in imgs]), dist_on))
        txt = TextLevels(words=gather_cat(cat([t.words for t in txts]), dist_on),
                         word_lens=gather_nograd(cat([t.word_lens for t in txts]), dist_on),
                         sentences=gather_cat(cat([t.sentences for t in txts]), dist_on),
                         sentence_lens=gather_nograd(cat([t.sentence_lens for t in txts]), dist_on),
                         report=gather_cat(cat([t.report for t in txts]), dist_on),
                         n_words=cat([t.n_words for t in txts]), n_sentences=cat([t.n_sentences for t in txts]))
        return model.loss_terms(img, txt)

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {c: pair_sum(terms, c) for c in self.metric_columns}

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:

        save_checkpoint(folder, model, extra=extra)
