"""The demo MIMIC-CXR (training pairs) writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import re

from benchmark.demo import encode as E
from benchmark.demo import reports as R
from benchmark.demo.material import reports as real_reports
from benchmark.demo.writer import (
    DemoSet,
    Job,
    csv_text,
    csv_value,
    image_size,
    provenance,
    report_by_uid,
    split_counts,
    unique_ints,
)


class MimicCXRDemo(DemoSet):
    """Image–report pairs in the MIMIC-CXR-JPG layout, one per real OpenI report."""

    name, code, title = "mimic_cxr", 11, "MIMIC-CXR-JPG (training pairs)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        reps = list(real_reports())
        order = rng.permutation(len(reps))
        n_val = max(1, ctx.n_train // 20) if ctx.n_train >= 20 else 0
        n = ctx.n_train + n_val
        subjects = unique_ints(rng, n, 10_000_000, 20_000_000)
        studies = unique_ints(rng, n, 50_000_000, 60_000_000)
        jobs = []
        for i in range(n):
            rep = reps[int(order[i % len(reps)])]
            split = "train" if i < ctx.n_train else "validate"
            text = f"{rep.indication} {rep.findings} {rep.impression}"
            view = "AP" if re.search(r"portable|\bAP\b|supine", text, re.I) else ("PA" if rng.random() < 0.7 else "AP")
            subj, study = subjects[i], studies[i]
            dicom_id = E.det_hex_id(ctx.seed, self.name, i)
            rel = f"files/p{str(subj)[:2]}/p{subj}/s{study}"
            jobs.append(Job(self.name, split, i, image_size(rng, 460, 520, (0.82, 1.02)), R.findings_from_report(rep),
                            view=view, ids={"subject_id": subj, "study_id": study, "dicom_id": dicom_id,
                                            "image": f"{rel}/{dicom_id}.jpg", "report": f"{rel}.txt",
                                            "uid": rep.uid}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        rep = report_by_uid(job.ids["uid"])
        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female)
        E.write_jpg(root / job.ids["image"], ph.image)
        E.write_bytes(root / job.ids["report"], R.mimic_text(rep, job.view).encode())
        labels = R.chexpert_labels([t.finding for t in ph.truths if t.instances or t.finding.kind == "device"],
                                   f"{rep.findings} {rep.impression}")
        return {"labels": labels, "provenance": provenance(job, ph, report=rep.uid, image=job.ids["image"])}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        split_rows = [["dicom_id", "study_id", "subject_id", "split"]]
        meta_rows = [["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                      "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                      "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]]
        chex_rows = [["subject_id", "study_id", *R.CHEXPERT_COLUMNS]]
        for job, res in zip(jobs, results):
            ids = job.ids
            split_rows.append([ids["dicom_id"], ids["study_id"], ids["subject_id"], job.split])
            desc = "CHEST (PA AND LAT)" if job.view == "PA" else "CHEST (PORTABLE AP)"
            view_meaning = "postero-anterior" if job.view == "PA" else "antero-posterior"
            date = 21000101 + (job.index % 28)
            meta_rows.append([ids["dicom_id"], ids["subject_id"], ids["study_id"], desc, job.view, job.hw[0], job.hw[1],
                              date, f"{(job.index * 7919) % 240000:06d}.000", desc, view_meaning, "Erect"])
            chex_rows.append([ids["subject_id"], ids["study_id"],
                              *[csv_value(res["labels"][c]) for c in R.CHEXPERT_COLUMNS]])
        E.atomic_write_text(root / "mimic-cxr-2.0.0-split.csv", csv_text(split_rows))
        E.atomic_write_text(root / "mimic-cxr-2.0.0-metadata.csv", csv_text(meta_rows))
        E.atomic_write_text(root / "mimic-cxr-2.0.0-chexpert.csv", csv_text(chex_rows))
        return split_counts(jobs)
