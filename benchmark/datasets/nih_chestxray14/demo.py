"""The demo NIH ChestX-ray14 (14 labels) writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np

from benchmark.datasets.nih_bbox.demo import NIH_SIDE
from benchmark.demo import encode as E
from benchmark.demo.findings import Finding
from benchmark.demo.writer import DemoSet, Job, csv_text, provenance, sex_age, unique_ints

# Data_Entry label -> the phantom finding that draws it. Pleural_Thickening and Hernia have no drawing, so
# no demo image carries them (their AUROC is undefined on the demo, as for any class without positives).
NIH14_KIND = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Effusion": "effusion",
              "Infiltration": "infiltrate", "Mass": "mass", "Nodule": "nodule", "Pneumonia": "pneumonia",
              "Pneumothorax": "pneumothorax", "Consolidation": "consolidation", "Edema": "edema",
              "Emphysema": "emphysema", "Fibrosis": "fibrosis"}
# images per label in Data_Entry_2017 (the real prevalence): the weights of the extra labels of an image
NIH14_WEIGHTS = {"Infiltration": 19894, "Effusion": 13317, "Atelectasis": 11559, "Nodule": 6331, "Mass": 5782,
                 "Pneumothorax": 5302, "Consolidation": 4667, "Cardiomegaly": 2776, "Emphysema": 2516,
                 "Edema": 2303, "Fibrosis": 1686, "Pneumonia": 1431}
NORMAL_SHARE = 0.2  # images with "No Finding"


def set_sizes(n_test: int) -> tuple[int, int]:
    """(test images, train_val images): about 50 + 10 at the default n_test, never fewer than 14 + 2."""
    n = max(14, n_test // 4)
    return n, max(2, n // 5)


class NIHChestXray14Demo(DemoSet):
    """Image-level labels for zero-shot classification: every drawable label leads some images (round robin),
    further labels follow the real prevalence; an image's labels are those actually drawn."""

    name, code, title = "nih_chestxray14", 19, "NIH ChestX-ray14 (14 image-level labels)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n_test, n_tv = set_sizes(ctx.n_test)
        labels = list(NIH14_WEIGHTS)
        w = np.array([NIH14_WEIGHTS[k] for k in labels], float)
        jobs = []
        patients = unique_ints(rng, n_test + n_tv, 80_000_000, 89_999_999)
        for split, n, first in (("test", n_test, 0), ("train_val", n_tv, n_test)):
            normal = set(int(i) for i in rng.choice(n, size=int(round(NORMAL_SHARE * n)), replace=False))
            lead = [labels[int(j)] for j in rng.permutation(len(labels))]
            k = 0
            prev = None
            for i in range(n):
                labs: list[str] = []
                if i not in normal:
                    labs.append(lead[k % len(lead)])
                    k += 1
                    extra = int(rng.random() < 0.4) + int(rng.random() < 0.1)
                    p = np.array([0.0 if lab in labs else x for lab, x in zip(labels, w)])
                    for j in rng.choice(len(labels), size=extra, replace=False, p=p / p.sum()):
                        labs.append(labels[int(j)])
                if prev is not None and rng.random() < 0.15:  # a follow-up image of the previous patient
                    patient, follow = prev[0], prev[1] + 1
                else:
                    patient, follow = patients[first + i], int(rng.integers(0, 12))
                prev = (patient, follow)
                sex, age = sex_age(rng)
                name = f"{patient:08d}_{follow:03d}.png"
                jobs.append(Job(self.name, split, first + i, (NIH_SIDE, NIH_SIDE),
                                [Finding(NIH14_KIND[lab]) for lab in labs],
                                view="PA" if rng.random() < 0.6 else "AP", female=sex == "F",
                                ids={"image": name, "patient": patient, "follow": follow, "sex": sex, "age": age},
                                extra={"labels": labs}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female, attempts=8)
        E.write_png(root / "images" / job.ids["image"], ph.image)
        drawn = sorted(lab for lab, t in zip(job.extra["labels"], ph.truths) if t.instances)
        return {"labels": drawn, "provenance": provenance(job, ph, image=f"images/{job.ids['image']}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        entry = [["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                  "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]]
        rows = sorted(zip(jobs, results), key=lambda jr: jr[0].ids["image"])
        for job, res in rows:
            entry.append([job.ids["image"], "|".join(res["labels"]) or "No Finding", job.ids["follow"],
                          job.ids["patient"], job.ids["age"], job.ids["sex"], job.view, job.hw[1], job.hw[0],
                          0.143, 0.143])
        E.atomic_write_text(root / "Data_Entry_2017.csv", csv_text(entry))
        for split, file in (("test", "test_list.txt"), ("train_val", "train_val_list.txt")):
            E.atomic_write_text(root / file, "".join(f"{j.ids['image']}\n" for j, _ in rows if j.split == split))
        counts = {s: sum(1 for j in jobs if j.split == s) for s in ("test", "train_val")}
        counts["all"] = len(jobs)
        counts["no_finding"] = sum(1 for r in results if not r["labels"])
        test = [r for j, r in zip(jobs, results) if j.split == "test"]
        counts["test_positive_labels"] = sum(len(r["labels"]) for r in test)
        counts["test_labels_present"] = len({lab for r in test for lab in r["labels"]})
        return counts
