"""The demo RSNA Pneumonia writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo.findings import Finding
from benchmark.demo.material import rsna_box_sets
from benchmark.demo.writer import DemoSet, Job, csv_text, not_normal_findings, provenance, sex_age, split_counts


class RSNAPneumoniaDemo(DemoSet):
    """Opacity boxes from real RSNA patients' box sets, 1024² DICOMs."""

    name, code, title = "rsna_pneumonia", 13, "RSNA Pneumonia Detection"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        sets = rsna_box_sets()
        n = ctx.n_test
        n_pos = int(round(0.5 * n))
        pos = np.zeros(n, bool)
        pos[rng.permutation(n)[:n_pos]] = True
        jobs = []
        for i in range(n):
            if pos[i]:
                bs = sets[int(rng.integers(len(sets)))]
                fs = [Finding("pneumonia", box=tuple(float(v) for v in b)) for b in bs]
                cls = "Lung Opacity"
            elif rng.random() < 0.43:
                fs, cls = [], "Normal"
            else:
                fs, cls = not_normal_findings(rng), "No Lung Opacity / Not Normal"
            view = "AP" if rng.random() < (0.65 if pos[i] else 0.40) else "PA"
            sex, age = sex_age(rng)
            pid = E.det_uuid(ctx.seed, self.name, i)
            jobs.append(Job(self.name, "test", i, (1024, 1024), fs, view=view, female=sex == "F",
                            ids={"patientId": pid, "sex": sex, "age": age}, extra={"class": cls}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female, attempts=8)
        pid = job.ids["patientId"]
        E.write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", ph.image, patient_id=pid,
                      study_uid=E.det_uid("rsna-study", pid), series_uid=E.det_uid("rsna-series", pid),
                      sop_uid=E.det_uid("rsna-sop", pid), view=job.view, sex=job.ids["sex"], age=job.ids["age"],
                      pixel_spacing=0.168 if job.view == "PA" else 0.139)
        boxes = [b for t in ph.truths if t.finding.kind == "pneumonia" for b in t.boxes()]
        return {"boxes": boxes, "provenance": provenance(job, ph, image=f"stage_2_train_images/{pid}.dcm")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        rows = [["patientId", "x", "y", "width", "height", "Target"]]
        cls_rows = [["patientId", "class"]]
        for job, res in zip(jobs, results):
            pid = job.ids["patientId"]
            cls = job.extra["class"]
            if res["boxes"]:
                for b in res["boxes"]:
                    rows.append([pid, *[f"{float(v):.1f}" for v in b], 1])
                    cls_rows.append([pid, "Lung Opacity"])
            else:
                rows.append([pid, "", "", "", "", 0])
                cls_rows.append([pid, cls if cls != "Lung Opacity" else "No Lung Opacity / Not Normal"])
        E.atomic_write_text(root / "stage_2_train_labels.csv", csv_text(rows))
        E.atomic_write_text(root / "stage_2_detailed_class_info.csv", csv_text(cls_rows))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['patientId']}\n" for j in jobs))
        counts = split_counts(jobs)
        counts["positive"] = sum(1 for r in results if r["boxes"])
        counts["boxes"] = sum(len(r["boxes"]) for r in results)
        return counts
