"""The demo CheXlocalize writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo import reports as R
from benchmark.demo.material import reports as real_reports
from benchmark.demo.writer import DemoSet, Job, csv_text, csv_value, image_size, provenance

CHEXLOCALIZE_TASKS = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
                      "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices"]
TASK_KINDS = {
    "Enlarged Cardiomediastinum": ("enlarged_cm",), "Cardiomegaly": ("cardiomegaly",),
    "Lung Lesion": ("nodule", "mass", "calcification"),
    "Airspace Opacity": ("opacity", "infiltrate", "consolidation", "pneumonia", "atelectasis", "edema", "covid"),
    "Edema": ("edema",), "Consolidation": ("consolidation", "pneumonia"), "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",), "Pleural Effusion": ("effusion",), "Support Devices": ("device",),
}
CHEXPERT_LABEL_COLUMNS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                          "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                          "Pleural Other", "Fracture", "Support Devices"]


class CheXlocalizeDemo(DemoSet):
    """Ten localization tasks on CheXpert-style images, val and test, RLE and polygons, human benchmark."""

    name, code, title = "chexlocalize", 18, "CheXlocalize"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        reps = real_reports()
        useful = [r for r in reps
                  if any(any(f.kind in k for k in TASK_KINDS.values()) for f in R.findings_from_report(r))]
        normal = [r for r in reps if r.is_normal]
        n_val = max(2, int(round(0.35 * ctx.n_test)))
        jobs = []
        for split, n, first in (("val", n_val, 64541), ("test", ctx.n_test, 64741)):
            patient, study = first, 1
            for _i in range(n):
                src = normal if rng.random() < 0.2 else useful
                rep = src[int(rng.integers(len(src)))]
                fs = R.findings_from_report(rep)
                cxr = f"patient{patient}_study{study}_view1_frontal"
                rel = f"{split}/patient{patient}/study{study}/view1_frontal.jpg"
                jobs.append(Job(self.name, split, len(jobs), image_size(rng, 600, 800, (0.8, 1.22)), fs,
                                view="AP" if rng.random() < 0.6 else "PA",
                                ids={"cxr_id": cxr, "rel": rel, "uid": rep.uid}))
                if rng.random() < 0.15 and study == 1:
                    study = 2
                else:
                    patient, study = patient + 1, 1
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        hb_rng = np.random.default_rng(int(rng.integers(0, 2 ** 63)))  # the second reader's own stream
        ph = make(rng, job.hw, job.findings, view=job.view, with_lungs=True, attempts=6)
        E.write_jpg(root / "CheXpert" / job.ids["rel"], ph.image)
        h, w = job.hw
        ann: dict[str, Any] = {"img_size": [h, w]}
        seg: dict[str, Any] = {}
        hb: dict[str, Any] = {}
        kinds_present = {t.finding.kind for t in ph.truths if t.instances}
        for task in CHEXLOCALIZE_TASKS:
            masks = [m for k in TASK_KINDS[task] for m in ph.truth(k)]
            if task == "Enlarged Cardiomediastinum" and "cardiomegaly" in kinds_present and ph.silhouette is not None:
                masks.append(ph.silhouette)
            polys = [p for m in masks for p in E.polygons_of(m)]
            if polys:
                ann[task] = polys
            gt = E.rasterize_polygons(polys, (h, w)) if polys else np.zeros((h, w), bool)
            seg[task] = E.coco_rle(gt)
            hb[task] = E.coco_rle(_human_reader(gt, hb_rng, ph.lungs))
        labels = {c: 0.0 for c in CHEXPERT_LABEL_COLUMNS}
        for task in CHEXLOCALIZE_TASKS:
            if task in ann:
                labels["Lung Opacity" if task == "Airspace Opacity" else task] = 1.0
        if "pneumonia" in kinds_present:
            labels["Pneumonia"] = 1.0
        if "fracture" in kinds_present:
            labels["Fracture"] = 1.0
        if not any(v == 1.0 for c, v in labels.items() if c not in ("No Finding", "Support Devices")):
            labels["No Finding"] = 1.0
        return {"ann": ann, "seg": seg, "hb": hb, "labels": labels,
                "provenance": provenance(job, ph, report=job.ids["uid"], image=f"CheXpert/{job.ids['rel']}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        counts: dict[str, Any] = {}
        for split in ("val", "test"):
            pairs = [(j, r) for j, r in zip(jobs, results) if j.split == split]
            gt_seg = {j.ids["cxr_id"]: r["seg"] for j, r in pairs if len(r["ann"]) > 1}
            gt_ann = {j.ids["cxr_id"]: r["ann"] for j, r in pairs if len(r["ann"]) > 1}
            E.atomic_write_text(root / "CheXlocalize" / f"gt_segmentations_{split}.json", json.dumps(gt_seg))
            E.atomic_write_text(root / "CheXlocalize" / f"gt_annotations_{split}.json", json.dumps(gt_ann))
            if split == "test":
                hb = {j.ids["cxr_id"]: r["hb"] for j, r in pairs}
                E.atomic_write_text(root / "CheXlocalize" / "hb_segmentations_test.json", json.dumps(hb))
                points = {}
                for j, r in pairs:  # a stream of its own per CXR: no other file depends on it
                    pts = _salient_points(r["hb"], np.random.default_rng([ctx.seed, self.code, 4242, j.index]))
                    if pts:
                        points[j.ids["cxr_id"]] = pts
                E.atomic_write_text(root / "CheXlocalize" / "hb_salient_pt_test.json", json.dumps(points))
            rows = [["Path", *CHEXPERT_LABEL_COLUMNS]]
            for j, r in pairs:
                rows.append([j.ids["rel"], *[csv_value(r["labels"][c]) for c in CHEXPERT_LABEL_COLUMNS]])
            E.atomic_write_text(root / "CheXpert" / f"{split}_labels.csv", csv_text(rows))
            counts[split] = len(pairs)
            counts[f"{split}_with_positive"] = len(gt_seg)
        return counts


def _salient_points(hb: dict[str, dict], rng: np.random.Generator) -> dict[str, list[list[float]]]:
    """The second reader's salient points: 1-3 per task it segmented, inside its own mask.

    Drawn after the fact from the written segmentations with a stream of their own, so the
    other files do not change. The reader's mask is shifted and resized from the truth, so
    some points miss; a task the reader left empty gets no entry (a miss on a positive).
    """
    from benchmark.demo.detmath import uniform
    from benchmark.geometry.rasterize import decode_rle

    out: dict[str, list[list[float]]] = {}
    for task in CHEXLOCALIZE_TASKS:
        mask = decode_rle(hb[task])
        ends = np.cumsum(np.count_nonzero(mask, axis=1))  # pixels up to the end of each row
        if ends[-1] == 0:
            continue
        picks = rng.integers(int(ends[-1]), size=int(rng.integers(1, 4)))
        points = []
        for k in picks:  # the k-th pixel of np.nonzero(mask), found without listing them all
            y = int(np.searchsorted(ends, k, side="right"))
            x = int(np.flatnonzero(mask[y])[k - (ends[y - 1] if y else 0)])
            points.append([round(float(x) + uniform(rng, 0.05, 0.95), 2),
                           round(float(y) + uniform(rng, 0.05, 0.95), 2)])
        out[task] = points
    return out


def _human_reader(gt: np.ndarray, rng: np.random.Generator, lungs: np.ndarray) -> np.ndarray:
    """A noisy second reader: boundaries grown or shrunk, shifted, sometimes a miss or a false positive."""
    import cv2

    from benchmark.demo.detmath import disk, normal

    h, w = gt.shape
    if not gt.any():
        if rng.random() < 0.03 and lungs.any():
            ys, xs = np.nonzero(lungs)
            k = int(rng.integers(len(xs)))
            out = np.zeros((h, w), np.uint8)
            cv2.circle(out, (int(xs[k]), int(ys[k])), max(3, int(0.04 * w)), 1, -1)
            return out.astype(bool)
        return gt
    if rng.random() < 0.08:
        return np.zeros((h, w), bool)
    r = int(round(abs(normal(rng, 0, 0.012)) * max(h, w))) + 1
    k = disk(r)
    m = gt.astype(np.uint8)
    m = cv2.dilate(m, k) if rng.random() < 0.55 else cv2.erode(m, k)  # min / max: exact
    dx, dy = int(round(normal(rng, 0, 0.012) * w)), int(round(normal(rng, 0, 0.012) * h))
    shifted = np.zeros_like(m)  # the mask moved by (dx, dy), zeros coming in
    shifted[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = m[max(0, -dy):h - max(0, dy),
                                                                     max(0, -dx):w - max(0, dx)]
    return shifted.astype(bool) if shifted.any() else gt
