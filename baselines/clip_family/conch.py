"""CONCH (Lu et al. 2024) image–text model rebuilt from open_clip and timm parts, for offline loading.

CONCH is a CoCa-style model whose official code is a modified open_clip copy (the ``conch``
package, not on PyPI). Its contrastive path is made of parts open_clip and timm provide:

- image: a timm ``VisionTransformer`` trunk (``forward_features``: all tokens after the final
  norm, dynamic image size), an ``AttentionalPooler`` with one query (``attn_pool_contrast``),
  ``ln_contrast`` and the matrix ``proj_contrast``;
- text: open_clip's ``TextTransformer`` with a learned CLS embedding appended last
  (``embed_cls``; CoCa's legacy CLS mask), context 128 of which the last slot holds the CLS.

Parameter names match the official state dict, so ``pytorch_model.bin`` loads directly; the
captioning parts (``visual.attn_pool_caption``, ``visual.ln_caption``, ``text_decoder``) are not
needed for retrieval, zero-shot classification or Grad-CAM and are reported as ignored.

Expected folder (a local copy of ``MahmoodLab/CONCH`` plus the tokenizer file of the ``conch``
repository)::

    <folder>/pytorch_model.bin                      (or *.safetensors)
    <folder>/conch_byte_level_bpe_uncased.json      (or tokenizer.json)
    <folder>/conch_config.json                      (optional; default conch_ViT-B-16)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import AttentionalPooler, TextTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import PreTrainedTokenizerFast

from baselines.clip_family.loader import ClipLoadReport, LoadedClip, find_weights
from benchmark.dataset import DataError
from benchmark.io.checkpoints import read_state_dict

# conch_ViT-B-16 (the released model)
DEFAULT_CONFIG: dict[str, Any] = {
    "embed_dim": 512, "embed_dim_caption": 768,
    "vision_cfg": {"image_size": 448, "patch_size": 16, "width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4,
                   "n_queries_contrast": 1},
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12},
}
TOKENIZER_FILES = ("conch_byte_level_bpe_uncased.json", "tokenizer.json")
POOLER_HEADS = 8
IGNORED_PREFIXES = ("visual.attn_pool_caption.", "visual.ln_caption.", "text_decoder.")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ConchVisual(nn.Module):
    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any]):
        super().__init__()

        v = {**DEFAULT_CONFIG["vision_cfg"], **vision_cfg}
        self.trunk = VisionTransformer(embed_dim=v["width"], depth=v["layers"], num_heads=v["heads"],
                                       mlp_ratio=v["mlp_ratio"], img_size=v["image_size"], patch_size=v["patch_size"],
                                       num_classes=0, dynamic_img_size=True)
        # The official tower builder never passes ``attn_pooler_heads`` on: the pooler always has 8 heads.
        self.attn_pool_contrast = AttentionalPooler(d_model=embed_dim, context_dim=v["width"],
                                                    n_head=POOLER_HEADS, n_queries=v["n_queries_contrast"])
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(torch.randn(embed_dim, embed_dim) * v["width"] ** -0.5)
        self.image_size = int(v["image_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast


class Conch(nn.Module):
    """The contrastive half of CONCH (official parameter names)."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()

        cfg = {**DEFAULT_CONFIG, **(config or {})}
        t = {**DEFAULT_CONFIG["text_cfg"], **cfg.get("text_cfg", {})}
        self.visual = ConchVisual(int(cfg["embed_dim"]), cfg.get("vision_cfg", {}))
        # The official text tower keeps context_length positions including the appended CLS.
        self.text = TextTransformer(context_length=int(t["context_length"]) - 1, vocab_size=int(t["vocab_size"]),
                                    width=int(t["width"]), heads=int(t["heads"]), layers=int(t["layers"]),
                                    output_dim=int(cfg["embed_dim"]), embed_cls=True, pad_id=0,
                                    act_layer=nn.GELU)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.659260036932778)
        self.context_length = int(t["context_length"])

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens[:, :-1])  # the last slot is the CLS placeholder


class ConchTokenizer:
    """CONCH's byte-level BPE: ``<start_of_text> … <end_of_text>``, padded to 127, plus a pad slot."""

    def __init__(self, tokenizer_file: Path, context_length: int = 128):

        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token="<start_of_text>",
                                           eos_token="<end_of_text>", pad_token="<pad>")
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(list(texts), max_length=self.context_length - 1, add_special_tokens=True, truncation=True,
                       padding="max_length", return_tensors="pt", return_token_type_ids=False)
        ids = enc["input_ids"]
        return nn.functional.pad(ids, (0, 1), value=self.tok.pad_token_id)


def load_conch(folder: Path) -> LoadedClip:

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "expected a CONCH folder (pytorch_model.bin + conch_byte_level_bpe_uncased.json)")
    weights = find_weights(folder)
    if weights is None:
        raise DataError(folder, "no CONCH weights (pytorch_model.bin or *.safetensors)")
    tok_file = next((folder / n for n in TOKENIZER_FILES if (folder / n).is_file()), None)
    if tok_file is None:
        raise DataError(folder, "no CONCH tokenizer: copy conch/open_clip_custom/tokenizers/"
                                "conch_byte_level_bpe_uncased.json from the CONCH repository into the folder")
    cfg_path = folder / "conch_config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    model = Conch(config)

    sd = read_state_dict(weights)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    ignored = sorted(k for k in sd if k.startswith(IGNORED_PREFIXES))
    sd = {k: v for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
    result = model.load_state_dict(sd, strict=False)
    report = ClipLoadReport(str(folder), "CONCH folder (contrastive towers rebuilt from open_clip/timm parts)",
                            weights=str(weights))
    report.missing = sorted(k for k in result.missing_keys if not k.endswith("attn_mask"))
    report.unexpected = sorted(result.unexpected_keys)
    if ignored:
        report.notes.append(f"{len(ignored)} captioning keys ignored (attn_pool_caption, ln_caption, text_decoder)")
    if report.missing:
        raise DataError(weights, "CONCH weights lack: " + ", ".join(report.missing[:10]))
    model.eval()
    pcfg = {"size": model.visual.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
            "resize_mode": "shortest"}
    preprocess = image_transform_v2(PreprocessCfg(**pcfg), is_train=False)
    return LoadedClip(model=model, preprocess=preprocess, tokenizer=ConchTokenizer(tok_file, model.context_length),
                      preprocess_cfg=pcfg, report=report, encode_image=model.encode_image,
                      encode_text=model.encode_text, logit_scale=float(model.logit_scale.detach().exp()))
