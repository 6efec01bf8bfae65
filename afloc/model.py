"""The AFLoc network: image encoder, text encoder, multi-level losses, inference outputs.

Module and parameter names follow the official code, so that the official state dict loads
after stripping its ``afloc.`` prefix (see ``afloc.checkpoint``):

    img_encoder.model.{conv1,bn1,layer1..layer4}   ResNet trunk (torchvision names)
    img_encoder.global_embedder                    Linear(C4, D) on pooled layer4   -> global
    img_encoder.local_embedder                     1x1 conv (C3 -> D), no bias, layer3 -> deep local
    img_encoder.local2_embedder                    1x1 conv (C2 -> D), no bias, layer2 -> shallow local
    text_encoder.model                             transformers BertModel (pooler kept, unused)

D is the BERT hidden size: the official model has no text projection and no normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from afloc.aggregate import TextLevels, aggregate, reduce_layers
from afloc.config import ModelConfig, TextConfig, VisionConfig
from afloc.losses import global_loss, local_loss
from afloc.text import clean_prompt
from afloc.tokenizer import Tokenizer, TokenTables
from benchmark.backbones import ResNetBackbone, load_pretrained


@dataclass
class ImageFeatures:
    deep: torch.Tensor  # [B, D, h3, w3] layer3 projection (19x19 at 299): sentences, heatmaps
    shallow: torch.Tensor | None  # [B, D, h2, w2] layer2 projection (38x38): words
    global_: torch.Tensor  # [B, D] pooled layer4 projection: report


class ImageEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.model = ResNetBackbone(cfg.arch, cfg.width)
        c2, c3, c4 = self.model.channels
        self.global_embedder = nn.Linear(c4, out_dim)
        self.local_embedder = nn.Conv2d(c3, out_dim, kernel_size=1, stride=1, padding=0, bias=False)
        self.local2_embedder = nn.Conv2d(c2, out_dim, kernel_size=1, stride=1, padding=0, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        if cfg.pretrained:
            load_pretrained(self.model, cfg.pretrained)

    def forward(self, x: torch.Tensor, shallow: bool = True) -> ImageFeatures:
        if self.cfg.upsample:
            s = int(self.cfg.upsample)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=True)
        l2, l3, l4 = self.model(x)
        g = self.pool(l4).flatten(1)
        return ImageFeatures(deep=self.local_embedder(l3),
                             shallow=self.local2_embedder(l2) if shallow else None,
                             global_=self.global_embedder(g))


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()

        self.cfg = cfg
        if cfg.bert:  # pretrained weights from a local folder (e.g. Bio_ClinicalBERT)
            self.model = BertModel.from_pretrained(cfg.bert, add_pooling_layer=True, local_files_only=True)
        else:
            if not cfg.bert_config:
                raise ValueError("text config needs either `bert` (a local folder) or `bert_config`")
            self.model = BertModel(BertConfig(**cfg.bert_config), add_pooling_layer=True)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, input_ids, attention_mask, token_type_ids, tables: TokenTables) -> TextLevels:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         output_hidden_states=True)
        states = reduce_layers(out.hidden_states, self.cfg.last_n_layers, self.cfg.aggregate_method)
        return aggregate(input_ids, states, tables, self.cfg.aggregate_method)


class AFLoc(nn.Module):
    """The full model. Attach a tokenizer (``attach_tokenizer``) before encoding text."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg.text)
        self.img_encoder = ImageEncoder(cfg.vision, self.text_encoder.hidden_size)
        self.tokenizer: Tokenizer | None = None
        self._tables: TokenTables | None = None

    # -- text --------------------------------------------------------------
    def attach_tokenizer(self, tokenizer: Tokenizer) -> None:
        n_emb = self.text_encoder.model.config.vocab_size
        if max(tokenizer.vocab.values()) >= n_emb:
            raise ValueError(f"tokenizer has ids up to {max(tokenizer.vocab.values())} but the text encoder "
                             f"has {n_emb} token embeddings")
        self.tokenizer = tokenizer
        self._tables = None

    def tables(self, device) -> TokenTables:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached to the model")
        if self._tables is None or self._tables.is_sep.device != torch.device(device):
            self._tables = self.tokenizer.tables.to(device)
        return self._tables

    def encode_text(self, input_ids, attention_mask, token_type_ids) -> TextLevels:
        return self.text_encoder(input_ids, attention_mask, token_type_ids, self.tables(input_ids.device))

    def tokenize_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Official inference tokenisation: ``clean_prompt`` then pad/truncate to ``max_length``."""
        assert self.tokenizer is not None, "no tokenizer attached"
        return self.tokenizer([clean_prompt(p) for p in prompts])

    def report_embeddings(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[N, D] report-level embeddings of prompts (used for heatmaps and zero-shot scores)."""
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            tok = {k: v.to(dev) for k, v in self.tokenize_prompts(prompts[i:i + batch_size]).items()}
            out.append(self.encode_text(**tok).report)
        return torch.cat(out) if out else torch.zeros(0, self.text_encoder.hidden_size, device=dev)

    # -- images --------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, shallow: bool = True) -> ImageFeatures:
        return self.img_encoder(images, shallow=shallow)

    # -- losses ---------------------------------------------------------------
    def loss_terms(self, img: ImageFeatures, txt: TextLevels) -> dict[str, torch.Tensor]:
        """The six cross-entropies and their weighted total (computed in float32)."""
        c = self.cfg.loss
        agg = "sum"
        with torch.autocast(device_type=img.deep.device.type, enabled=False):
            out: dict[str, torch.Tensor] = {}
            zero = img.deep.new_zeros((), dtype=torch.float32)
            total = zero
            if c.use_global:
                g0, g1 = global_loss(img.global_.float(), txt.report.float(), c.temp3)
                out.update(global_loss0=g0, global_loss1=g1)
                total = total + (g0 + g1) * c.global_weight
            if c.use_sentence:
                s0, s1 = local_loss(img.deep.float(), txt.sentences.float(), txt.sentence_lens,
                                    c.temp1, c.temp2, c.temp3, agg)
                out.update(sentence_loss0=s0, sentence_loss1=s1)
                total = total + (s0 + s1) * c.sentence_weight
            if c.use_word:
                if img.shallow is None:
                    raise ValueError("word loss needs the shallow image features")
                w0, w1 = local_loss(img.shallow.float(), txt.words.float(), txt.word_lens,
                                    c.temp1, c.temp2, c.temp3, agg)
                out.update(word_loss0=w0, word_loss1=w1)
                total = total + (w0 + w1) * c.word_weight
            out["loss"] = total
        return out

    def forward(self, images, input_ids, attention_mask, token_type_ids) -> dict[str, torch.Tensor]:
        """Training step body: encode both modalities and return the loss terms."""
        img = self.encode_image(images, shallow=self.cfg.loss.use_word)
        txt = self.encode_text(input_ids, attention_mask, token_type_ids)
        return self.loss_terms(img, txt)


def similarity_grid(deep: torch.Tensor, report: torch.Tensor) -> torch.Tensor:
    """Raw dot product of every deep local vector with the report embedding, [B, h, w]."""
    return torch.einsum("bdhw,bd->bhw", deep, report)


def zero_shot_probability(global_: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Softmax over the (positive, negative) pair of raw dot products; P(positive), [B]."""
    logits = torch.stack([(global_ * positive).sum(-1), (global_ * negative).sum(-1)], dim=-1)
    return torch.softmax(logits, dim=-1)[:, 0]
