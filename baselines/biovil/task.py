"""Training BioViL on the shared trainer: ``afloc-bench train biovil --dataset demo_mimic``.

Objective: ``baselines.common.losses.biovil_global_loss``, BioViL's global image–text alignment: the
symmetric InfoNCE on the L2-normalised global embeddings, where the image embedding is the spatial
mean of the *projected* patches (hi-ml ``ImageModel.projected_global_embedding``) and the text
embedding the projected ``[CLS]`` state (CXR-BERT ``cls_projection_head``). Temperature 0.5
(``BiovilConfig.temperature``; Boecking et al., ECCV 2022). The paper trains CXR-BERT's masked
language modelling loss beside it; that term is left out here (the text side is learned through
the contrastive loss only, as the localization maps depend on nothing else).

Input and text are the adapter's (``baselines.biovil.adapter``), so a trained checkpoint is evaluated on
exactly what it was trained on: hi-ml's inference transform (min–max to uint8, shorter side to
``resize``, centre crop ``crop``, [0, 1], no mean/std; the paper trains on random affine and
crop augmentations instead) at the sizes the checkpoint records, and hi-ml's ``TextInput``
encoding (trailing ``!?.`` stripped, ``[CLS]``/``[SEP]``, padded to the longest), truncated to the
text model's positions. Captions are the trainer's sampled sentence subsets (``benchmark.training.data``).

Presets (``TrainConfig.preset``):
  * ``demo``: ResNet-18 trunk at width 16 (``benchmark.backbones``; its ``layer4`` is the 5x5 patch grid
    of the 160 crop), 128-d joint space, a 2-layer, 64-wide BERT over the demo WordPiece vocabulary
    (``benchmark.demo.vocab.ensure_demo_vocab``), both from scratch; input resize 183 / crop 160 (the official
    512 / 480 has 9 times the pixels);
  * ``paper``: hi-ml's ResNet-50 image model and CXR-BERT from ``text_encoder`` (a local folder of
    BiomedVLP-CXR-BERT-specialized or -general: config.json, vocab.txt, weights; a missing projection
    head starts random), input 512 / 480; ``pretrained_vision: imagenet`` loads torchvision's
    ImageNet ResNet-50 (from the local torch cache) or a local state-dict file.
``model:`` entries of the config override ``BiovilConfig`` fields (e.g. ``temperature``, ``crop``).

Checkpoint folder (``save``): ``model.safetensors``, ``config.json`` (format ``afloc-bench/biovil``,
the ``BiovilConfig`` with its BERT config and input sizes) and the vocabulary (``vocab.txt``,
``tokenizer_config.json``): ``--ckpt biovil=FOLDER`` needs no other file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from baselines.biovil.model import BioViL, BiovilConfig, CaptionTokenizer, image_input, save_checkpoint
from baselines.common.losses import biovil_global_loss
from baselines.common.text_folder import folder_weights, read_json, text_folder, wordpiece_tokenizer
from benchmark.backbones import ResNetBackbone, load_pretrained
from benchmark.io.checkpoints import load_checked
from benchmark.io.images import read_image
from benchmark.training.task import TrainTask, deep_merge

# the small BERT of the demo (as AFLoc's demo preset): 2 layers, 64 wide, no dropout
DEMO_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, initializer_range=0.02)
# ResNet-18 at width 16 (128 channels at layer4) on a 160 crop of a 183 resize (the crop keeps 7/8 of
# the shorter side, as 224 of 256): a 5x5 patch grid
# (docs/notes/2026-12-07-demo-baselines-builds.md has the measurements)
DEMO_MODEL = dict(vision_arch="resnet18", vision_width=16, resize=183, crop=160)
CXR_BERT = "https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized (config.json, vocab.txt, weights)"


class BiovilTask(TrainTask):
    """BioViL's global image–text InfoNCE on ``baselines.biovil.model.BioViL``."""

    name = "biovil"
    metric_columns = ("global_loss", "i2t_top1")

    def __init__(self) -> None:
        self._sizes: tuple[int, int] | None = None  # (resize, crop) of the model ``image_fn`` feeds

    # -- model -----------------------------------------------------------------------------
    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:


        text_weights = None
        if cfg.preset == "paper":
            folder = text_folder(cfg.text_encoder, "CXR-BERT (config.json, vocab.txt, weights)", CXR_BERT,
                                 option="text_encoder", files=("config.json", "vocab.txt"))
            fields: dict[str, Any] = dict(text_config=read_json(folder / "config.json"))
            text_weights = folder
        elif cfg.preset == "demo":
            if cfg.text_encoder or cfg.vocab:
                folder = Path(cfg.text_encoder or cfg.vocab)
                folder = folder.parent if folder.is_file() else folder
            else:
                from benchmark.demo.vocab import ensure_demo_vocab

                folder = Path(ensure_demo_vocab())
            fields = dict(text_config=dict(DEMO_BERT), **DEMO_MODEL)
        else:
            raise ValueError(f"unknown BioViL preset {cfg.preset!r}; expected demo or paper")
        if isinstance(tokenizer, CaptionTokenizer):
            tokenizer = tokenizer.tokenizer
        tok = tokenizer if tokenizer is not None else wordpiece_tokenizer(folder)
        if cfg.preset == "demo":
            fields["text_config"]["vocab_size"] = len(tok.get_vocab())
        fields = deep_merge(fields, dict(cfg.model or {}))
        unknown = sorted(set(fields) - set(BiovilConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown BioViL model options {unknown}; expected fields of BiovilConfig")
        mcfg = BiovilConfig(**fields)
        torch.manual_seed(cfg.seed)
        model = BioViL(mcfg)
        if text_weights is not None:
            _load_text(model, text_weights)
        if cfg.pretrained_vision:
            _load_vision(model, cfg.pretrained_vision)
        model.tokenizer_folder = None if tokenizer is not None else folder  # copied into every checkpoint
        model.wordpiece = tok
        self._sizes = (mcfg.resize, mcfg.crop)
        return model, CaptionTokenizer(tok, int(model.text.config.max_position_embeddings))

    def image_fn(self, path: str) -> Any:
        """The adapter's input (``baselines.biovil.model.image_input``) at the model's sizes."""

        if self._sizes is None:
            raise RuntimeError("BiovilTask.image_fn before build(): the input sizes come from the model config")
        return image_input(read_image(path, "hi-ml"), *self._sizes, share_channels=True)

    # -- objective -------------------------------------------------------------------------
    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:


        with autocast:
            _, v = model.image(batch["images"])
            t = model.text(batch["input_ids"], batch["attention_mask"])
        v, t = v.float(), t.float()
        loss = biovil_global_loss(v, t, temperature=model.cfg.temperature)
        with torch.no_grad():  # diagnostic: images whose own caption is the closest (chance 1/B)
            sim = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
            top1 = (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
        return {"loss": loss, "global_loss": loss.detach(), "i2t_top1": top1}

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:

        folder = Path(folder)
        vocab = getattr(model, "tokenizer_folder", None)
        save_checkpoint(model, folder, tokenizer_folder=vocab, extra=extra)
        if vocab is None and getattr(model, "wordpiece", None) is not None:  # a tokenizer handed to the trainer
            from baselines.common.text_folder import save_wordpiece

            save_wordpiece(model.wordpiece, folder)


def _load_text(model: Any, folder: Path) -> None:
    """CXR-BERT's weights into the text tower; the MLM head is not built, and a folder without the
    projection head (CXR-BERT-general) leaves it at its random initialisation."""

    load_checked(model.text, folder_weights(folder, "the CXR-BERT weights"), source=folder,
                 expected="CXR-BERT weights for BioViL's text tower",
                 ignore=[r"cls\.predictions\..*", r".*embeddings\.position_ids", r".*embeddings\.token_type_ids",
                         r"cls_projection_head\..*", r"bert\.pooler\..*"])


def _load_vision(model: Any, source: str) -> None:
    """ImageNet (``imagenet``: torchvision's ResNet-50 file from the local cache) or a local state-dict file,
    into the image trunk (hi-ml's ``encoder.encoder``; ``fc`` included, as hi-ml's ImageNet init)."""

    trunk = model.image.encoder.encoder
    if isinstance(trunk, ResNetBackbone):
        load_pretrained(trunk, source)
        return
    if source == "imagenet":
        from torchvision.models import ResNet50_Weights

        weights = ResNet50_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - offline machines end here
            raise RuntimeError(f"cannot obtain torchvision's ImageNet ResNet-50 ({type(exc).__name__}: {exc}); place "
                               f"{weights.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints or set "
                               "pretrained_vision to a local state-dict file") from exc
    else:
        from benchmark.io.checkpoints import read_state_dict

        state = read_state_dict(source)

    load_checked(trunk, state, source=source, expected="a torchvision ResNet-50 state dict")
