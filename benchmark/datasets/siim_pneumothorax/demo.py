"""The demo SIIM-ACR Pneumothorax writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo.findings import LEFT, RIGHT, Finding
from benchmark.demo.material import siim_positive_rles
from benchmark.demo.writer import DemoSet, Job, not_normal_findings, provenance, sex_age, split_counts


class SIIMPneumothoraxDemo(DemoSet):
    """Pneumothorax shaped by real SIIM masks; relative column-major RLE, DICOM in study/series folders."""

    name, code, title = "siim_pneumothorax", 14, "SIIM-ACR Pneumothorax Segmentation"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n_real = len(siim_positive_rles())
        n = ctx.n_test
        n_pos = int(round(0.45 * n))
        pos = np.zeros(n, bool)
        pos[rng.permutation(n)[:n_pos]] = True
        first_pos = int(np.argmax(pos)) if pos.any() else -1
        jobs = []
        for i in range(n):
            if pos[i]:
                fs = [Finding("pneumothorax", siim=int(rng.integers(n_real)))]
                # a second, separate pneumothorax gives several rows for one image (always in the first positive)
                if rng.random() < 0.15 or i == first_pos:
                    fs.append(Finding("pneumothorax", severity="small"))
            else:
                fs = [] if rng.random() < 0.5 else not_normal_findings(rng)
            sex, age = sex_age(rng)
            sop = E.det_uid(ctx.seed, self.name, "sop", i)
            jobs.append(Job(self.name, "test", i, (1024, 1024), fs, view="PA" if rng.random() < 0.6 else "AP",
                            female=sex == "F",
                            ids={"ImageId": sop, "study": E.det_uid(ctx.seed, self.name, "study", i),
                                 "series": E.det_uid(ctx.seed, self.name, "series", i), "sex": sex, "age": age,
                                 "photometric": "MONOCHROME1" if (rng.random() < 0.2 or i == 1) else "MONOCHROME2"}))
        return jobs

    def render(self, job, rng, root):
        import cv2

        from benchmark.demo.phantom import make

        fs = list(job.findings)
        if len(fs) == 2:  # the second pneumothorax goes to the other lung, decided after the first is placed
            fs[1] = Finding("pneumothorax", severity="small", side="__other__")
        ph = None
        for _ in range(6):
            first = make(rng, job.hw, fs[:1], view=job.view, female=job.female, attempts=4) if len(fs) == 2 else None
            if first is not None:
                side1 = _side_of_mask(first.truths[0].mask) if first.truths[0].instances else RIGHT
                other = LEFT if side1 == RIGHT else RIGHT
                fs[1] = Finding("pneumothorax", severity="small", side=other)
            ph = make(rng, job.hw, fs, view=job.view, female=job.female, attempts=4)
            if not ph.missing:
                break
        ids = job.ids
        rel = f"dicom-images-train/{ids['study']}/{ids['series']}/{ids['ImageId']}.dcm"
        E.write_dicom(root / rel, ph.image, photometric=ids["photometric"],
                      patient_id=E.det_uuid("siim", ids["ImageId"]),
                      study_uid=ids["study"], series_uid=ids["series"], sop_uid=ids["ImageId"], view=job.view,
                      sex=ids["sex"], age=ids["age"], pixel_spacing=0.143)
        rles = []
        union = np.zeros(job.hw, bool)
        for t in ph.truths:
            if t.finding.kind == "pneumothorax":
                for m in t.instances:
                    union |= m
        if union.any():
            # one row per separate pneumothorax: fragments of one (a thin rim cut by the lung edge) are grouped
            near = cv2.dilate(union.astype(np.uint8), np.ones((15, 15), np.uint8))
            n, lab = cv2.connectedComponents(near, connectivity=8)
            parts = sorted((union & (lab == k) for k in range(1, n)), key=lambda m: -int(m.sum()))
            for tiny in [m for m in parts[1:] if m.sum() < 16]:  # specks join the largest part
                parts[0] = parts[0] | tiny
            parts = [parts[0]] + [m for m in parts[1:] if m.sum() >= 16]
            rles = [E.siim_rle(m) for m in parts]
        return {"rles": rles, "provenance": provenance(job, ph, image=rel, photometric=ids["photometric"])}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        lines = ["ImageId, EncodedPixels\n"]
        for job, res in zip(jobs, results):
            for r in res["rles"] or ["-1"]:
                lines.append(f"{job.ids['ImageId']},{r}\n")
        E.atomic_write_text(root / "train-rle.csv", "".join(lines))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['ImageId']}\n" for j in jobs))
        counts = split_counts(jobs)
        counts["positive"] = sum(1 for r in results if r["rles"])
        counts["multi_part_positive"] = sum(1 for r in results if len(r["rles"]) > 1)
        counts["monochrome1"] = sum(1 for j in jobs if j.ids["photometric"] == "MONOCHROME1")
        return counts


def _side_of_mask(m: np.ndarray) -> str:
    xs = np.nonzero(m)[1]
    return RIGHT if xs.mean() < m.shape[1] / 2 else LEFT
