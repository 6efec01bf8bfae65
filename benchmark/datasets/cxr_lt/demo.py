"""The demo CXR-LT 2024 (tasks 2 and 3) writer: synthetic phantoms in the release's on-disk layout."""

from __future__ import annotations

from benchmark.datasets.cxr_lt.loader import LABEL_SETS, RELEASE_DIR
from benchmark.demo import encode as E
from benchmark.demo.findings import Finding
from benchmark.demo.writer import DemoSet, Job, csv_text, image_size, provenance, unique_ints

# What leads an abnormal image, in turn: (finding kind, options). Every task-2 class the phantom can draw
# leads some images; the large heart and the hilar mass give the task-3 classes Cardiomyopathy and Hilum.
LEADS = (("atelectasis", {}), ("cardiomegaly", {}), ("cardiomegaly", {"severity": "large"}), ("consolidation", {}),
         ("edema", {}), ("emphysema", {}), ("enlarged_cm", {}), ("fibrosis", {}), ("fracture", {}),
         ("infiltrate", {}), ("mass", {}), ("mass", {"zone": "hilar"}), ("nodule", {}), ("effusion", {}),
         ("pneumonia", {}), ("pneumothorax", {}), ("device", {}), ("opacity", {}), ("calcification", {}))
# findings added to an abnormal image (support devices are the commonest label of MIMIC-CXR)
EXTRAS = ("device", "device", "effusion", "atelectasis", "cardiomegaly", "opacity", "edema", "nodule")
# a drawn kind -> the task-2 columns it sets: Lung Opacity and Lung Lesion are the parents of the airspace
# kinds and of the round lesions (as CheXpert's labeler reads them); a calcified granuloma is a Lung Lesion only
T2_OF_KIND = {"atelectasis": ("Atelectasis", "Lung Opacity"), "cardiomegaly": ("Cardiomegaly",),
              "consolidation": ("Consolidation", "Lung Opacity"), "edema": ("Edema", "Lung Opacity"),
              "emphysema": ("Emphysema",), "enlarged_cm": ("Enlarged Cardiomediastinum",), "fibrosis": ("Fibrosis",),
              "fracture": ("Fracture",), "infiltrate": ("Infiltration", "Lung Opacity"),
              "mass": ("Mass", "Lung Lesion"), "nodule": ("Nodule", "Lung Lesion"),
              "calcification": ("Lung Lesion",), "effusion": ("Pleural Effusion",),
              "pneumonia": ("Pneumonia", "Lung Opacity"), "pneumothorax": ("Pneumothorax",),
              "device": ("Support Devices",), "opacity": ("Lung Opacity",)}
NORMAL_SHARE = 0.2  # images with no finding (task-2 column Normal)


def set_size(n_test: int) -> int:
    """Test images: about 50 at the default n_test, never fewer than 14."""
    return max(14, n_test // 4)


def t3_labels(f: Finding) -> tuple[str, ...]:
    """The task-3 columns a drawn finding sets: the emphysema phantom's upper-zone bulla, a large heart
    (the demo's stand-in for a cardiomyopathy) and a mass at the hilum. Osteopenia and Scoliosis are never drawn."""
    if f.kind == "emphysema":
        return ("Bulla",)
    if f.kind == "cardiomegaly" and f.severity == "large":
        return ("Cardiomyopathy",)
    if f.kind in ("mass", "nodule") and f.zone == "hilar":
        return ("Hilum",)
    return ()


class CXRLTDemo(DemoSet):
    """The gold-standard test images of tasks 2 and 3 (one image set, two label files), as MIMIC-CXR-JPG JPEGs."""

    name, code, title = "cxr_lt", 20, "CXR-LT 2024 (tasks 2 and 3)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n = set_size(ctx.n_test)
        normal = set(int(i) for i in rng.choice(n, size=int(round(NORMAL_SHARE * n)), replace=False))
        order = [LEADS[int(j)] for j in rng.permutation(len(LEADS))]
        subjects = unique_ints(rng, n, 10_000_000, 20_000_000)
        studies = unique_ints(rng, n, 50_000_000, 60_000_000)
        jobs = []
        k = 0
        for i in range(n):
            fs: list[Finding] = []
            if i not in normal:
                kind, opts = order[k % len(order)]
                k += 1
                fs.append(Finding(kind, **opts))
                for _ in range(int(rng.random() < 0.5) + int(rng.random() < 0.15)):
                    extra = EXTRAS[int(rng.integers(len(EXTRAS)))]
                    if all(f.kind != extra for f in fs):
                        fs.append(Finding(extra))
            view = "AP" if any(f.kind == "device" for f in fs) or rng.random() < 0.3 else "PA"
            subj, study = subjects[i], studies[i]
            dicom_id = E.det_hex_id(ctx.seed, self.name, i)
            fpath = f"files/p{str(subj)[:2]}/p{subj}/s{study}/{dicom_id}.jpg"
            jobs.append(Job(self.name, "test", i, image_size(rng, 480, 544, (0.82, 1.02)), fs, view=view,
                            ids={"subject_id": subj, "study_id": study, "dicom_id": dicom_id, "fpath": fpath}))
        return jobs

    def render(self, job, rng, root):
        from benchmark.demo.phantom import make

        ph = make(rng, job.hw, job.findings, view=job.view, female=job.female, attempts=8)
        E.write_jpg(root / job.ids["fpath"], ph.image)
        drawn = [t.finding for t in ph.truths if t.instances]
        t2 = {c for f in drawn for c in T2_OF_KIND[f.kind]}
        if not drawn:
            t2.add("Normal")
        t3 = {c for f in drawn for c in t3_labels(f)}
        return {"t2": sorted(t2), "t3": sorted(t3), "provenance": provenance(job, ph, image=job.ids["fpath"])}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name / RELEASE_DIR
        head = ["dicom_id", "subject_id", "study_id", "ViewPosition", "fpath"]
        counts = {"test": len(jobs)}
        for task, key in (("2", "t2"), ("3", "t3")):
            classes = LABEL_SETS[key]
            rows = [[*head, *classes]]
            for job, res in zip(jobs, results):
                ids = job.ids
                rows.append([ids["dicom_id"], ids["subject_id"], ids["study_id"], job.view, ids["fpath"],
                             *[int(c in res[key]) for c in classes]])
            E.atomic_write_text(root / f"test_labeled_task{task}.csv", csv_text(rows))
            counts[f"{key}_positive_labels"] = sum(len(r[key]) for r in results)
            counts[f"{key}_classes_present"] = len({c for r in results for c in r[key]})
        return counts
