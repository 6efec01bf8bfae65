"""The demo NIH ChestX-ray14 boxes writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo.findings import Finding
from benchmark.demo.material import boxes as real_boxes
from benchmark.demo.writer import DemoSet, Job, csv_text, provenance, sex_age, split_counts, unique_ints

NIH_WEIGHTS = {"Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltrate": 123, "Pneumonia": 120,
               "Pneumothorax": 98, "Mass": 85, "Nodule": 79}  # boxes per label in BBox_List_2017.csv
NIH_KIND = {"Atelectasis": "atelectasis", "Effusion": "effusion", "Cardiomegaly": "cardiomegaly",
            "Infiltrate": "infiltrate", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax", "Mass": "mass",
            "Nodule": "nodule"}
NIH_ENTRY_LABEL = {"Infiltrate": "Infiltration"}  # Data_Entry_2017 spells it so
NIH_SIDE = 768  # the real PNGs are 1024²; 768² keeps the demo light (boxes are in these pixels)


class NIHBBoxDemo(DemoSet):
    """NIH ChestX-ray14 box subset: one box per (image, label), placed from the real boxes of that label."""

    name, code, title = "nih_bbox", 15, "NIH ChestX-ray14 (bounding-box subset)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        table = real_boxes()
        labels = list(NIH_WEIGHTS)
        w = np.array([NIH_WEIGHTS[k] for k in labels], float)
        n = ctx.n_test
        patients = unique_ints(rng, n, 90_000_000, 99_999_999)
        jobs = []
        for i in range(n):
            fs, labs = [], []
            if rng.random() < 0.8:
                k = 1 + int(rng.random() < 0.1)
                for j in rng.choice(len(labels), size=k, replace=False, p=w / w.sum()):
                    lab = labels[int(j)]
                    rows = table[f"nih:{lab}"]
                    b = rows[int(rng.integers(len(rows)))]
                    kind = NIH_KIND[lab]
                    fs.append(Finding(kind, box=None if kind == "cardiomegaly" else tuple(float(v) for v in b)))
                    labs.append(lab)
            sex, age = sex_age(rng)
            name = f"{patients[i]:08d}_{int(rng.integers(0, 12)):03d}.png"
            jobs.append(Job(self.name, "test", i, (NIH_SIDE, NIH_SIDE), fs, view="PA" if rng.random() < 0.6 else "AP",
                            female=sex == "F", ids={"image": name, "patient": patients[i], "sex": sex, "age": age},
                            extra={"labels": labs}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female, attempts=8)
        E.write_png(root / "images" / job.ids["image"], ph.image)
        out = []
        for lab, t in zip(job.extra["labels"], ph.truths):
            if t.instances:
                out.append((lab, _union_box(t.instances)))
        return {"boxes": out, "provenance": provenance(job, ph, image=f"images/{job.ids['image']}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,\n"]
        entry = [["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                  "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]]
        for job, res in zip(jobs, results):
            for lab, b in res["boxes"]:
                lines.append(f"{job.ids['image']},{lab},{float(b[0])!r},{float(b[1])!r},{float(b[2])!r},{float(b[3])!r}\n")
            labs = [NIH_ENTRY_LABEL.get(lab, lab) for lab, _ in res["boxes"]]
            entry.append([job.ids["image"], "|".join(labs) or "No Finding", int(job.ids["image"][9:12]),
                          job.ids["patient"], job.ids["age"], job.ids["sex"], job.view, job.hw[1], job.hw[0],
                          0.143, 0.143])
        E.atomic_write_text(root / "BBox_List_2017.csv", "".join(lines))
        E.atomic_write_text(root / "Data_Entry_2017.csv", csv_text(entry))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['image']}\n" for j in jobs))
        counts = split_counts(jobs)
        counts["positive"] = sum(1 for r in results if r["boxes"])
        counts["boxes"] = sum(len(r["boxes"]) for r in results)
        return counts


def _union_box(masks: list[np.ndarray]) -> list[int]:
    from benchmark.demo.phantom import mask_box

    return mask_box(np.logical_or.reduce(masks))
