"""The demo MS-CXR writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import json

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo import reports as R
from benchmark.demo.material import reports as real_reports
from benchmark.demo.writer import (
    DemoSet,
    Job,
    csv_text,
    image_size,
    provenance,
    report_by_uid,
    split_counts,
    unique_ints,
)

MSCXR_WEIGHTS = {"Pneumonia": 182, "Pneumothorax": 245, "Consolidation": 117, "Atelectasis": 61, "Edema": 46,
                 "Cardiomegaly": 333, "Lung Opacity": 82, "Pleural Effusion": 96}  # phrases per category, MS-CXR 1.0
MSCXR_CAT_IDS = {c: i + 1 for i, c in enumerate(sorted(MSCXR_WEIGHTS))}


class MSCXRDemo(DemoSet):
    """Phrase grounding: one real report sentence per image, its boxes around the drawn finding."""

    name, code, title = "ms_cxr", 12, "MS-CXR (phrase grounding)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        pool: dict[str, list] = {c: [] for c in MSCXR_WEIGHTS}
        for rep in real_reports():
            for cat, phrase, f in R.phrases(rep):
                pool[cat].append((rep.uid, phrase, f))
        cats = [c for c in MSCXR_WEIGHTS if pool[c]]
        w = np.array([MSCXR_WEIGHTS[c] for c in cats], float)
        for c in cats:
            order = rng.permutation(len(pool[c]))
            pool[c] = [pool[c][int(k)] for k in order]
        used = {c: 0 for c in cats}
        n_val = max(1, ctx.n_test // 5)
        n = ctx.n_test + n_val
        subjects = unique_ints(rng, n, 10_000_000, 20_000_000)
        studies = unique_ints(rng, n, 50_000_000, 60_000_000)
        # every category appears at least once when there is room
        seq = list(cats) if n >= len(cats) else []
        seq += [cats[int(k)] for k in rng.choice(len(cats), size=n - len(seq), p=w / w.sum())]
        seq = [seq[int(k)] for k in rng.permutation(len(seq))]
        jobs = []
        for i, cat in enumerate(seq):
            uid, phrase, f = pool[cat][used[cat] % len(pool[cat])]
            used[cat] += 1
            rep = report_by_uid(uid)
            others = [g for g in R.findings_from_report(rep) if g.kind != f.kind and g.kind not in ("device",)]
            split = "test" if i < ctx.n_test else "val"
            subj, study = subjects[i], studies[i]
            dicom_id = E.det_hex_id(ctx.seed, self.name, i)
            path = f"files/p{str(subj)[:2]}/p{subj}/s{study}/{dicom_id}.jpg"
            jobs.append(Job(self.name, split, i, image_size(rng, 720, 800, (0.82, 1.04)), [f, *others],
                            view="PA" if rng.random() < 0.6 else "AP",
                            ids={"dicom_id": dicom_id, "path": path, "uid": uid},
                            extra={"category": cat, "phrase": phrase}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, attempts=8)
        E.write_jpg(root / job.ids["path"], ph.image)
        boxes = ph.truths[0].boxes()
        return {"boxes": boxes, "provenance": provenance(job, ph, report=job.ids["uid"], phrase=job.extra["phrase"],
                                                          image=job.ids["path"])}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        rows = [["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height",
                 "split"]]
        images, anns = [], []
        skipped = []
        for job, res in zip(jobs, results):
            if not res["boxes"]:
                skipped.append({"image": job.ids["path"], "reason": "finding could not be placed"})
                continue
            h, w = job.hw
            img_id = len(images) + 1
            images.append({"id": img_id, "file_name": f"{job.ids['dicom_id']}.jpg", "path": job.ids["path"],
                           "width": w, "height": h})
            for b in res["boxes"]:
                rows.append([job.ids["dicom_id"], job.extra["category"], job.extra["phrase"], job.ids["path"],
                             *[int(v) for v in b], w, h, job.split])
                anns.append({"id": len(anns) + 1, "image_id": img_id,
                             "category_id": MSCXR_CAT_IDS[job.extra["category"]],
                             "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0,
                             "width": w, "height": h, "label_text": job.extra["phrase"]})
        coco = {"info": {"description": "afloc-bench demo (synthetic images, real OpenI report phrases)",
                         "version": "1.1.0"},
                "images": images, "annotations": anns,
                "categories": [{"id": i, "name": c, "supercategory": "finding"} for c, i in MSCXR_CAT_IDS.items()]}
        E.atomic_write_text(root / "MS_CXR_Local_Alignment_v1.1.0.csv", csv_text(rows))
        E.atomic_write_text(root / "MS_CXR_Local_Alignment_v1.1.0.json", json.dumps(coco, indent=1))
        for split in ("test", "val"):
            ids = [j.ids["dicom_id"] for j, r in zip(jobs, results) if j.split == split and r["boxes"]]
            E.atomic_write_text(root / "splits" / f"{split}.txt", "".join(f"{d}\n" for d in ids))
        counts = split_counts([j for j, r in zip(jobs, results) if r["boxes"]])
        counts["boxes"] = len(anns)
        if skipped:
            counts["skipped"] = skipped
        return counts
