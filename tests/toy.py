"""A tiny dataset and protocol used to test the harness mechanics in isolation.

Registered under names tagged ``hidden`` so ``all`` never picks them up.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.dataset import DataError, Dataset, DatasetCard
from benchmark.io.images import image_size
from benchmark.protocols.base import Protocol
from benchmark.registry import datasets, protocols
from benchmark.sample import Sample


class ToyDataset(Dataset):
    """PNG images listed in labels.csv (image,x,y,w,h,label)."""

    card = DatasetCard(name="toy", version="1", title="toy boxes", tasks=["grounding", "classification"])

    def load_samples(self):
        table = self.root / "labels.csv"
        if not table.is_file():
            raise DataError(table, "expected labels.csv with columns image,x,y,w,h,label")
        out = []
        with open(table) as f:
            for row in csv.DictReader(f):
                label = int(row["label"])
                boxes = [[float(row[k]) for k in "xywh"]] if label else []
                path = self.root / row["image"]
                try:
                    size = image_size(path)
                except DataError:
                    size = None  # missing or unreadable: the runner names it
                out.append(Sample(sample_id=f"toy/{row['image']}", image_path=str(path), image_size=size,
                                  split="test", category="Pneumonia", label=label, boxes=boxes,
                                  patient_id=row["image"][:3],
                                  prompts={"simple": "Findings suggesting pneumonia."}))
        return out


class ToyProtocol(Protocol):
    """Peak value of the grid inside vs outside a centred square; mean with a plain bootstrap."""

    name = "toy"
    version = 1

    def grounding_record(self, grid, sample, image_size, input_geometry):
        g = np.asarray(grid, dtype=np.float64)
        h, w = g.shape
        inner = g[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
        return {"peak": float(g.max()), "center_ratio": float(inner.mean() - g.mean())}

    def summarize(self, records, task, *, n_boot, seed, unit, params=None):
        cols = ["peak", "center_ratio"] if task == "grounding" else ["score"]
        rng = np.random.default_rng(seed)
        rows = []
        n = len(records)
        idx = rng.integers(0, n, size=(n_boot, n)) if n_boot else None
        for c in cols:
            v = records[c].to_numpy(dtype=float)
            boots = v[idx].mean(1) if idx is not None else np.array([v.mean()])
            rows.append({"metric": c, "category": "all", "point": float(v.mean()),
                         "boot_mean": float(boots.mean()), "lo": float(np.percentile(boots, 2.5)),
                         "hi": float(np.percentile(boots, 97.5)), "n": n})
        return rows


def register() -> None:
    datasets.add("toy_test", ToyDataset, tags=("hidden",))
    protocols.add("toy@1", ToyProtocol, capabilities=ToyProtocol.tasks)


def make_toy(root: Path, n: int = 6, bad: int = 0) -> Path:
    """Write ``n`` PNG images (and ``bad`` listed but missing ones) with labels.csv."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n + bad):
        name = f"im{i:03d}.png"
        if i < n:
            img = (rng.random((40 + 4 * i, 50)) * 255).astype(np.uint8)
            cv2.imwrite(str(root / name), img)
        rows.append({"image": name, "x": 5, "y": 5, "w": 20, "h": 20, "label": i % 2})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def run_sanity(root: Path, out: Path, *extra: str) -> int:
    """``afloc-bench run`` of the sanity models on the toy set at ``root`` (no cache, 20 replicates)."""
    from benchmark.cli.main import main

    return main(["-q", "run", "--models", "sanity", "--datasets", "toy_test", "--protocol", "toy@1", "--no-cache",
                 "--data-root", str(root.parent / "{dataset}"), "--n-boot", "20", "--num-workers", "0",
                 "-o", str(out), *extra])
