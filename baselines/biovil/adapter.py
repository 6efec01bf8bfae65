"""BioViL (Boecking et al., ECCV 2022; Microsoft hi-ml-multimodal), re-implemented.

Heatmap: the cosine between each L2-normalised projected patch embedding (15×15 for the 480
crop) and the normalised CXR-BERT ``[CLS]`` projection, i.e. hi-ml's
``get_similarity_map_from_raw_data`` before its Gaussian smoothing (σ 1.5), resize and NaN
padding, which belong to the protocol and ``benchmark.geometry`` (``resize_crop:512:480``).

Zero-shot: cosine of the normalised global image embedding with the prompt embedding (several
prompts: raw embeddings averaged, then normalised, as ``get_similarity_score_from_raw_data``);
probability = softmax of the positive and negative cosines.

Accepted checkpoints:
- the released image file ``biovil_image_resnet50_proj_size_128.pt`` (loaded strictly) with the
  CXR-BERT folder given by the ``text_encoder`` option;
- checkpoints trained by this project (``afloc-bench train biovil``): a folder (or the
  ``model.safetensors`` inside it) holding ``config.json`` (``BiovilConfig``) and, when it carries
  its vocabulary, no ``text_encoder`` is needed. Its input transform (resize/crop sizes) comes from
  the config, and with it ``input_geometry`` and ``preprocessing_id``;
- nothing (and no ``random_init``): the demo model (the demo weights of ``baselines/manifest.yaml``: ResNet-18 width 16
  + 2-layer BERT over the demo vocabulary, resize 183 / crop 160, trained on the demo pairs on
  first use and cached).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from baselines.biovil.model import BioViL, BiovilConfig, BioVilImageModel, CXRBert, encode_text_input, image_input
from baselines.common.adapter import BaselineAdapter, softmax_pair
from baselines.common.text_folder import folder_weights, read_json, text_folder, wordpiece_tokenizer
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Query, query_texts
from benchmark.io.checkpoints import CheckpointError, load_checked, read_tensors, state_dict_from

IMAGE_PUBLISHED = ("https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized (revision v1.1, file "
                   "biovil_image_resnet50_proj_size_128.pt)")
TEXT_PUBLISHED = ("https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized (revision v1.1: config.json, "
                  "vocab.txt, tokenizer_config.json, pytorch_model.bin)")
RESIZE, CROP = 512, 480
log = logging.getLogger(__name__)


def preprocessing_id_for(resize: int, crop: int) -> str:
    return f"biovil-minmax-resize{resize}-crop{crop}-nonorm-v1"


class BioVilAdapter(BaselineAdapter):
    """BioViL ResNet-50 + CXR-BERT-specialized.

    Checkpoint: ``biovil_image_resnet50_proj_size_128.pt`` (image model, loaded strictly), a folder
    trained by this project, or none (the demo model).
    Options: ``text_encoder`` (local folder of microsoft/BiomedVLP-CXR-BERT-specialized: config,
    vocab and weights; not needed for folders that carry their vocabulary), ``interpolation``
    (bilinear, the default, or nearest: hi-ml's default upsampling of the grid), ``random_init``, ``seed``.
    """

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    needs_checkpoint = False  # no --ckpt: the demo model
    input_geometry = f"resize_crop:{RESIZE}:{CROP}"
    preprocessing_id = preprocessing_id_for(RESIZE, CROP)
    resize, crop = RESIZE, CROP
    decode = "hi-ml"  # load_image: skimage / pydicom, remap_to_uint8, PIL "L"
    checkpoint_name = "biovil_image_resnet50_proj_size_128.pt"
    checkpoint_url = IMAGE_PUBLISHED

    def load(self, checkpoint: str | None, device: str) -> None:

        if checkpoint is None and not self.opt_bool("random_init"):
            checkpoint = self.demo_checkpoint()
            log.info("%s: no checkpoint given, using the demo model %s", self.name or "biovil", checkpoint)
        self.checkpoint = checkpoint
        random_init = self.wants_random_init(checkpoint)
        own = None if random_init else _project_folder(Path(checkpoint))
        if own is not None:
            self._load_project(own, device)
            return
        self.cfg = None  # the released files: hi-ml's architecture and transform
        self._set_transform(RESIZE, CROP)
        folder = text_folder(self.opt("text_encoder"), "CXR-BERT-specialized", TEXT_PUBLISHED,
                             files=("config.json", "vocab.txt"))
        cfg = read_json(folder / "config.json")
        self.seed_init()
        image = BioVilImageModel()
        text = CXRBert(cfg)
        reports = []
        if not random_init:
            sd = state_dict_from(read_tensors(checkpoint, expected="the BioViL image state dict"), checkpoint,
                                 expected="the BioViL image state dict")
            reports.append(load_checked(image, sd, source=checkpoint, expected="the BioViL image model (hi-ml "
                                        "ImageModel, resnet50, 128-d projection)"))
            tsd = folder_weights(folder, "the CXR-BERT weights")
            reports.append(load_checked(text, tsd, source=folder, expected="CXR-BERT (CXRBertModel weights)",
                                        ignore=[r"cls\.predictions\..*", r".*embeddings\.position_ids",
                                                r".*embeddings\.token_type_ids"]))
        self.key_report = reports[0] if reports else None
        self.text_key_report = reports[1] if len(reports) > 1 else None
        self.model = self.place(image, device)
        self.text_model = self.place(text, device)
        self.tokenizer = wordpiece_tokenizer(folder)
        self.max_length = int(self.text_model.config.max_position_embeddings)

    def _load_project(self, folder: Path, device: str) -> None:
        """A checkpoint folder written by ``afloc-bench train biovil`` (``BiovilConfig`` + weights)."""

        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(folder, "expected model.safetensors beside config.json (a BioViL checkpoint "
                                          "folder written by afloc-bench train biovil)")
        cfg = BiovilConfig.from_json(read_json(folder / "config.json"), folder / "config.json")
        if (folder / "vocab.txt").is_file():
            if self.opt("text_encoder"):
                log.info("%s: option text_encoder ignored, the checkpoint folder carries its vocabulary", folder)
            vocab = folder
        else:
            vocab = text_folder(self.opt("text_encoder"), "the vocabulary of the BioViL text model", TEXT_PUBLISHED,
                                files=("vocab.txt",))
        self.seed_init()
        try:
            model = BioViL(cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(folder / "config.json", f"cannot build BioViL from this config ({exc})") from None
        sd = read_tensors(weights, expected="the BioViL weights (image.* and text.*)")
        self.key_report = load_checked(model, sd, source=weights, expected="a BioViL model trained by this "
                                       "project (image.* and text.* as BiovilConfig builds them)",
                                       ignore=[r".*embeddings\.position_ids", r".*embeddings\.token_type_ids"])
        self.text_key_report = None
        self.cfg = cfg
        self._set_transform(cfg.resize, cfg.crop)
        self.model = self.place(model.image, device)
        self.text_model = self.place(model.text, device)
        self.tokenizer = wordpiece_tokenizer(vocab)
        self.max_length = int(self.text_model.config.max_position_embeddings)

    def _set_transform(self, resize: int, crop: int) -> None:
        """The input transform, and with it the grid's frame and the cache identity of the inputs.

        ``interpolation=nearest``: the grid is upsampled as hi-ml's ``get_similarity_map_from_raw_data``
        does by default (nearest), not bilinearly."""
        self.resize, self.crop = int(resize), int(crop)
        mode = self.opt_choice("interpolation", "bilinear", ("bilinear", "nearest"))
        self.input_geometry = f"resize_crop:{self.resize}:{self.crop}" + (":nearest" if mode == "nearest" else "")
        self.preprocessing_id = preprocessing_id_for(self.resize, self.crop)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if getattr(self, "text_key_report", None) is not None:
            d["text_key_report"] = self.text_key_report.as_dict()
        return d

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """hi-ml inference transform: min–max to uint8, Resize(512) (shorter side, PIL bilinear),
        CenterCrop(480), ToTensor, 3 channels; no mean/std normalisation. A checkpoint trained here
        sets its own sizes (the demo: 183 / 160), the ones it was trained on."""

        return image_input(image, self.resize, self.crop)

    def encode_images(self, batch: Any) -> dict[str, Any]:

        with torch.no_grad():
            patches, glob = self.model(batch.to(self.device))
        return {"patch": patches, "global": glob}

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, Any]:
        """hi-ml ``TextInput``: no special tokens but [MASK], trailing ``!?.`` stripped, padded to the longest
        (``baselines.biovil.model.encode_text_input``, also the training encoding)."""

        return encode_text_input(self.tokenizer, prompts, self.max_length)

    def encode_texts(self, queries: Sequence[Query]) -> Any:
        """Projected [CLS] embeddings [P, 128], not normalised (normalised where they are used)."""

        enc = self.tokenize(query_texts(queries))
        with torch.no_grad():
            return self.text_model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    # -- outputs -----------------------------------------------------------------------------
    def similarity_map(self, image_emb: dict[str, Any], text_emb: Any) -> np.ndarray:

        with torch.no_grad():
            t = F.normalize(text_emb.to(image_emb["patch"].device), dim=-1)
            maps = torch.einsum("bhwd,bd->bhw", image_emb["patch"], t)
        return maps.float().cpu().numpy()

    def cosine(self, image_emb: dict[str, Any], text_emb: Any) -> Any:

        g = F.normalize(image_emb["global"], dim=-1)
        return (g * F.normalize(text_emb.to(g.device), dim=-1)).sum(-1).double().cpu()

    def score(self, image_emb: dict[str, Any], positive: Any, negative: Any) -> np.ndarray:
        if negative is None:
            raise ValueError("biovil.score needs negative prompts (the probability is softmax(positive, negative))")
        return softmax_pair(self.cosine(image_emb, positive), self.cosine(image_emb, negative)).numpy()

    def class_logit(self, image_emb: dict[str, Any], positive: Any) -> np.ndarray:
        """The cosine its zero-shot probability compares (softmax over classes instead of [pos, neg])."""
        return self.cosine(image_emb, positive).numpy()


def _project_folder(path: Path) -> Path | None:
    """The folder of a checkpoint written by this project (``config.json`` beside the weights), else None."""

    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        return folder
    if path.is_dir():
        raise CheckpointError(path, "expected a BioViL checkpoint folder (config.json and model.safetensors, as "
                                    "afloc-bench train biovil writes) or the released image file "
                                    "biovil_image_resnet50_proj_size_128.pt")
    return None
