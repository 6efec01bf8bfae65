"""One writer per benchmark dataset, each in the dataset's official on-disk layout.

Every set is planned in the parent process (which images, which findings, which real
report or real box, which identifiers), rendered image by image in worker processes
(``render``: draw, encode, compute the ground truth in the dataset's own form) and then
its tables are written by the parent in plan order (``write``). Randomness comes only from
generators seeded with ``(seed, set code, split, index)``, so output is independent of the
number of workers.

Folder names are the loaders' registry names; the layouts follow
``/datasets/demo/README.md`` (and the official distributions they copy).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo import reports as R
from benchmark.demo.findings import LEFT, RIGHT, Finding
from benchmark.demo.material import boxes as real_boxes
from benchmark.demo.material import reports as real_reports
from benchmark.demo.material import rsna_box_sets, siim_positive_rles

SPLIT_CODE = {"train": 1, "validate": 2, "val": 2, "test": 3}


@dataclass
class Job:
    dataset: str
    split: str
    index: int
    hw: tuple[int, int]
    findings: list[Finding]
    view: str = "PA"
    female: bool | None = None
    ids: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    out: Path
    seed: int
    n_train: int
    n_test: int


def job_rng(seed: int, code: int, job: Job) -> np.random.Generator:
    return np.random.default_rng([seed, code, SPLIT_CODE.get(job.split, 9), job.index])


def _size(rng, h_lo: int, h_hi: int, aspect: tuple[float, float]) -> tuple[int, int]:
    h = int(rng.integers(h_lo, h_hi + 1)) // 2 * 2
    w = int(round(h * rng.uniform(*aspect))) // 2 * 2
    return h, w


def _sex_age(rng) -> tuple[str, int]:
    return ("F" if rng.random() < 0.45 else "M"), int(np.clip(rng.normal(55, 17), 18, 95))


def _csv(rows: list[list[Any]]) -> str:
    """CSV text with minimal quoting (as pandas writes it), LF line ends."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if not float(v).is_integer() else f"{v:.1f}"
    return v


def _provenance(job: Job, ph, **extra) -> dict:
    return {
        "split": job.split, "index": job.index, "view": job.view, "lung_shape": ph.shape_name,
        "findings": [{"kind": t.finding.kind, "side": t.finding.side, "zone": t.finding.zone,
                      "severity": t.finding.severity, "device": t.finding.device,
                      "boxes": [[int(v) for v in b] for b in t.boxes()]} for t in ph.truths],
        "missing": list(ph.missing), **extra,
    }


def _unique_ints(rng, n: int, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    seen = set()
    while len(out) < n:
        v = int(rng.integers(lo, hi))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


class DemoSet:
    name = ""
    code = 0
    title = ""

    def plan(self, ctx: Context) -> list[Job]:
        raise NotImplementedError

    def render(self, job: Job, rng: np.random.Generator, root: Path) -> dict:
        raise NotImplementedError

    def write(self, ctx: Context, jobs: list[Job], results: list[dict]) -> dict:
        raise NotImplementedError

    def plan_rng(self, ctx: Context) -> np.random.Generator:
        return np.random.default_rng([ctx.seed, self.code, 7777])


def _not_normal_findings(rng) -> list[Finding]:
    """Findings of an abnormal image without lung opacity (RSNA 'No Lung Opacity / Not Normal')."""
    pool = [Finding("effusion", severity="small"), Finding("cardiomegaly"), Finding("device", device="cvc"),
            Finding("device", device="et_tube"), Finding("nodule"), Finding("hyperinflation"),
            Finding("elevated_diaphragm"), Finding("calcification"), Finding("device", device="pacemaker")]
    k = 1 + int(rng.random() < 0.3)
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[int(i)] for i in idx]


# =========================================================================== MIMIC-CXR (training)
class MimicCXR(DemoSet):
    """Image–report pairs in the MIMIC-CXR-JPG layout, one per real OpenI report."""

    name, code, title = "mimic_cxr", 11, "MIMIC-CXR-JPG (training pairs)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        reps = list(real_reports())
        order = rng.permutation(len(reps))
        n_val = max(1, ctx.n_train // 20) if ctx.n_train >= 20 else 0
        n = ctx.n_train + n_val
        subjects = _unique_ints(rng, n, 10_000_000, 20_000_000)
        studies = _unique_ints(rng, n, 50_000_000, 60_000_000)
        jobs = []
        for i in range(n):
            rep = reps[int(order[i % len(reps)])]
            split = "train" if i < ctx.n_train else "validate"
            text = f"{rep.indication} {rep.findings} {rep.impression}"
            view = "AP" if re.search(r"portable|\bAP\b|supine", text, re.I) else ("PA" if rng.random() < 0.7 else "AP")
            subj, study = subjects[i], studies[i]
            dicom_id = E.det_hex_id(ctx.seed, self.name, i)
            rel = f"files/p{str(subj)[:2]}/p{subj}/s{study}"
            jobs.append(Job(self.name, split, i, _size(rng, 460, 520, (0.82, 1.02)), R.findings_from_report(rep),
                            view=view, ids={"subject_id": subj, "study_id": study, "dicom_id": dicom_id,
                                            "image": f"{rel}/{dicom_id}.jpg", "report": f"{rel}.txt",
                                            "uid": rep.uid}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        rep = _report_by_uid(job.ids["uid"])
        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female)
        E.write_jpg(root / job.ids["image"], ph.image)
        E.write_bytes(root / job.ids["report"], R.mimic_text(rep, job.view).encode())
        labels = R.chexpert_labels([t.finding for t in ph.truths if t.instances or t.finding.kind == "device"],
                                   f"{rep.findings} {rep.impression}")
        return {"labels": labels, "provenance": _provenance(job, ph, report=rep.uid, image=job.ids["image"])}

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
            chex_rows.append([ids["subject_id"], ids["study_id"], *[_fmt(res["labels"][c]) for c in R.CHEXPERT_COLUMNS]])
        E.atomic_write_text(root / "mimic-cxr-2.0.0-split.csv", _csv(split_rows))
        E.atomic_write_text(root / "mimic-cxr-2.0.0-metadata.csv", _csv(meta_rows))
        E.atomic_write_text(root / "mimic-cxr-2.0.0-chexpert.csv", _csv(chex_rows))
        return _counts(jobs)


def _report_by_uid(uid: str):
    global _UID_INDEX
    if _UID_INDEX is None:
        _UID_INDEX = {r.uid: r for r in real_reports()}
    return _UID_INDEX[uid]


_UID_INDEX: dict | None = None


def _counts(jobs: list[Job]) -> dict:
    out: dict[str, int] = {}
    for j in jobs:
        out[j.split] = out.get(j.split, 0) + 1
    return out


# =========================================================================== MS-CXR
MSCXR_WEIGHTS = {"Pneumonia": 182, "Pneumothorax": 245, "Consolidation": 117, "Atelectasis": 61, "Edema": 46,
                 "Cardiomegaly": 333, "Lung Opacity": 82, "Pleural Effusion": 96}  # phrases per category, MS-CXR 1.0
MSCXR_CAT_IDS = {c: i + 1 for i, c in enumerate(sorted(MSCXR_WEIGHTS))}


class MSCXR(DemoSet):
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
        subjects = _unique_ints(rng, n, 10_000_000, 20_000_000)
        studies = _unique_ints(rng, n, 50_000_000, 60_000_000)
        # every category appears at least once when there is room
        seq = list(cats) if n >= len(cats) else []
        seq += [cats[int(k)] for k in rng.choice(len(cats), size=n - len(seq), p=w / w.sum())]
        seq = [seq[int(k)] for k in rng.permutation(len(seq))]
        jobs = []
        for i, cat in enumerate(seq):
            uid, phrase, f = pool[cat][used[cat] % len(pool[cat])]
            used[cat] += 1
            rep = _report_by_uid(uid)
            others = [g for g in R.findings_from_report(rep) if g.kind != f.kind and g.kind not in ("device",)]
            split = "test" if i < ctx.n_test else "val"
            subj, study = subjects[i], studies[i]
            dicom_id = E.det_hex_id(ctx.seed, self.name, i)
            path = f"files/p{str(subj)[:2]}/p{subj}/s{study}/{dicom_id}.jpg"
            jobs.append(Job(self.name, split, i, _size(rng, 720, 800, (0.82, 1.04)), [f, *others],
                            view="PA" if rng.random() < 0.6 else "AP",
                            ids={"dicom_id": dicom_id, "path": path, "uid": uid},
                            extra={"category": cat, "phrase": phrase}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, attempts=8)
        E.write_jpg(root / job.ids["path"], ph.image)
        boxes = ph.truths[0].boxes()
        return {"boxes": boxes, "provenance": _provenance(job, ph, report=job.ids["uid"], phrase=job.extra["phrase"],
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
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": MSCXR_CAT_IDS[job.extra["category"]],
                             "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0,
                             "width": w, "height": h, "label_text": job.extra["phrase"]})
        coco = {"info": {"description": "afloc-bench demo (synthetic images, real OpenI report phrases)",
                         "version": "1.1.0"},
                "images": images, "annotations": anns,
                "categories": [{"id": i, "name": c, "supercategory": "finding"} for c, i in MSCXR_CAT_IDS.items()]}
        E.atomic_write_text(root / "MS_CXR_Local_Alignment_v1.1.0.csv", _csv(rows))
        E.atomic_write_text(root / "MS_CXR_Local_Alignment_v1.1.0.json", json.dumps(coco, indent=1))
        for split in ("test", "val"):
            ids = [j.ids["dicom_id"] for j, r in zip(jobs, results) if j.split == split and r["boxes"]]
            E.atomic_write_text(root / "splits" / f"{split}.txt", "".join(f"{d}\n" for d in ids))
        counts = _counts([j for j, r in zip(jobs, results) if r["boxes"]])
        counts["boxes"] = len(anns)
        if skipped:
            counts["skipped"] = skipped
        return counts


# =========================================================================== RSNA Pneumonia
class RSNAPneumonia(DemoSet):
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
                fs, cls = _not_normal_findings(rng), "No Lung Opacity / Not Normal"
            view = "AP" if rng.random() < (0.65 if pos[i] else 0.40) else "PA"
            sex, age = _sex_age(rng)
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
        return {"boxes": boxes, "provenance": _provenance(job, ph, image=f"stage_2_train_images/{pid}.dcm")}

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
        E.atomic_write_text(root / "stage_2_train_labels.csv", _csv(rows))
        E.atomic_write_text(root / "stage_2_detailed_class_info.csv", _csv(cls_rows))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['patientId']}\n" for j in jobs))
        counts = _counts(jobs)
        counts["positive"] = sum(1 for r in results if r["boxes"])
        counts["boxes"] = sum(len(r["boxes"]) for r in results)
        return counts


# =========================================================================== SIIM-ACR
class SIIMPneumothorax(DemoSet):
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
                fs = [] if rng.random() < 0.5 else _not_normal_findings(rng)
            sex, age = _sex_age(rng)
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
        E.write_dicom(root / rel, ph.image, photometric=ids["photometric"], patient_id=E.det_uuid("siim", ids["ImageId"]),
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
        return {"rles": rles, "provenance": _provenance(job, ph, image=rel, photometric=ids["photometric"])}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        lines = ["ImageId, EncodedPixels\n"]
        for job, res in zip(jobs, results):
            for r in res["rles"] or ["-1"]:
                lines.append(f"{job.ids['ImageId']},{r}\n")
        E.atomic_write_text(root / "train-rle.csv", "".join(lines))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['ImageId']}\n" for j in jobs))
        counts = _counts(jobs)
        counts["positive"] = sum(1 for r in results if r["rles"])
        counts["multi_part_positive"] = sum(1 for r in results if len(r["rles"]) > 1)
        counts["monochrome1"] = sum(1 for j in jobs if j.ids["photometric"] == "MONOCHROME1")
        return counts


def _side_of_mask(m: np.ndarray) -> str:
    xs = np.nonzero(m)[1]
    return RIGHT if xs.mean() < m.shape[1] / 2 else LEFT


# =========================================================================== NIH ChestX-ray14 boxes
NIH_WEIGHTS = {"Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltrate": 123, "Pneumonia": 120,
               "Pneumothorax": 98, "Mass": 85, "Nodule": 79}  # boxes per label in BBox_List_2017.csv
NIH_KIND = {"Atelectasis": "atelectasis", "Effusion": "effusion", "Cardiomegaly": "cardiomegaly",
            "Infiltrate": "infiltrate", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax", "Mass": "mass",
            "Nodule": "nodule"}
NIH_ENTRY_LABEL = {"Infiltrate": "Infiltration"}  # Data_Entry_2017 spells it so
NIH_SIDE = 768  # the real PNGs are 1024²; 768² keeps the demo light (boxes are in these pixels)


class NIHBBox(DemoSet):
    """NIH ChestX-ray14 box subset: one box per (image, label), placed from the real boxes of that label."""

    name, code, title = "nih_bbox", 15, "NIH ChestX-ray14 (bounding-box subset)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        table = real_boxes()
        labels = list(NIH_WEIGHTS)
        w = np.array([NIH_WEIGHTS[k] for k in labels], float)
        n = ctx.n_test
        patients = _unique_ints(rng, n, 90_000_000, 99_999_999)
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
            sex, age = _sex_age(rng)
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
        return {"boxes": out, "provenance": _provenance(job, ph, image=f"images/{job.ids['image']}")}

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
        E.atomic_write_text(root / "Data_Entry_2017.csv", _csv(entry))
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['image']}\n" for j in jobs))
        counts = _counts(jobs)
        counts["positive"] = sum(1 for r in results if r["boxes"])
        counts["boxes"] = sum(len(r["boxes"]) for r in results)
        return counts


def _union_box(masks: list[np.ndarray]) -> list[int]:
    from benchmark.demo.phantom import mask_box

    return mask_box(np.logical_or.reduce(masks))


# =========================================================================== ChestX-Det10
DET10_WEIGHTS = {"Consolidation": 446, "Effusion": 372, "Nodule": 166, "Fibrosis": 120, "Fracture": 115,
                 "Calcification": 67, "Emphysema": 66, "Atelectasis": 51, "Pneumothorax": 42, "Mass": 31}  # test.json
DET10_KIND = {"Consolidation": "consolidation", "Effusion": "effusion", "Nodule": "nodule", "Fibrosis": "fibrosis",
              "Fracture": "fracture", "Calcification": "calcification", "Emphysema": "emphysema",
              "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Mass": "mass"}
DET10_SOURCE = {"Consolidation": "vindr:Consolidation", "Effusion": "nih:Effusion", "Nodule": "nih:Nodule",
                "Fibrosis": "vindr:Pulmonary fibrosis", "Atelectasis": "nih:Atelectasis", "Mass": "nih:Mass"}
# Calcification: VinDr's calcification boxes are mostly aortic, so calcified nodules are placed in the lungs


class ChestXDet10(DemoSet):
    """Ten-class boxes ``[x1, y1, x2, y2]``, one per lesion instance, PNG images."""

    name, code, title = "chestx_det10", 16, "ChestX-Det10"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        table = real_boxes()
        labels = list(DET10_WEIGHTS)
        w = np.array([DET10_WEIGHTS[k] for k in labels], float)
        n_train = max(2, ctx.n_test // 10)
        jobs = []
        numbers = _unique_ints(rng, ctx.n_test + n_train, 90_000, 99_999)
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
        return {"syms": syms, "boxes": bxs, "provenance": _provenance(job, ph, image=f"{folder}/{job.ids['file_name']}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        for split in ("train", "test"):
            entries = [{"file_name": j.ids["file_name"], "syms": r["syms"], "boxes": r["boxes"]}
                       for j, r in zip(jobs, results) if j.split == split]
            E.atomic_write_text(root / f"{split}.json", json.dumps(entries))
        counts = _counts(jobs)
        counts["boxes_test"] = sum(len(r["boxes"]) for j, r in zip(jobs, results) if j.split == "test")
        counts["positive_test"] = sum(1 for j, r in zip(jobs, results) if j.split == "test" and r["boxes"])
        return counts


def _box_of(m: np.ndarray) -> list[int]:
    from benchmark.demo.phantom import mask_box

    return mask_box(m)


# =========================================================================== COVID Rural
class COVIDRural(DemoSet):
    """Bilateral peripheral ground-glass opacity: JPG, PNG mask, LabelMe polygons."""

    name, code, title = "covid_rural", 17, "COVID-19-AR (COVID Rural) opacity annotations"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        patients = _unique_ints(rng, ctx.n_test, 16_000_000, 17_000_000)
        jobs = []
        for i in range(ctx.n_test):
            fs = [] if rng.random() < 0.1 else [Finding("covid", severity=str(rng.choice(["small", "moderate", "large"])))]
            month, day, year = int(rng.integers(3, 9)), int(rng.integers(1, 29)), 2020
            stem = f"COVID-19-AR-{patients[i]}_{month:02d}-{day:02d}-{year}-XR"
            jobs.append(Job(self.name, "test", i, _size(rng, 600, 800, (0.85, 1.2)), fs,
                            view="AP" if rng.random() < 0.7 else "PA", ids={"stem": stem}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, with_lungs=True, attempts=8)
        stem = job.ids["stem"]
        E.write_jpg(root / "jpgs" / f"{stem}.jpg", ph.image)
        shapes = []
        for side, label in ((RIGHT, "right_lung"), (LEFT, "left_lung")):
            for poly in E.polygons_of(ph.lung_sides[side]):
                shapes.append(_labelme_shape(label, poly))
        opacity_polys = [p for m in ph.truth("covid") for p in E.polygons_of(m)]
        for poly in opacity_polys:
            shapes.append(_labelme_shape("groud_glass_opacity", poly))
        mask = E.rasterize_polygons(opacity_polys, job.hw)
        E.write_png(root / "pngs_masks" / f"{stem}.png", (mask * 255).astype(np.uint8))
        h, w = job.hw
        labelme = {"version": "4.5.6", "flags": {}, "shapes": shapes, "imagePath": f"../{stem}.jpg",
                   "imageData": None, "imageHeight": h, "imageWidth": w}
        E.write_bytes(root / "jpgs" / "jsons" / f"{stem}.json", json.dumps(labelme, indent=2).encode())
        return {"positive": bool(mask.any()), "provenance": _provenance(job, ph, image=f"jpgs/{stem}.jpg")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['stem']}\n" for j in jobs))
        counts = _counts(jobs)
        counts["positive"] = sum(1 for r in results if r["positive"])
        return counts


def _labelme_shape(label: str, poly: list) -> dict:
    return {"label": label, "points": [[round(x, 2), round(y, 2)] for x, y in poly], "group_id": None,
            "shape_type": "polygon", "flags": {}}


# =========================================================================== CheXlocalize
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


class CheXlocalize(DemoSet):
    """Ten localization tasks on CheXpert-style images, val and test, RLE and polygons, human benchmark."""

    name, code, title = "chexlocalize", 18, "CheXlocalize"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        reps = real_reports()
        useful = [r for r in reps if any(any(f.kind in k for k in TASK_KINDS.values()) for f in R.findings_from_report(r))]
        normal = [r for r in reps if r.is_normal]
        n_val = max(2, int(round(0.35 * ctx.n_test)))
        jobs = []
        for split, n, first in (("val", n_val, 64541), ("test", ctx.n_test, 64741)):
            patient, study = first, 1
            for i in range(n):
                src = normal if rng.random() < 0.2 else useful
                rep = src[int(rng.integers(len(src)))]
                fs = R.findings_from_report(rep)
                cxr = f"patient{patient}_study{study}_view1_frontal"
                rel = f"{split}/patient{patient}/study{study}/view1_frontal.jpg"
                jobs.append(Job(self.name, split, len(jobs), _size(rng, 600, 800, (0.8, 1.22)), fs,
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
                "provenance": _provenance(job, ph, report=job.ids["uid"], image=f"CheXpert/{job.ids['rel']}")}

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
                rows.append([j.ids["rel"], *[_fmt(r["labels"][c]) for c in CHEXPERT_LABEL_COLUMNS]])
            E.atomic_write_text(root / "CheXpert" / f"{split}_labels.csv", _csv(rows))
            counts[split] = len(pairs)
            counts[f"{split}_with_positive"] = len(gt_seg)
        return counts


def _salient_points(hb: dict[str, dict], rng: np.random.Generator) -> dict[str, list[list[float]]]:
    """The second reader's salient points: 1-3 per task it segmented, inside its own mask.

    Drawn after the fact from the written segmentations with a stream of their own, so the
    other files do not change. The reader's mask is shifted and resized from the truth, so
    some points miss; a task the reader left empty gets no entry (a miss on a positive).
    """
    from benchmark.geometry.rasterize import decode_rle
    out: dict[str, list[list[float]]] = {}
    for task in CHEXLOCALIZE_TASKS:
        ys, xs = np.nonzero(decode_rle(hb[task]))
        if len(xs) == 0:
            continue
        picks = rng.integers(len(xs), size=int(rng.integers(1, 4)))
        out[task] = [[round(float(xs[k]) + float(rng.uniform(0.05, 0.95)), 2),
                      round(float(ys[k]) + float(rng.uniform(0.05, 0.95)), 2)] for k in picks]
    return out


def _human_reader(gt: np.ndarray, rng: np.random.Generator, lungs: np.ndarray) -> np.ndarray:
    """A noisy second reader: boundaries grown or shrunk, shifted, sometimes a miss or a false positive."""
    import cv2

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
    r = int(round(abs(rng.normal(0, 0.012)) * max(h, w))) + 1
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = gt.astype(np.uint8)
    m = cv2.dilate(m, k) if rng.random() < 0.55 else cv2.erode(m, k)
    dx, dy = (rng.normal(0, 0.012, 2) * np.array([w, h])).round().astype(int)
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    m = cv2.warpAffine(m, M, (w, h), flags=cv2.INTER_NEAREST)
    return m.astype(bool) if m.any() else gt


SETS: dict[str, DemoSet] = {s.name: s for s in (MimicCXR(), RSNAPneumonia(), MSCXR(), CheXlocalize(), COVIDRural(),
                                                SIIMPneumothorax(), ChestXDet10(), NIHBBox())}
