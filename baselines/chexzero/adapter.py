"""CheXzero (Tiu et al., Nature BME 2022): CLIP ViT-B/32 fine-tuned on MIMIC-CXR, through open_clip.

Classification only. The official score is a softmax over two cosines (no logit scale): image
vs. ``"{label}"`` and image vs. ``"no {label}"``. With ``prompt_style=chexzero`` (default) the
label is the queries' finding (its canonical name, as CheXpert's columns spell it) and CheXzero's
own pair is scored; for queries without a finding (or with ``prompt_style=given``) the harness's
positive and negative ensembles are used (each prompt embedding normalised, averaged, re-normalised,
as CheXzero's ``zeroshot_classifier`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from baselines.chexzero.model import build_clip, letterbox_320, openai_to_open_clip, read_arch, to_model_input
from baselines.common.adapter import BaselineAdapter, softmax_pair
from benchmark.adapter import ZEROSHOT_CLS, Query, as_queries, query_texts
from benchmark.io.checkpoints import load_checked, read_tensors, state_dict_from

PUBLISHED = ("https://github.com/rajpurkarlab/CheXzero (README: Google Drive folder "
             "1makFLiEMbSleYltaRxw81aBhEDMpVwno, e.g. best_64_5e-05_original_22000_0.864.pt)")


class ChexzeroAdapter(BaselineAdapter):
    """Options: ``prompt_style`` (chexzero | given), ``architecture`` (open_clip JSON config; default
    ViT-B/32 QuickGELU), ``random_init``, ``seed``. The BPE vocabulary ships with open_clip."""

    capabilities = (ZEROSHOT_CLS,)
    input_geometry = "letterbox:320"  # then uniformly scaled to 224: the same frame
    preprocessing_id = "chexzero-lanczos-letterbox320-cxrnorm-bicubic224-v1"
    decode = "cv2-rgb"  # img_to_hdf5: cv2.imread(path), BGR to RGB
    checkpoint_name = "a CheXzero .pt state dict (OpenAI CLIP layout)"
    checkpoint_url = PUBLISHED

    def load(self, checkpoint: str | None, device: str) -> None:


        self.checkpoint = checkpoint
        self.style = self.opt_choice("prompt_style", "chexzero", ("chexzero", "given"))
        random_init = self.wants_random_init(checkpoint)
        arch = read_arch(self.opt("architecture")) if self.opt("architecture") else None
        self.seed_init()
        model = build_clip(arch)
        if not random_init:
            sd = state_dict_from(read_tensors(checkpoint, expected="a CheXzero checkpoint"), checkpoint,
                                 containers=("state_dict", "model"), expected="a CLIP state dict (OpenAI layout)")
            self.key_report = load_checked(model, openai_to_open_clip(sd), source=checkpoint,
                                           expected="CheXzero's CLIP ViT-B/32 (OpenAI layout)",
                                           ignore=[r"attn_mask"])
        self.model = self.place(model.float(), device)
        self.context_length = int(self.model.context_length)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> Any:

        return to_model_input(letterbox_320(image))

    def encode_images(self, batch: Any) -> Any:

        with torch.no_grad():
            return F.normalize(self.model.encode_image(batch.to(self.device)), dim=-1)

    # -- text ------------------------------------------------------------------------------
    def encode_texts(self, queries: Sequence[Query]) -> Any:
        """Normalised text features [P, 512] (sequences longer than 77 tokens are truncated)."""

        tokens = self.tokenizer(query_texts(queries)).to(self.device)
        with torch.no_grad():
            return F.normalize(self.model.encode_text(tokens), dim=-1)

    def encode_prompt_ensemble(self, queries: Sequence[Query]) -> dict[str, Any]:
        """Mean of normalised prompt embeddings, and CheXzero's own pair for the queries' finding."""

        queries = as_queries(queries)
        given = self.encode_texts(queries).mean(0, keepdim=True)
        findings = {q.finding for q in queries}
        label = findings.pop() if len(findings) == 1 else None
        if label:
            pair = self.encode_texts([label, f"no {label}"])
            cz_pos, cz_neg, has = pair[:1], pair[1:], torch.ones(1, dtype=torch.bool)
        else:
            cz_pos, cz_neg, has = torch.zeros_like(given), torch.zeros_like(given), torch.zeros(1, dtype=torch.bool)
        return {"given": given, "cz_pos": cz_pos, "cz_neg": cz_neg, "has_cz": has}

    # -- outputs -----------------------------------------------------------------------------
    @staticmethod
    def _cos(img: Any, txt: Any) -> Any:

        return (img * F.normalize(txt.to(img.device), dim=-1)).sum(-1).double().cpu()

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:

        if negative is None:
            raise ValueError("chexzero.score needs negative prompts (softmax of positive vs negative)")
        if not isinstance(positive, dict):  # plain encode_texts rows
            return softmax_pair(self._cos(image_emb, positive), self._cos(image_emb, negative)).numpy()
        pos = self._cos(image_emb, positive["given"])
        neg = self._cos(image_emb, negative["given"])
        if self.style == "chexzero":
            use = negative["has_cz"].cpu()
            pos = torch.where(use, self._cos(image_emb, negative["cz_pos"]), pos)
            neg = torch.where(use, self._cos(image_emb, negative["cz_neg"]), neg)
        return softmax_pair(pos, neg).numpy()

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        """Cosine of the image and the class's prompts (the given prompts, not CheXzero's pairs)."""
        rows = positive["given"] if isinstance(positive, dict) else positive
        return self._cos(image_emb, rows).numpy()

    def similarity_map(self, image_emb: Any, text_emb: Any) -> np.ndarray:
        raise NotImplementedError("chexzero is a classification-only baseline (no grounding capability)")
