"""Weight-free sanity models. They appear in every table as the floor a real model must beat.

- ``random``: seeded noise, reproducible per (image, prompt, seed), so caching and reruns agree.
- ``uniform``: a constant map and probability 0.5 (every pixel ties; shows how a protocol
  treats a map that carries no information).
- ``center_prior``: a centred Gaussian on the input frame, the "lesions are near the middle"
  prior that a localizer must beat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, Query, query_texts

GRID = 14  # native grid of the sanity maps over the letterboxed 224 frame


class _Sanity(Adapter):
    capabilities = (GROUNDING, ZEROSHOT_CLS)
    input_family = "sanity"  # the three floors read each image once between them
    takes_checkpoint = False
    input_geometry = "letterbox:224"
    preprocessing_id = "sanity-digest-v1"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        # The map does not depend on pixels, but ``random`` must differ per image: keep a digest.
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8]
        return np.frombuffer(digest, dtype=np.uint64).copy()

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.uint64).reshape(len(batch), 1)

    def encode_texts(self, queries: Sequence[Query]) -> np.ndarray:
        return np.array([[int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")]
                         for p in query_texts(queries)], dtype=np.uint64)

    def encode_prompt_ensemble(self, queries: Sequence[Query]) -> np.ndarray:
        return self.encode_texts([" | ".join(query_texts(queries))])


class RandomModel(_Sanity):
    """Seeded noise; option ``seed`` (default 0)."""

    def _rng(self, a: np.ndarray, b: np.ndarray) -> np.random.Generator:
        seed = int(self.options.get("seed", 0))
        return np.random.default_rng([int(a[0]), int(b[0]), seed])

    def similarity_map(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        return np.stack([self._rng(i, t).random((GRID, GRID), dtype=np.float32)
                         for i, t in zip(image_emb, text_emb)])

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        return np.array([self._rng(i, p).random() for i, p in zip(image_emb, positive)], dtype=np.float64)

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        return self.score(image_emb, positive, None)


class UniformModel(_Sanity):
    """Constant map, probability 0.5."""

    def similarity_map(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        return np.ones((len(image_emb), GRID, GRID), dtype=np.float32)

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        return np.full(len(image_emb), 0.5)

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        return np.zeros(len(image_emb))  # every class ties: the argmax is the first class


def center_gaussian(size: int = GRID, sigma_frac: float = 0.25) -> np.ndarray:
    """Centred isotropic Gaussian on a ``size``×``size`` grid, sigma as a fraction of the side."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    g = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2.0 * (sigma_frac * size) ** 2))
    return g.astype(np.float32)


class CenterPriorModel(_Sanity):
    """Centred Gaussian (sigma = 1/4 of the side); probability 0.5."""

    def similarity_map(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        g = center_gaussian(GRID, float(self.options.get("sigma_frac", 0.25)))
        return np.repeat(g[None], len(image_emb), axis=0)

    def score(self, image_emb: Any, positive: Any, negative: Any) -> np.ndarray:
        return np.full(len(image_emb), 0.5)

    def class_logit(self, image_emb: Any, positive: Any) -> np.ndarray:
        return np.zeros(len(image_emb))  # every class ties: the argmax is the first class
