"""Model configuration: what shapes the network and its losses, nothing about training.

Why dataclasses and not the official omegaconf tree: a checkpoint of this project stores its
configuration as plain JSON next to the weights, so loading one never needs to unpickle
anything, and every field has a default that reproduces the published model.

Presets:
  ``paper``: ResNet-50 (ImageNet-initialised when trained) + a BERT the size of Bio_ClinicalBERT,
    exactly the official ``afloc/config.yaml``.
  ``demo``: a narrow ResNet-18 that resizes its 224 input to 128 (8x8 deep grid) + a 2-layer,
    64-wide BERT without dropout over the demo WordPiece vocabulary; trains on two CPU cores in
    minutes. (The demo AFLoc recipe, ``configs/demo.yaml``, deepens the text encoder to 4 layers
    and resizes to 192, a 12x12 deep grid, and trains without the word-level loss; the demo
    baselines use the preset as is.)
  ``tiny``: the smallest network the tests build (seconds on CPU).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1


@dataclass
class VisionConfig:
    """ResNet image encoder.

    ``width`` is the channel count of the stem and of ``layer1`` (64 in torchvision); the demo
    uses a narrow network. ``upsample`` is the side the 224 input is bilinearly resized to
    (align_corners=True) before the backbone, 299 in the official code; ``None`` skips it.
    ``pretrained``: ``None``, ``"imagenet"`` (torchvision weights, width 64 only) or the path of
    a state-dict file.
    """

    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152
    width: int = 64
    upsample: int | None = 299
    pretrained: str | None = None


@dataclass
class TextConfig:
    """BERT text encoder.

    ``bert`` is either a local folder (``config.json`` + weights + tokenizer files, e.g.
    Bio_ClinicalBERT) or ``None``, in which case ``bert_config`` (a ``transformers.BertConfig``
    dict) builds a randomly initialised model and ``vocab`` names the WordPiece vocabulary.
    """

    bert: str | None = None
    bert_config: dict[str, Any] = field(default_factory=dict)
    vocab: str | None = None
    last_n_layers: int = 4
    aggregate_method: str = "sum"  # sum | mean (official default: sum)
    max_length: int = 97  # tokens, [CLS] and [SEP] included (official data.text.word_num)
    lowercase: bool = True


@dataclass
class LossConfig:
    """Temperatures and weights of the three alignment losses (official model.afloc)."""

    temp1: float = 4.0  # attention sharpening inside the localized matching function
    temp2: float = 5.0  # scale of the per-unit cosine before log-sum-exp
    temp3: float = 10.0  # contrastive temperature (inverse)
    global_weight: float = 1.0
    sentence_weight: float = 1.0
    word_weight: float = 1.0
    use_global: bool = True
    use_sentence: bool = True
    use_word: bool = True


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    version: int = CONFIG_VERSION

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(
            vision=_build(VisionConfig, d.get("vision", {})),
            text=_build(TextConfig, d.get("text", {})),
            loss=_build(LossConfig, d.get("loss", {})),
            version=int(d.get("version", CONFIG_VERSION)),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(klass, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {klass.__name__} keys {sorted(unknown)}")
    return klass(**d)


# BERT sizes --------------------------------------------------------------
BIO_CLINICAL_BERT = dict(  # bert-base-cased geometry, as emilyalsentzer/Bio_ClinicalBERT
    vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-12, initializer_range=0.02,
)


def paper(bert: str | None = None) -> ModelConfig:
    """The published configuration (ResNet-50 + Bio_ClinicalBERT-sized BERT)."""
    return ModelConfig(vision=VisionConfig(arch="resnet50", width=64, upsample=299),
                       text=TextConfig(bert=bert, bert_config=dict(BIO_CLINICAL_BERT)))


def demo(vocab: str | None = None, vocab_size: int = 4096) -> ModelConfig:
    """Trains on two CPU cores in minutes: narrow ResNet-18 that resizes the 224 input to 128 (an 8x8
    deep grid and a 16x16 shallow grid) and a 2-layer, 64-wide BERT without dropout; same losses.

    Why these sizes: learned from scratch on about a thousand pairs, the local (word and sentence)
    losses first collapse to chance (image features that encode position only) and need a few
    hundred steps to escape; the 128 input makes a step about three times cheaper than 224, and a
    shallow text encoder without dropout learns the report embedding faster."""
    bert = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=256, max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
                initializer_range=0.02)
    return ModelConfig(vision=VisionConfig(arch="resnet18", width=16, upsample=128),
                       text=TextConfig(bert_config=bert, vocab=vocab))


def tiny(vocab: str | None = None, vocab_size: int = 64) -> ModelConfig:
    """The smallest working network, for tests (random weights, no dropout)."""
    bert = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
                initializer_range=0.02)
    return ModelConfig(vision=VisionConfig(arch="resnet18", width=8, upsample=299),
                       text=TextConfig(bert_config=bert, vocab=vocab))


PRESETS = {"paper": paper, "demo": demo, "tiny": tiny}
