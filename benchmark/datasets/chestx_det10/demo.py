"""The demo ChestX-Det10 writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import json

import numpy as np

from benchmark.datasets.nih_bbox.demo import NIH_SIDE
from benchmark.demo import encode as E
from benchmark.demo.findings import Finding
from benchmark.demo.material import boxes as real_boxes
from benchmark.demo.writer import DemoSet, Job, provenance, split_counts, unique_ints

DET10_WEIGHTS = {"Consolidation": 446, "Effusion": 372, "Nodule": 166, "Fibrosis": 120, "Fracture": 115,
                 "Calcification": 67, "Emphysema": 66, "Atelectasis": 51, "Pneumothorax": 42, "Mass": 31}  # test.json
DET10_KIND = {"Consolidation": "consolidation", "Effusion": "effusion", "Nodule": "nodule", "Fibrosis": "fibrosis",
              "Fracture": "fracture", "Calcification": "calcification", "Emphysema": "emphysema",
              "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Mass": "mass"}
DET10_SOURCE = {"Consolidation": "vindr:Consolidation", "Effusion": "nih:Effusion", "Nodule": "nih:Nodule",
                "Fibrosis": "vindr:Pulmonary fibrosis", "Atelectasis": "nih:Atelectasis", "Mass": "nih:Mass"}
# Calcification: VinDr's calcification boxes are mostly aortic, so calcified nodules are placed in the lungs


class ChestXDet10Demo(DemoSet):
    """Ten-class boxes ``[x1, y1, x2, y2]``, one per lesion instance, PNG images."""

    name, code, title = "chestx_det10", 16, "ChestX-Det10"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        table = real_boxes()
        labels = list(DET10_WEIGHTS)
        w = np.array([DET10_WEIGHTS[k] for k in labels], float)
        n_train = max(2, ctx.n_test // 10)
        jobs = []
        numbers = unique_ints(rng, ctx.n_test + n_train, 90_000, 99_999)
        for i in range(ctx.n_test + n_train):
            split = "test" if i < ctx.n_test else "train"
            fs, labs = [], []
            if rng.random() < 0.85:
                k = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
                for j in rng.choice(len(labels), size=min(k, len(labels)), replace=False, p=w / w.sum()):
                    lab = labels[int(j)]
                    src = DET10_SOURCE.get(lab)
                    box = None
                    if src:
                        rows = table[src]
                        box = tuple(float(v) for v in rows[int(rng.integers(len(rows)))])
                    fs.append(Finding(DET10_KIND[lab], box=box))
                    labs.append(lab)
            jobs.append(Job(self.name, split, i, (NIH_SIDE, NIH_SIDE), fs, view="PA",
                            ids={"file_name": f"{numbers[i]}.png"}, extra={"labels": labs}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, attempts=8)
        folder = "test_data" if job.split == "test" else "train_data"
        E.write_png(root / folder / job.ids["file_name"], ph.image)
        syms, bxs = [], []
        for lab, t in zip(job.extra["labels"], ph.truths):
            for m in t.instances:
                x, y, w, h = _box_of(m)
                syms.append(lab)
                bxs.append([x, y, x + w - 1, y + h - 1])
        return {"syms": syms, "boxes": bxs, "provenance": provenance(job, ph, image=f"{folder}/{job.ids['file_name']}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        for split in ("train", "test"):
            entries = [{"file_name": j.ids["file_name"], "syms": r["syms"], "boxes": r["boxes"]}
                       for j, r in zip(jobs, results) if j.split == split]
            E.atomic_write_text(root / f"{split}.json", json.dumps(entries))
        counts = split_counts(jobs)
        counts["boxes_test"] = sum(len(r["boxes"]) for j, r in zip(jobs, results) if j.split == "test")
        counts["positive_test"] = sum(1 for j, r in zip(jobs, results) if j.split == "test" and r["boxes"])
        return counts


def _box_of(m: np.ndarray) -> list[int]:
    from benchmark.demo.phantom import mask_box

    return mask_box(m)
