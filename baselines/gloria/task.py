"""Training GLoRIA on the shared trainer: ``afloc-bench train gloria --dataset demo_mimic``.

Objective: ``baselines.common.losses.gloria_loss``, the official global + local losses in both
directions (temperatures 4 / 5 / 10, weights 1 / 1) with ``cap_lens`` = ``[CLS]`` + the caption's
words, ``[SEP]`` left out (``word_assignment``), as the official ``_calc_local_loss`` counts them.

Input and text are the adapter's (``baselines.gloria.adapter``), so a trained checkpoint is evaluated on
exactly what it was trained on: the official test transform (letterbox 256 with INTER_AREA,
centre crop 224, [-1, 1]; the official training takes a random 224 crop instead) and the official
text cleaning, WordPiece to 97 slots and word grouping. Captions are the trainer's sampled
sentence subsets (``benchmark.training.data``); the official GLoRIA caption is a single sentence.

Presets (``TrainConfig.preset``):
  * ``demo``: ResNet-18 trunk at width 16 (``benchmark.backbones``) whose in-model resize is 128 instead
    of 299 (8x8 local grid), and a 2-layer, 64-wide BERT over the demo WordPiece vocabulary
    (``benchmark.demo.vocab.ensure_demo_vocab``), both from scratch;
  * ``paper``: the official ResNet-50 + BERT structure; the BERT config, vocabulary and weights come
    from ``text_encoder`` (a local Bio_ClinicalBERT folder); ``pretrained_vision: imagenet`` loads
    torchvision's ImageNet ResNet-50 (from the local torch cache) or a local state-dict file.
``model:`` entries of the config override ``GloriaConfig`` fields (e.g. ``upsample``).

Checkpoint folder (``save``): ``model.safetensors``, ``config.json`` (format ``afloc-bench/gloria``,
the ``GloriaConfig`` with its BERT config) and the vocabulary (``vocab.txt``,
``tokenizer_config.json``): ``--ckpt gloria=FOLDER`` needs no other file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from baselines.common.losses import gloria_loss
from baselines.common.text_folder import folder_weights, read_json, text_folder, wordpiece_tokenizer
from baselines.gloria.adapter import FOLDER_FORMAT
from baselines.gloria.model import CaptionTokenizer, Gloria, GloriaConfig, image_input
from benchmark.backbones import ResNetBackbone, load_pretrained
from benchmark.io.checkpoints import load_checked, strip_prefix
from benchmark.io.images import read_image
from benchmark.training.task import TrainTask, deep_merge, pair_sum

# the small BERT of the demo (as AFLoc's demo preset): 2 layers, 64 wide, no dropout
DEMO_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, initializer_range=0.02)
# the demo trunk: ResNet-18 at width 16 on a 128 input (an 8x8 layer3 grid; a step costs about a third
# of one at the official 299, and the grid of 299 brought no better maps in the 3-minute budget)
DEMO_VISION = dict(vision_model="resnet18", vision_width=16, upsample=128)
VOCAB_FILES = ("vocab.txt", "tokenizer_config.json")


class GloriaTask(TrainTask):
    """GLoRIA's global + local contrastive objective on ``baselines.gloria.model.Gloria``."""

    name = "gloria"
    metric_columns = ("global_loss", "local_loss")

    def __init__(self) -> None:
        self._input_cfg = None  # the model config whose image transform ``image_fn`` applies

    # -- model -----------------------------------------------------------------------------
    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:


        bert_weights = None
        if cfg.preset == "paper":
            folder = text_folder(cfg.text_encoder, "Bio_ClinicalBERT (weights, config.json, vocab.txt)",
                                 "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT", option="text_encoder",
                                 files=("config.json", "vocab.txt"))
            mcfg = GloriaConfig(bert=read_json(folder / "config.json"))
            bert_weights = folder
        elif cfg.preset == "demo":
            if cfg.text_encoder or cfg.vocab:
                folder = Path(cfg.text_encoder or cfg.vocab)
                folder = folder.parent if folder.is_file() else folder
            else:
                from benchmark.demo.vocab import ensure_demo_vocab

                folder = ensure_demo_vocab()
            mcfg = GloriaConfig(bert=dict(DEMO_BERT), **DEMO_VISION)
        else:
            raise ValueError(f"unknown GLoRIA preset {cfg.preset!r}; expected demo or paper")
        if isinstance(tokenizer, CaptionTokenizer):
            tokenizer = tokenizer.tokenizer
        tok = tokenizer if tokenizer is not None else wordpiece_tokenizer(folder)
        if cfg.preset == "demo":
            mcfg.bert["vocab_size"] = len(tok.get_vocab())
        if cfg.model:
            mcfg = GloriaConfig.from_dict(deep_merge(mcfg.to_dict(), dict(cfg.model)))
        torch.manual_seed(cfg.seed)
        model = Gloria(mcfg)
        if bert_weights is not None:
            _load_bert(model, bert_weights)
        if cfg.pretrained_vision:
            _load_vision(model, cfg.pretrained_vision)
        model.vocab_folder = None if tokenizer is not None else folder  # copied into every checkpoint
        model.wordpiece = tok
        self._input_cfg = mcfg
        return model, CaptionTokenizer(tok, mcfg.word_num)

    def image_fn(self, path: str) -> Any:
        """The adapter's input for this model's config (``baselines.gloria.model.image_input``)."""

        return image_input(read_image(path, "cv2-gray"), self._input_cfg or GloriaConfig())

    # -- objective -------------------------------------------------------------------------
    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:

        c = model.cfg
        with autocast:
            img_g, img_l = model.img_encoder(batch["images"])
            words, sent = model.text_encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                             batch["word_index"])
        total, parts = gloria_loss(img_l.float(), img_g.float(), words.float(), sent.float(),
                                   batch["cap_len"].tolist(), temp1=c.temp1, temp2=c.temp2, temp3=c.temp3,
                                   local_weight=c.local_loss_weight, global_weight=c.global_loss_weight)
        return {"loss": total, **parts}

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {"global_loss": pair_sum(terms, "global_"), "local_loss": pair_sum(terms, "local_")}

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:


        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))
        doc = {"format": FOLDER_FORMAT, "format_version": 1, "model": model.cfg.to_dict(), **extra}
        (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        vocab = getattr(model, "vocab_folder", None)
        if vocab is not None:
            for name in VOCAB_FILES:
                if (Path(vocab) / name).is_file():
                    shutil.copy2(Path(vocab) / name, folder / name)
        elif getattr(model, "wordpiece", None) is not None:  # a tokenizer handed to the trainer
            from baselines.common.text_folder import save_wordpiece

            save_wordpiece(model.wordpiece, folder)


def _load_bert(model: Any, folder: Path) -> None:
    """Bio_ClinicalBERT's weights into the text encoder (``bert.`` prefix and MLM heads as published)."""

    sd = strip_prefix(folder_weights(folder, "BERT weights"), "bert.")
    load_checked(model.text_encoder.model, sd, source=folder, expected="BERT weights for GLoRIA's text encoder",
                 ignore=[r"cls\..*", r".*position_ids", r"pooler\..*"])


def _load_vision(model: Any, source: str) -> None:
    """ImageNet (``imagenet``, torchvision's file from the local cache) or a local state-dict file."""

    trunk = model.img_encoder.model
    if isinstance(trunk, ResNetBackbone):
        load_pretrained(trunk, source)
        return
    same = ResNetBackbone("resnet50", 64)  # torchvision's ResNet-50 names, without fc
    load_pretrained(same, source)
    trunk.load_state_dict(same.state_dict(), strict=True)
