"""BioViL (Boecking et al., ECCV 2022; Microsoft hi-ml-multimodal), re-implemented.

Heatmap: the cosine between each L2-normalised projected patch embedding (15×15 for the 480
crop) and the normalised CXR-BERT ``[CLS]`` projection, i.e. hi-ml's
``get_similarity_map_from_raw_data`` before its Gaussian smoothing (σ 1.5), resize and NaN
padding, which belong to the protocol and ``benchmark.geometry`` (``resize_crop:512:480``).

Zero-shot: cosine of the normalised global image embedding with the prompt embedding (several
prompts: raw embeddings averaged, then normalised, as ``get_similarity_score_from_raw_data``);
probability = softmax of the positive and negative cosines.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, register_model

from ._vlp_base import BaselineAdapter, softmax_pair

IMAGE_PUBLISHED = ("https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized (revision v1.1, file "
                   "biovil_image_resnet50_proj_size_128.pt)")
TEXT_PUBLISHED = ("https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized (revision v1.1: config.json, "
                  "vocab.txt, tokenizer_config.json, pytorch_model.bin)")
RESIZE, CROP = 512, 480


@register_model("biovil", description="BioViL (ECCV 2022), patch-text cosine on the 15x15 grid", tags=("vlp",))
class BioVilAdapter(BaselineAdapter):
    """BioViL ResNet-50 + CXR-BERT-specialized.

    Checkpoint: ``biovil_image_resnet50_proj_size_128.pt`` (image model, loaded strictly).
    Options: ``text_encoder`` (local folder of microsoft/BiomedVLP-CXR-BERT-specialized: config,
    vocab and weights), ``random_init``, ``seed``.
    """

    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_geometry = f"resize_crop:{RESIZE}:{CROP}"
    preprocessing_id = "biovil-minmax-resize512-crop480-nonorm-v1"
    color = "gray"
    checkpoint_name = "biovil_image_resnet50_proj_size_128.pt"
    checkpoint_url = IMAGE_PUBLISHED

    def load(self, checkpoint: str | None, device: str) -> None:
        from ._biovil_model import BioVilImageModel, CXRBert
        from ._checkpoints import load_checked, read_tensors, state_dict_from
        from ._text_folder import folder_weights, read_json, text_folder, wordpiece_tokenizer

        self.checkpoint = checkpoint
        random_init = self.wants_random_init(checkpoint)
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

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if getattr(self, "text_key_report", None) is not None:
            d["text_key_report"] = self.text_key_report.as_dict()
        return d

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:
        """hi-ml inference transform: min–max to uint8, Resize(512) (shorter side, PIL bilinear),
        CenterCrop(480), ToTensor, 3 channels; no mean/std normalisation."""
        from ._biovil_model import remap_to_uint8
        from ._image_prep import center_crop, pil_resize_shorter, to_gray, to_tensor

        x = remap_to_uint8(to_gray(image))
        x = center_crop(pil_resize_shorter(x, RESIZE), CROP)
        return to_tensor(x, None, None)

    def encode_images(self, batch: Any) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            patches, glob = self.model(batch.to(self.device))
        return {"patch": patches, "global": glob}

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, Any]:
        """hi-ml ``TextInput``: no special tokens but [MASK], trailing ``!?.`` stripped, padded to the longest."""
        specials = [t for t in self.tokenizer.all_special_tokens if t != self.tokenizer.mask_token]
        joined = " ".join(prompts)
        bad = [t for t in specials if t in joined]
        if bad:
            raise ValueError(f"BioViL prompt contains special token(s) {bad}: {joined!r}")
        texts = [p.rstrip("!?.") for p in prompts]
        enc = self.tokenizer(texts, add_special_tokens=True, padding="longest", return_tensors="pt")
        if enc["input_ids"].shape[1] > self.max_length:
            raise ValueError(f"BioViL prompt of {enc['input_ids'].shape[1]} tokens exceeds the model's "
                             f"{self.max_length} positions")
        return enc

    def encode_texts(self, prompts: Sequence[str]) -> Any:
        """Projected [CLS] embeddings [P, 128], not normalised (normalised where they are used)."""
        import torch

        enc = self.tokenize(list(prompts))
        with torch.no_grad():
            return self.text_model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    # -- outputs -----------------------------------------------------------------------------
    def similarity_map(self, image_emb: dict[str, Any], text_emb: Any) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            t = F.normalize(text_emb.to(image_emb["patch"].device), dim=-1)
            maps = torch.einsum("bhwd,bd->bhw", image_emb["patch"], t)
        return maps.float().cpu().numpy()

    def cosine(self, image_emb: dict[str, Any], text_emb: Any) -> Any:
        import torch.nn.functional as F

        g = F.normalize(image_emb["global"], dim=-1)
        return (g * F.normalize(text_emb.to(g.device), dim=-1)).sum(-1).double().cpu()

    def score(self, image_emb: dict[str, Any], positive: Any, negative: Any) -> np.ndarray:
        if negative is None:
            raise ValueError("biovil.score needs negative prompts (the probability is softmax(positive, negative))")
        return softmax_pair(self.cosine(image_emb, positive), self.cosine(image_emb, negative)).numpy()
