"""Pretraining data: image–report pairs → (image tensor, sampled caption tokens), batch plans.

Source: the ``mimic_cxr`` loader (or its ``demo_mimic`` variant) through
``benchmark.dataset.build_dataset`` (samples with ``image_path``, ``split`` and
``prompts["report"]``), or any list of ``(image_path, report)`` pairs.

Per pair (official ``MultimodalPretrainingDataset``):
  * sentences: ``benchmark.training.captions.report_sentences`` (quirks kept when ``compat``); pairs without a
    sentence are dropped and counted in ``skipped``;
  * caption: a random shuffled subset of the sentences (``benchmark.training.captions.sample_caption``),
    tokenized to ``max_length`` with padding and truncation;
  * image: grayscale, letterboxed to 224 (INTER_AREA, zero padding; the official training reads
    images pre-resized this way), ``Normalize(0.5, 0.5)``. With a prepared set
    (``benchmark.training.prepared``, ``afloc-bench prepare``) the frames come from its memory-mapped
    table instead of the image files: the same bytes, no decode.

Randomness: the caption of pair ``i`` in epoch ``e`` comes from a generator seeded with
``(seed, e, i)``. This is the official distribution (numpy ``randint``/``choice``), not its
stream, and it makes an epoch reproducible regardless of worker processes, ranks and resumes.

Batch plan of an epoch: a seeded permutation cut into global batches (last partial batch
dropped, as the official loader); each global batch is sorted by caption length (descending,
as the official collate function) and cut into ``n_groups`` contiguous groups. With
``world_size`` ranks and ``chunks`` forward passes per rank, group ``r * chunks + c`` is the
c-th forward pass of rank r. ``chunks = 2`` on one process therefore reproduces what the
official two-GPU DataParallel run did (two contrastive sub-batches of the longest and the
shortest captions), and N ranks with one chunk each see exactly the same groups.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.dataset import build_dataset
from benchmark.geometry.frames import letterbox_array
from benchmark.io.images import read_image
from benchmark.training.captions import report_sentences, sample_caption

FRAME_SIZE = 224  # the letterboxed training frame (the official training's pre-resized images)

@dataclass
class Pair:
    image_path: str
    report: str
    labels: dict | None = None  # per-study labels when the loader has them (MIMIC-CXR's CheXpert table)


def pairs_from_dataset(name: str, split: str, data_root: str | None = None, details: bool = False,
                       **options) -> tuple[list[Pair], dict]:
    """(image, report) pairs of a registered dataset split, plus what the loader skipped (counts; with
    ``details`` also the lists: ``loader_skipped`` entries and the ``without_report`` image paths)."""

    ds = build_dataset(name, data_root, split=split, **options)
    samples = ds.samples()
    pairs, missing = [], []
    for s in samples:
        rep = (s.prompts or {}).get("report")
        if rep is None:
            missing.append(str(s.image_path))
            continue
        pairs.append(Pair(s.image_path, rep, (s.meta or {}).get("chexpert")))
    info = {"dataset": name, "split": split, "root": str(ds.root), "n_samples": len(samples),
            "n_loader_skipped": len(ds.skipped), "n_without_report": len(missing)}
    if details:
        info.update(loader_skipped=list(ds.skipped), without_report=missing)
    return pairs, info


def select_pairs(pairs: Sequence[Pair | tuple[str, str]], labels: dict[str, float]) -> tuple[list[Pair], dict]:
    """The pairs whose study labels (``Pair.labels``, MIMIC-CXR's CheXpert table) have every value of
    ``labels`` (``{"No Finding": 1}``: the normal studies, for objectives trained on normal images
    only); pairs without labels are dropped. Returns ``(kept, counts)``."""
    want = {str(k): float(v) for k, v in labels.items()}
    kept: list[Pair] = []
    unlabelled = 0
    for p in pairs:
        lab = p.labels if isinstance(p, Pair) else None
        if not lab:
            unlabelled += 1
            continue
        if all(lab.get(k) is not None and float(lab[k]) == v for k, v in want.items()):
            kept.append(p)
    return kept, {"select_labels": want, "n_selected": len(kept), "n_not_selected": len(pairs) - len(kept),
                  "n_without_labels": unlabelled}


def dataset_pairs(name: str, split: str, data_root: str | None = None, details: bool = False,
                  **options) -> tuple[list[Pair], dict]:
    """``pairs_from_dataset`` for training: a demo dataset's collection is generated on first use, and
    a data root given to a demo dataset (which reads the generated collection) is an error."""
    if name.startswith("demo"):
        from benchmark.dataset import demo_root, is_demo
        from benchmark.demo import ensure, ensure_demo_data

        if data_root and is_demo(name):
            raise ValueError(f"{name} reads the generated demo collection ({demo_root()}, set by "
                             f"AFLOC_BENCH_DEMO), not data_root {data_root!r}; for a real dataset in "
                             f"its official layout use e.g. --dataset mimic_cxr --data-root PATH")
        if is_demo(name):
            ensure_demo_data([name])
        else:
            ensure(demo_root())
    return pairs_from_dataset(name, split, data_root, details=details, **options)


class PretrainingData:
    """Deterministic access to images and sampled captions of a list of pairs.

    ``frames``: the frame source of a prepared set (``benchmark.training.prepared.PreparedFrames``),
    indexed by pair position; item ``i`` reads row ``rows[i]`` (pairs without a usable sentence are
    dropped here, so item and row numbers differ)."""

    def __init__(self, pairs: Iterable[Pair | tuple[str, str]], tokenizer, *, seed: int = 0,
                 captions_per_image: int = 5, compat: bool = True, image_size: int = FRAME_SIZE,
                 image_cache: str | os.PathLike | None = None, image_fn=None, frame_input=None, label_fn=None,
                 augment: dict | None = None, frames=None, captions: bool = True, decode: str = "cv2-gray"):
        if (image_fn is None) == (frame_input is None):
            raise ValueError("give either image_fn (path -> model input) or frame_input (letterboxed uint8 "
                             "frame -> model input)")
        if frames is not None:
            if image_fn is not None:
                raise ValueError("a prepared set holds letterboxed frames; this training task reads image files "
                                 "with its own transform (image_fn): train it without a prepared set")
            if image_cache is not None:
                raise ValueError("a prepared set is read without an image cache (its frames are decoded already)")
            if frames.size != image_size:
                raise ValueError(f"{frames.folder}: frames of {frames.size}x{frames.size}, but training reads "
                                 f"{image_size}x{image_size} frames")
        self.tokenizer = tokenizer
        self.augment = dict(augment or {})
        self.decode = decode  # the letterboxed frames' read: cv2-gray (official pretraining) or cv2-bgr (colour)
        unknown = sorted(set(self.augment) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown}; expected some of {list(AUGMENT_KEYS)}")
        if self.augment and image_fn is not None:  # the border value assumes a [-1, 1] frame input
            raise ValueError("augment applies to letterboxed frame inputs only, not to a training task's image_fn")
        self.seed = int(seed)
        self.compat = compat
        self.image_size = image_size
        # "memory": inputs kept in this process after their first read (for num_workers 0: the
        # demo's 1,000 pairs are read once instead of once per epoch); a folder: letterboxed
        # frames as .npy files, shared by processes and runs
        self.in_memory = str(image_cache) == "memory"
        self.image_cache = Path(image_cache) if image_cache and not self.in_memory else None
        self._memo: dict[int, Any] = {}
        self.image_fn, self.label_fn = image_fn, label_fn  # a training task's own input / labels
        self.frame_input = frame_input
        self.frames = frames
        self.items: list[tuple[str, list[str]]] = []
        self.labels: list[dict | None] = []
        self.rows: list[int] = []  # item -> position in ``pairs`` (the prepared table's row)
        self.skipped: list[dict[str, str]] = []
        n_pairs = 0
        for pos, p in enumerate(pairs):
            n_pairs = pos + 1
            path, report = (p.image_path, p.report) if isinstance(p, Pair) else (str(p[0]), p[1])
            # an image-only objective (captions False) keeps every image, its caption an empty string
            sents = report_sentences(report, captions_per_image, compat) if captions else [""]
            if sents:
                self.items.append((str(path), sents))
                self.labels.append(p.labels if isinstance(p, Pair) else None)
                self.rows.append(pos)
            else:
                self.skipped.append({"path": str(path), "reason": "report has no usable sentence"})
        if frames is not None and len(frames) != n_pairs:
            raise ValueError(f"{frames.folder}: {len(frames)} prepared rows for {n_pairs} pairs")

    def __len__(self) -> int:
        return len(self.items)

    # -- text --------------------------------------------------------------
    def caption(self, i: int, epoch: int) -> str:
        rng = np.random.default_rng([self.seed, int(epoch) + 1, int(i)])
        return sample_caption(self.items[i][1], rng, self.compat)

    def caption_lengths(self, indices: Sequence[int], epoch: int) -> np.ndarray:
        """Non-padding token counts (official ``cap_lens``) of the sampled captions."""
        enc = self.tokenizer([self.caption(i, epoch) for i in indices])
        return enc["attention_mask"].sum(1).numpy()

    # -- images --------------------------------------------------------------
    def image(self, i: int) -> torch.Tensor:
        if self.image_fn is None:  # letterboxed input: the uint8 frame is what is kept (50 kB, not 600 kB)
            if self.frames is not None:  # a prepared set: a copy out of the memory-mapped table
                return self.frame_input(self.frames[self.rows[i]])
            frame = self._memo.get(i)
            if frame is None:
                frame = self._frame(self.items[i][0])
                if self.in_memory:
                    self._memo[i] = frame
            return self.frame_input(frame)
        x = self._memo.get(i)
        if x is None:
            x = self.image_fn(self.items[i][0])
            if self.in_memory:
                self._memo[i] = x
        return x

    def _frame(self, path: str) -> np.ndarray:
        """Read and letterbox one image (``benchmark.training.prepared.read_frame`` makes the same calls)."""

        cached = None
        if self.image_cache is not None:
            st = os.stat(path)
            read = "" if self.decode == "cv2-gray" else f"|{self.decode}"
            stamp = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.image_size}{read}"
            key = hashlib.sha1(stamp.encode())
            cached = self.image_cache / key.hexdigest()[:2] / (key.hexdigest() + ".npy")
            if cached.is_file():
                return np.load(cached)
        frame = letterbox_array(read_image(path, self.decode), self.image_size)  # AFLoc pretraining: cv2.imread(p, 0)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, frame)
            os.replace(tmp, cached)
        return frame

    # -- batches -------------------------------------------------------------
    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([self.caption(i, epoch) for i in indices])
        images = torch.stack([self.image(i) for i in indices])
        if self.augment:
            images = random_affine(images, indices, epoch, self.seed, **self.augment)
        out = {"images": images, **enc, "index": torch.as_tensor(list(indices))}
        if self.label_fn is not None:
            out["labels"] = self.label_fn([self.labels[i] for i in indices])
        return out


AUGMENT_KEYS = ("translate", "scale", "degrees")


def random_affine(images: torch.Tensor, indices: Sequence[int], epoch: int, seed: int, *,
                  translate: float = 0.0, scale: Sequence[float] = (1.0, 1.0), degrees: float = 0.0) -> torch.Tensor:
    """Per-sample random shift / zoom / rotation (torchvision ``RandomAffine`` semantics), drawn
    from ``(seed, epoch, index)`` so an epoch's inputs do not depend on workers or ranks; the
    uncovered border takes the letterbox padding value (-1 after normalisation)."""


    theta = []
    for i in indices:
        rng = np.random.default_rng([seed, int(epoch) + 1, int(i), 104729])
        tx, ty = rng.uniform(-translate, translate, 2) * 2  # fraction of the side -> [-1, 1] units
        sc = rng.uniform(scale[0], scale[1])
        a = math.radians(rng.uniform(-degrees, degrees))
        c, s = math.cos(a) / sc, math.sin(a) / sc
        theta.append([[c, -s, -tx], [s, c, -ty]])
    theta = torch.tensor(theta, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True,
                  drop_last: bool = True) -> list[np.ndarray]:
    """Global batches of one epoch (seeded permutation; the last partial batch dropped)."""
    order = np.random.default_rng([seed, 7919, int(epoch)]).permutation(n) if shuffle else np.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def split_groups(batch: np.ndarray, lengths: np.ndarray, n_groups: int, sort: bool = True) -> list[np.ndarray]:
    """Sort a global batch by caption length (descending, stable) and cut it into contiguous groups."""
    if len(batch) % n_groups:
        raise ValueError(f"batch of {len(batch)} cannot be split into {n_groups} equal groups")
    if sort:
        batch = batch[np.argsort(-np.asarray(lengths), kind="stable")]
    size = len(batch) // n_groups
    return [batch[g * size:(g + 1) * size] for g in range(n_groups)]


class GroupLoader(torch.utils.data.Dataset):
    """One item = one collated group of one global batch, so DataLoader workers do the sorting
    (which needs the sampled captions of the whole global batch) and build whole forward batches.

    ``groups`` are the indices of the groups this process runs (``rank * chunks + c``).
    """

    def __init__(self, data: PretrainingData, batches: Sequence[np.ndarray], epoch: int, n_groups: int,
                 groups: Sequence[int], sort: bool = True):
        self.data, self.batches, self.epoch = data, list(batches), epoch
        self.n_groups, self.groups, self.sort = n_groups, list(groups), sort

    def __len__(self) -> int:
        return len(self.batches) * len(self.groups)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        b = self.batches[k // len(self.groups)]
        g = self.groups[k % len(self.groups)]
        lengths = self.data.caption_lengths(b, self.epoch) if self.sort else np.zeros(len(b))
        return self.data.collate(split_groups(b, lengths, self.n_groups, self.sort)[g], self.epoch)
