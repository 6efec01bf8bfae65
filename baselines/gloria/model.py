"""GLoRIA (Huang et al., ICCV 2021) rebuilt module for module, with its official key names.

Image side: torchvision ResNet-50 (``fc`` replaced by identity, so no ``fc.*`` keys); the
input is bilinearly upsampled to 299 (``align_corners=True``) inside the model; ``layer3``
(1024×19×19) goes through a 1×1 ``local_embedder``; the pooled ``layer4`` through the
``global_embedder`` Linear. Neither embedding is normalised.

Text side: BERT without a projection head; the last four hidden layers are summed; word
pieces are summed into words (``[CLS]`` and ``[SEP]`` are words of their own, the rest of the
97 slots are zero vectors); the sentence embedding is the mean over all 97 slots (zeros
included), summed over the four layers.

Word–region attention (``attention_fn``) is the double softmax of the official code: a softmax
over the caption's words for each region, ×``temp1`` (4), then a softmax over the 361 regions.

Small variants (the demo model trained by ``baselines.gloria.task``): ``vision_model`` names an
``benchmark.backbones.ResNetBackbone`` architecture (``resnet18`` ...) at ``vision_width`` channels,
``upsample`` sets the in-model input size (299 official), and ``bert`` a small BERT. The default
configuration is the official structure, key for key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BertModel

from baselines.common.image_prep import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    gloria_letterbox,
    to_gray,
    to_tensor,
)
from baselines.common.text_folder import bert_config, call_quietly
from benchmark.backbones import ARCHS

WORD_NUM = 97
OFFICIAL_VISION = "resnet_50"  # the official name: torchvision's ResNet-50


@dataclass
class GloriaConfig:
    """The parts of the official training config that shape inference (read from the checkpoint)."""

    bert: dict[str, Any] = field(default_factory=dict)  # BERT config.json content
    word_num: int = WORD_NUM
    last_n_layers: int = 4
    aggregate_method: str = "sum"
    agg_tokens: bool = True
    text_norm: bool = False
    imsize: int = 256
    crop_size: int = 224
    img_norm: str = "half"
    temp1: float = 4.0
    temp2: float = 5.0
    temp3: float = 10.0
    vision_model: str = OFFICIAL_VISION  # or an benchmark.backbones architecture (resnet18, ...) for small variants
    vision_width: int = 64  # stem width of an benchmark.backbones trunk (the official ResNet-50 is 64)
    upsample: int = 299  # in-model bilinear resize of the input (official 299: a 19x19 layer3 grid)
    local_loss_weight: float = 1.0  # training only
    global_loss_weight: float = 1.0

    @property
    def embedding_dim(self) -> int:
        return int(self.bert.get("hidden_size", 768))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GloriaConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GLoRIA config entries {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_hparams(cls, hp: dict[str, Any], bert: dict[str, Any]) -> GloriaConfig:
        """Values from a checkpoint's ``hyper_parameters`` (missing entries keep the repo defaults)."""

        def get(path: str, default: Any) -> Any:
            cur: Any = hp
            for part in path.split("."):
                if not isinstance(cur, dict) or part not in cur or cur[part] is None:
                    return default
                cur = cur[part]
            return cur

        d = cls()
        transforms = hp.get("transforms") if isinstance(hp.get("transforms"), dict) else None
        if transforms is None or "random_crop" not in transforms:
            crop: Any = d.crop_size  # no transforms recorded: the repository config (crop 224)
        else:  # the test split centre-crops only when the config has a random_crop entry
            crop = (transforms.get("random_crop") or {}).get("crop_size") or 0
        return cls(
            bert=bert,
            word_num=int(get("data.text.word_num", d.word_num)),
            last_n_layers=int(get("model.text.last_n_layers", d.last_n_layers)),
            aggregate_method=str(get("model.text.aggregate_method", d.aggregate_method)),
            agg_tokens=bool(get("model.text.agg_tokens", d.agg_tokens)),
            text_norm=bool(get("model.text.norm", d.text_norm)),
            imsize=int(get("data.image.imsize", d.imsize)),
            crop_size=int(crop) if crop else 0,
            img_norm=str(get("transforms.norm", d.img_norm)),
            temp1=float(get("model.gloria.temp1", d.temp1)),
            temp2=float(get("model.gloria.temp2", d.temp2)),
            temp3=float(get("model.gloria.temp3", d.temp3)),
            vision_model=str(get("model.vision.model_name", d.vision_model)),
            local_loss_weight=float(get("model.gloria.local_loss_weight", d.local_loss_weight)),
            global_loss_weight=float(get("model.gloria.global_loss_weight", d.global_loss_weight)),
        )


# -- modules ----------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """Keys ``model.*`` (ResNet minus fc), ``global_embedder.*``, ``local_embedder.weight``.

    ``vision_model`` ``resnet_50``: torchvision's ResNet-50 (the official structure); an
    ``benchmark.backbones`` name (``resnet18`` ...) builds that trunk at ``width`` channels, with the
    same module names, for small variants.
    """

    def __init__(self, embedding_dim: int, vision_model: str = OFFICIAL_VISION, width: int = 64,
                 upsample: int = 299):
        super().__init__()
        if vision_model == OFFICIAL_VISION:
            from torchvision.models import resnet50

            self.model = resnet50(weights=None)
            self.model.fc = nn.Identity()
            local_dim, global_dim = 1024, 2048
        else:
            from benchmark.backbones import ResNetBackbone

            self.model = ResNetBackbone(vision_model, width)
            _, local_dim, global_dim = self.model.channels
        self.upsample = int(upsample)
        self.global_embedder = nn.Linear(global_dim, embedding_dim)
        self.local_embedder = nn.Conv2d(local_dim, embedding_dim, kernel_size=1, stride=1, padding=0, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled layer4 [B,C4], layer3 [B,C3,h,w]) after the in-model upsample (299: 19×19)."""
        x = F.interpolate(x, size=(self.upsample, self.upsample), mode="bilinear", align_corners=True)
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer3(m.layer2(m.layer1(x)))
        local = x
        x = self.pool(m.layer4(x)).flatten(1)
        return x, local

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global embedding [B,D], local embeddings [B,D,h,w])."""
        g, loc = self.features(x)
        return self.global_embedder(g), self.local_embedder(loc)


class TextEncoder(nn.Module):
    """Keys ``model.*``: a BERT with its pooler (present in the checkpoint, unused)."""

    def __init__(self, cfg: GloriaConfig):
        super().__init__()


        self.cfg = cfg
        self.model = call_quietly(lambda: BertModel(bert_config(cfg.bert)))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                word_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(word embeddings [B,D,W], sentence embedding [B,D]); ``word_index`` from ``word_assignment``."""
        out = self.model(ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_hidden_states=True)
        n = self.cfg.last_n_layers
        if n <= 1:  # the official "last layer" branch: token states and the pooler output
            return out.last_hidden_state.permute(0, 2, 1), out.pooler_output
        emb = torch.stack(out.hidden_states[-n:], dim=1)  # [B, L, T, D]
        if self.cfg.agg_tokens:
            emb = aggregate_words(emb, word_index)  # [B, L, W, D], zeros after [SEP]
        sent = emb.mean(dim=2)
        if self.cfg.aggregate_method == "sum":
            words, sent = emb.sum(dim=1), sent.sum(dim=1)
        elif self.cfg.aggregate_method == "mean":
            words, sent = emb.mean(dim=1), sent.mean(dim=1)
        else:
            raise ValueError(f"unknown GLoRIA aggregate_method {self.cfg.aggregate_method!r}")
        words = words.permute(0, 2, 1)
        if self.cfg.text_norm:  # the official ``norm`` option; zero word slots stay zero (not 0/0, no NaN gradient)
            words, sent = unit_rows(words), unit_rows(sent)
        return words, sent


def unit_rows(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise along dim 1 in float32; vectors of norm below ``eps`` (zero word slots) stay ~0."""
    x32 = x.float()
    return (x32 / x32.norm(dim=1, keepdim=True).clamp(min=eps)).to(x.dtype)


class Gloria(nn.Module):
    """Keys ``text_encoder.*`` and ``img_encoder.*``, as in the official ``GLoRIA`` module."""

    def __init__(self, cfg: GloriaConfig):
        super().__init__()

        if cfg.vision_model != OFFICIAL_VISION and cfg.vision_model not in ARCHS:
            raise ValueError(f"GLoRIA vision model {cfg.vision_model!r} is not supported (official: resnet_50; the "
                             "released resnet18 file cannot run in the official code either; small variants: "
                             f"{', '.join(sorted(ARCHS))})")
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg)
        self.img_encoder = ImageEncoder(cfg.embedding_dim, cfg.vision_model, cfg.vision_width, cfg.upsample)


# -- text processing -----------------------------------------------------------------------
_NUMBERED = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def clean_text(text: str, keep_short_sentences: bool = False) -> str:
    """The official ``process_text`` cleaning: sentences split on ``N.`` and ``.``, lower-cased
    ``\\w+`` tokens, ASCII only. Sentences of one token or fewer are dropped (official), so a
    one-word prompt becomes empty; ``keep_short_sentences`` keeps them."""
    text = text.replace("\n", " ")
    pieces = [s for part in _NUMBERED.split(text) for s in part.split(".")]
    sents = []
    for s in pieces:
        s = s.replace("\ufffd\ufffd", " ")
        tokens = _WORD.findall(s.lower())
        if len(tokens) <= 1 and not (keep_short_sentences and tokens):
            continue
        kept = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
        sents.append(" ".join(t for t in kept if t))
    return " ".join(sents)


def char_cap_len(text: str) -> int:
    """The official zero-shot ``cap_lens``: characters of the raw prompt other than ``[``."""
    return len([c for c in text if not c.startswith("[")])


@dataclass
class TokenTables:
    """Per-vocabulary-id facts used to group word pieces without a Python loop over tokens."""

    is_subword: torch.Tensor  # starts with "##"
    is_bracket: torch.Tensor  # starts with "[" (such a word is not counted as a caption word)
    is_sep: torch.Tensor

    @classmethod
    def from_tokenizer(cls, tok: Any) -> TokenTables:
        vocab = tok.get_vocab()
        n = max(vocab.values()) + 1
        sub, br, sep = (torch.zeros(n, dtype=torch.bool) for _ in range(3))
        for t, i in vocab.items():
            sub[i], br[i], sep[i] = t.startswith("##"), t.startswith("["), t == "[SEP]"
        return cls(sub, br, sep)


def word_assignment(ids: torch.Tensor, tables: TokenTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Token → word slot (−1 after the first ``[SEP]``) and the official caption length per row.

    A token that does not start with ``##`` opens a new word; ``[SEP]`` is a word and ends the
    walk. The caption length is ``1 + #words not starting with '['`` (``[CLS]`` plus the caption
    words, as the official ``_calc_local_loss`` counts them).
    """
    ids_cpu = ids.cpu()
    sub = tables.is_subword[ids_cpu]
    sep = tables.is_sep[ids_cpu]
    after = (sep.long().cumsum(1) - sep.long()) > 0  # strictly after the first [SEP]
    starts = (~sub) & (~after)
    index = starts.long().cumsum(1) - 1
    index = torch.where(after, torch.full_like(index, -1), index)
    word_bracket = starts & tables.is_bracket[ids_cpu]
    cap_len = 1 + (starts & ~word_bracket).sum(1)
    return index.to(ids.device), cap_len


def encode_captions(tokenizer: Any, tables: TokenTables, texts: list[str], word_num: int = WORD_NUM,
                    keep_short_sentences: bool = False) -> dict[str, torch.Tensor]:
    """Raw captions → model inputs, as the official ``process_text``: cleaned, WordPiece-tokenised to
    ``word_num`` slots (padded and truncated), plus the word slots and caption lengths of
    ``word_assignment``. Training and inference both call this, so they tokenise alike."""
    cleaned = [clean_text(t, keep_short_sentences) for t in texts]
    enc = tokenizer(cleaned, padding="max_length", truncation=True, max_length=word_num, return_tensors="pt")
    word_index, cap_len = word_assignment(enc["input_ids"], tables)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])),
            "word_index": word_index, "cap_len": cap_len}


class CaptionTokenizer:
    """The trainer's tokenizer callable: captions → ``encode_captions`` tensors (``attention_mask`` included)."""

    def __init__(self, tokenizer: Any, word_num: int = WORD_NUM, keep_short_sentences: bool = False):
        self.tokenizer, self.word_num, self.keep_short = tokenizer, int(word_num), keep_short_sentences
        self.tables = TokenTables.from_tokenizer(tokenizer)

    def __len__(self) -> int:
        return len(self.tokenizer.get_vocab())

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return encode_captions(self.tokenizer, self.tables, list(captions), self.word_num, self.keep_short)


def image_input(image: np.ndarray, cfg: GloriaConfig) -> torch.Tensor:
    """The official test transform: gray → letterbox to ``imsize`` (INTER_AREA) → centre crop
    ``crop_size`` → [-1, 1] ('half') or ImageNet normalisation; 3 equal channels."""

    x = gloria_letterbox(to_gray(image), cfg.imsize)
    if cfg.crop_size:
        x = center_crop(x, cfg.crop_size)
    mean, std = {"half": (HALF, HALF), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}.get(cfg.img_norm, (None, None))
    return to_tensor(x, mean, std)


def aggregate_words(emb: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """Sum token states into word slots: [B, L, T, D] → [B, L, T, D] (slot w = sum of its pieces)."""
    B, L, T, D = emb.shape
    onehot = F.one_hot(word_index.clamp(min=0), T).to(emb.dtype) * (word_index >= 0).unsqueeze(-1).to(emb.dtype)
    return torch.einsum("btw,bltd->blwd", onehot, emb)


# -- similarities and maps -------------------------------------------------------------------
def cosine(x1: torch.Tensor, x2: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Official ``cosine_similarity``: the product of norms clamped at ``eps``."""
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(2, dim) * x2.norm(2, dim)).clamp(min=eps)


def attention_fn(query: torch.Tensor, context: torch.Tensor, temp1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B,D,W], context [B,D,h,w] → (attended context [B,D,W], attention [B,W,h,w])."""
    B, D, W = query.shape
    h, w = context.shape[2], context.shape[3]
    ctx = context.reshape(B, D, h * w)
    attn = torch.bmm(ctx.transpose(1, 2), query)  # [B, hw, W]
    attn = torch.softmax(attn, dim=-1)  # over words
    attn = torch.softmax(attn.transpose(1, 2) * temp1, dim=-1)  # over regions: [B, W, hw]
    weighted = torch.bmm(ctx, attn.transpose(1, 2))  # [B, D, W]
    return weighted, attn.reshape(B, W, h, w)


def word_attention_map(local: torch.Tensor, words: torch.Tensor, cap_len: torch.Tensor, temp1: float) -> torch.Tensor:
    """Paired rows → mean attention map over the caption's words: [B, h, w].

    The attention is computed over ``[CLS]`` + caption words exactly as the official
    ``get_attn_maps`` does (the first softmax normalises over that set); the ``[CLS]`` map is then
    left out of the mean. A caption with no words (a one-word prompt after the official cleaning)
    gives the ``[CLS]`` map, which is uniform.
    """
    B, h, w = local.shape[0], local.shape[2], local.shape[3]
    out = torch.empty((B, h, w), dtype=local.dtype, device=local.device)
    for n, rows in _rows_by_length([int(c) for c in cap_len]):  # one batched call per caption length
        _, attn = attention_fn(words[rows, :, :n], local[rows], temp1)
        out[rows] = attn[:, 1:n].mean(1) if n > 1 else attn[:, 0]
    return out


def _rows_by_length(lengths: list[int]) -> list[tuple[int, torch.Tensor]]:
    """``(length, row indices)`` for each distinct length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [(n, torch.tensor(rows, dtype=torch.long)) for n, rows in groups.items()]


def local_feature_map(local: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """Raw dot product of each region embedding with the sentence embedding: [B, h, w]."""
    return torch.einsum("bdhw,bd->bhw", local, sent)


def local_similarity(local: torch.Tensor, words: torch.Tensor, char_len: torch.Tensor) -> torch.Tensor:
    """Official zero-shot local score for paired rows: [B].

    Word slots ``1 .. char_len`` (the character count of the prompt, a bug kept for fidelity:
    it drops ``[CLS]`` but keeps ``[SEP]`` and zero pads); ``5·cos(word, attended context)``,
    max over the slots. The slice is capped at the last slot (the official code crashes on a
    prompt longer than 96 characters).
    """
    W = words.shape[2]
    out = torch.empty(local.shape[0], dtype=local.dtype, device=local.device)
    for n, rows in _rows_by_length([max(1, min(int(c), W - 1)) for c in char_len]):
        word = words[rows, :, 1:n + 1]  # [b, D, n]
        ctx, _ = attention_fn(word, local[rows], 4.0)
        sim = cosine(word.transpose(1, 2), ctx.transpose(1, 2), dim=2)  # [b, n]
        out[rows] = (sim * 5.0).exp().max(dim=1).values.log()
    return out


def global_similarity(img_g: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """Cosine as sklearn's ``cosine_similarity`` computes it (rows L2-normalised, zero rows stay zero)."""
    a = img_g / img_g.norm(dim=1, keepdim=True).clamp(min=torch.finfo(img_g.dtype).tiny)
    b = sent / sent.norm(dim=1, keepdim=True).clamp(min=torch.finfo(sent.dtype).tiny)
    return (a * b).sum(1)

