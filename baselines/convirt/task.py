"""Training ConVIRT on the shared trainer: ``afloc-bench train convirt --dataset demo_mimic``.

Objective: ``baselines.common.losses.convirt_loss``, the bidirectional InfoNCE on cosine similarities
with temperature τ and the image→text term weighted λ (τ 0.1, λ 0.75: the ConVIRT paper and
ViLMedic's ``ConVIRTLoss``), on the projected pooled image vector and the projected text vector.

Input and text are the adapter's (``baselines.convirt.adapter``), so a trained checkpoint is evaluated on
exactly what it was trained on: ViLMedic's evaluation transform (gray, PIL bilinear resize to
224x224, ImageNet normalisation; ViLMedic trains on random 224 crops of a 256 resize instead)
and ``baselines.convirt.model.CaptionTokenizer`` (WordPiece, ``[CLS]``/``[SEP]``, padded to
``max_length``). Captions are the trainer's sampled sentence subsets (``benchmark.training.data``); the paper
samples one sentence per report.

Presets (``TrainConfig.preset``):
  * ``demo``: ResNet-18 trunk at width 16 (``benchmark.backbones``; its 7x7 ``layer4`` is the heatmap
    grid) and a 2-layer, 64-wide BERT over the demo WordPiece vocabulary
    (``benchmark.demo.vocab.ensure_demo_vocab``), both from scratch;
  * ``paper``: ViLMedic's ResNet-50 layout with a BERT text side from ``text_encoder`` (a local
    Bio_ClinicalBERT folder: config, vocabulary and weights), max pooling over the last layer,
    512-d projections, embeddings and the first 6 BERT layers frozen (the ConVIRT paper);
    ``pretrained_vision: imagenet`` loads torchvision's ImageNet ResNet-50 (from the local torch
    cache; offline machines get an error naming the file) or a local state-dict file.
``model:`` entries of the config override ``ConvirtConfig`` fields (e.g. ``pooling``, ``proj_dim``).

Checkpoint folder (``save``): ``model.safetensors``, ``config.json`` (format
``afloc-bench/convirt``, the ``ConvirtConfig`` with its BERT config, plus the training record) and
the vocabulary (``vocab.txt``, ``tokenizer_config.json``): ``--ckpt convirt=FOLDER`` needs no
other file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from baselines.common.losses import convirt_loss
from baselines.common.text_folder import folder_weights, read_json, text_folder, wordpiece_tokenizer
from baselines.convirt.model import (
    CaptionTokenizer,
    ConVIRT,
    ConvirtConfig,
    _BackboneVisual,
    image_input,
    save_checkpoint,
)
from benchmark.backbones import ARCHS, ResNetBackbone, load_pretrained
from benchmark.io.checkpoints import load_checked, strip_prefix
from benchmark.io.images import read_image
from benchmark.training.task import TrainTask, deep_merge

# the small BERT of the demo (as AFLoc's demo preset): 2 layers, 64 wide, no dropout
DEMO_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, initializer_range=0.02)
# ResNet-18 at width 16: 128 channels at layer4, a 7x7 grid for the 224 input
DEMO_MODEL = dict(vision_arch="resnet18", vision_width=16, proj_dim=64, pooling="mean", max_length=128,
                  add_special_tokens=True)
# the ConVIRT paper's text side: max pooling, 512-d projections, embeddings + 6 layers frozen
PAPER_MODEL = dict(proj_dim=512, pooling="max", max_length=128, add_special_tokens=True, text_frozen_layers=6)
BIO_CLINICAL_BERT = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT"


def trunk_channels(arch: str | None, width: int) -> int:
    """Channels of the pooled ``layer4`` output (ViLMedic's ResNet-50 when ``arch`` is None)."""
    if arch is None:
        return 2048

    if arch not in ARCHS:
        raise ValueError(f"unknown vision_arch {arch!r}; expected one of {sorted(ARCHS)}")
    return width * 8 * ARCHS[arch][0].expansion


class ConvirtTask(TrainTask):
    """ConVIRT's asymmetric image–text InfoNCE on ``baselines.convirt.model.ConVIRT``."""

    name = "convirt"
    metric_columns = ("image_text_loss", "text_image_loss")

    # -- model -----------------------------------------------------------------------------
    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:


        bert_weights = None
        if cfg.preset == "paper":
            folder = text_folder(cfg.text_encoder, "Bio_ClinicalBERT (weights, config.json, vocab.txt)",
                                 BIO_CLINICAL_BERT, option="text_encoder", files=("config.json", "vocab.txt"))
            fields = dict(text_kind="bert", text_config=read_json(folder / "config.json"), **PAPER_MODEL)
            bert_weights = folder
        elif cfg.preset == "demo":
            if cfg.text_encoder or cfg.vocab:
                folder = Path(cfg.text_encoder or cfg.vocab)
                folder = folder.parent if folder.is_file() else folder
            else:
                from benchmark.demo.vocab import ensure_demo_vocab

                folder = Path(ensure_demo_vocab())
            fields = dict(text_kind="bert", text_config=dict(DEMO_BERT), **DEMO_MODEL)
        else:
            raise ValueError(f"unknown ConVIRT preset {cfg.preset!r}; expected demo or paper")
        if isinstance(tokenizer, CaptionTokenizer):
            tokenizer = tokenizer.tokenizer
        tok = tokenizer if tokenizer is not None else wordpiece_tokenizer(folder)
        if cfg.preset == "demo":
            fields["text_config"]["vocab_size"] = len(tok.get_vocab())
        fields = deep_merge(fields, dict(cfg.model or {}))
        if "visual_dim" not in (cfg.model or {}):
            fields["visual_dim"] = trunk_channels(fields.get("vision_arch"), int(fields.get("vision_width", 64)))
        unknown = sorted(set(fields) - set(ConvirtConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown ConVIRT model options {unknown}; expected fields of ConvirtConfig")
        mcfg = ConvirtConfig(**fields)
        torch.manual_seed(cfg.seed)
        model = ConVIRT(mcfg)
        if bert_weights is not None:
            _load_bert(model, bert_weights)
        if cfg.pretrained_vision:
            _load_vision(model, cfg.pretrained_vision)
        model.tokenizer_folder = None if tokenizer is not None else folder  # copied into every checkpoint
        model.wordpiece = tok
        return model, CaptionTokenizer(tok, mcfg)

    def image_fn(self, path: str) -> Any:
        """The adapter's input (``baselines.convirt.model.image_input``) of the image file."""

        return image_input(read_image(path, "pil-rgb"))

    # -- objective -------------------------------------------------------------------------
    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:

        c = model.cfg
        with autocast:
            v = model.image_embedding(batch["images"])
            u = model.encode_text(batch["input_ids"], batch["attention_mask"])
        loss, loss_text, loss_image = convirt_loss(u.float(), v.float(), tau=c.tau, lambda_=c.lambda_, reduce=False)
        return {"loss": loss, "image_text_loss": loss_image.mean(), "text_image_loss": loss_text.mean()}

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {c: terms.get(c) for c in self.metric_columns}

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:

        folder = Path(folder)
        vocab = getattr(model, "tokenizer_folder", None)
        save_checkpoint(model, folder, tokenizer_folder=vocab, extra=extra)
        if vocab is None and getattr(model, "wordpiece", None) is not None:  # a tokenizer handed to the trainer
            from baselines.common.text_folder import save_wordpiece

            save_wordpiece(model.wordpiece, folder)


def _load_bert(model: Any, folder: Path) -> None:
    """Bio_ClinicalBERT's weights into the text encoder (``bert.`` prefix and MLM heads as published)."""

    sd = strip_prefix(folder_weights(folder, "BERT weights"), "bert.")
    load_checked(model.linguistic.encoder, sd, source=folder, expected="BERT weights for ConVIRT's text encoder",
                 ignore=[r"cls\..*", r".*position_ids", r"pooler\..*"])


# torchvision ResNet names → ViLMedic's Sequential indices (conv1, bn1, relu, maxpool, layer1..4, avgpool)
_SEQUENTIAL_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _load_vision(model: Any, source: str) -> None:
    """ImageNet (``imagenet``: torchvision's file from the local cache) or a local state-dict file."""

    visual = model.visual
    if isinstance(visual, _BackboneVisual):
        load_pretrained(visual.model, source)
        return
    same = ResNetBackbone("resnet50", 64)  # torchvision's ResNet-50 names, without fc
    load_pretrained(same, source)
    sd = {}
    for k, v in same.state_dict().items():
        head, rest = k.split(".", 1)
        sd[f"{_SEQUENTIAL_INDEX[head]}.{rest}"] = v
    visual.model.load_state_dict(sd, strict=True)

