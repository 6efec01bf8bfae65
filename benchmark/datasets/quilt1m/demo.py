"""The demo Quilt-1M writer: synthetic H&E tiles with captions in Quilt's style, in the release's layout."""

from __future__ import annotations

from benchmark.demo import encode as E
from benchmark.demo import histology as Hh
from benchmark.demo.writer import DemoSet, Job, csv_text

COLUMNS = ["", "caption", "image_path", "subset", "split", "pathology", "roi_text", "noisy_text", "corrected_text",
           "med_umls_ids", "magnification", "height", "width"]
# what each kind of tile is called, and details a narrator points at (all of them drawn)
TEXT = {
    "benign": ("benign prostate tissue", ["benign prostatic glands", "large glands with papillary infoldings",
                                         "a two-cell layer with basal cells", "open lumens",
                                         "fibromuscular stroma between the glands", "no atypia"]),
    "g3": ("prostatic adenocarcinoma, gleason pattern 3", ["small well-formed glands", "crowded discrete glands",
                                                          "enlarged nuclei with prominent nucleoli",
                                                          "glands infiltrating between benign ones", "round lumens"]),
    "g4": ("prostatic adenocarcinoma, gleason pattern 4", ["fused glands", "poorly formed glands",
                                                          "glands merging into each other", "slit-like lumens",
                                                          "nuclear atypia"]),
    "g4c": ("cribriform prostatic adenocarcinoma, gleason pattern 4", ["cribriform glands",
                                                                      "punched-out lumens in a sheet of cells",
                                                                      "large expansile nests", "nuclear atypia"]),
    "g5": ("high-grade prostatic adenocarcinoma, gleason pattern 5", ["solid sheets of tumor cells",
                                                                     "no gland formation",
                                                                     "pleomorphic hyperchromatic nuclei",
                                                                     "a very high nuclear density"]),
    "normal_lung": ("normal lung parenchyma", ["thin alveolar septa", "open air spaces", "alveolar macrophages",
                                               "capillaries in the septa", "no atypia"]),
    "tumor_stroma": ("tumor-associated stroma", ["desmoplastic fibrous stroma", "spindle-shaped fibroblasts",
                                                 "scattered lymphocytes", "wavy collagen fibers"]),
    "lepidic": ("lepidic adenocarcinoma of the lung", ["tumor cells lining intact alveolar walls",
                                                       "preserved alveolar architecture", "hobnail cells",
                                                       "no invasion of the stroma"]),
    "acinar": ("acinar adenocarcinoma of the lung", ["gland formation", "back-to-back glands with central lumens",
                                                     "desmoplastic stroma", "enlarged atypical nuclei"]),
    "papillary": ("papillary adenocarcinoma of the lung", ["branching fibrovascular cores",
                                                           "tumor cells lining the papillae",
                                                           "finger-like projections", "red cells in the cores"]),
    "micropapillary": ("micropapillary adenocarcinoma of the lung", ["small tufts of tumor cells",
                                                                     "floating in alveolar spaces",
                                                                     "no fibrovascular cores",
                                                                     "clear halos around the tufts"]),
    "solid": ("solid adenocarcinoma of the lung", ["sheets of polygonal tumor cells", "no glands or papillae",
                                                   "abundant pink cytoplasm", "large nuclei with nucleoli"]),
}
KINDS = tuple(TEXT) + ("lung_tumor",)
ORGAN = {"prostate": "['Genitourinary']", "lung": "['Pulmonary']"}
OPENERS = ("here we see", "so this is", "in this image we can see", "what you see here is", "this is",
           "and here you can appreciate", "now looking at this, we have", "okay so this is")
POWER = {0.65: ("10", "at low power"), 0.85: ("20", "at medium power"), 1.05: ("40", "at high power")}


def _pick(rng, seq, k=1):
    idx = rng.permutation(len(seq))[:k]
    return [seq[int(i)] for i in sorted(idx)]


def caption(rng, kind: str, info: dict, power: str, subset: str) -> dict:
    """Caption columns of one pair: what was drawn (the kind and some of its details), in Quilt's
    narrated style (``quilt``), a figure legend (``pubmed``) or a short post (``openpath``)."""
    if kind == "lung_tumor":
        kind = info.get("pattern", "solid")
    name, details = TEXT[kind]
    feats = _pick(rng, details, 2 if rng.random() < 0.6 else 1)
    if kind == "g5" and info.get("necrosis"):
        feats.append("central comedonecrosis")
    if subset == "pubmed":
        text = f"{name[0].upper()}{name[1:]}, showing {' and '.join(feats)} (H&E, {power[0]}x)."
    elif subset == "openpath":
        tag = "#GUPath" if kind in ("benign", "g3", "g4", "g4c", "g5") else "#PulmPath"
        text = f"{name[0].upper()}{name[1:]}: {', '.join(feats)}. #pathology {tag}"
    else:
        op = OPENERS[int(rng.integers(len(OPENERS)))]
        text = f"{op} {name} {power[1]}, with {' and '.join(feats)}"
        shown = [f for f in details if f not in feats and not f.startswith(("no ", "a ", "floating"))]
        if rng.random() < 0.4 and shown:
            text += f", and notice the {shown[int(rng.integers(len(shown)))]}"
    noisy = text.lower().replace("gleason", "gleeson").replace(",", "")
    return {"caption": text, "roi_text": "; ".join(feats), "noisy_text": f"uh {noisy}", "corrected_text": text}


class Quilt1MDemo(DemoSet):
    """``quilt_1M_lookup.csv`` and ``quilt_1m/<image_path>`` JPEGs (224-256 px): prostate and lung tiles of
    every demo kind with captions naming what is drawn; 10 % of images have a second caption, 5 % are ``val``."""

    name, code, title = "quilt1m", 24, "Quilt-1M (histopathology image-text pairs)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n = max(16, ctx.n_train * 3 // 10)
        n_val = max(1, n // 20)
        jobs = []
        for i in range(n):
            kind = KINDS[(i + int(rng.integers(len(KINDS)))) % len(KINDS)]
            scale = sorted(POWER)[int(rng.integers(len(POWER)))]
            u = rng.random()
            subset = "quilt" if u < 0.85 else ("pubmed" if u < 0.95 else "openpath")
            h, w = (int(rng.integers(112, 129)) * 2 for _ in range(2))
            video = E.det_hex_id(ctx.seed, self.name, i).replace("-", "")[:11]
            path = f"{video}_image_{E.det_uuid(ctx.seed, self.name, 'image', i)}.jpg"
            jobs.append(Job(self.name, "train" if i < n - n_val else "val", i, (h, w), [],
                            ids={"image_path": path},
                            extra={"kind": kind, "scale": scale, "subset": subset,
                                   "captions": 2 if rng.random() < 0.1 else 1}))
        return jobs

    def render(self, job, rng, root):
        kind, scale = job.extra["kind"], job.extra["scale"]
        tile = Hh.render(rng, kind, job.hw, scale)
        path = job.ids["image_path"]
        E.write_bytes(root / "quilt_1m" / path, E.jpeg_rgb_bytes(tile.rgb, 90))
        caps = [caption(rng, kind, tile.info, POWER[scale], job.extra["subset"]) for _ in range(job.extra["captions"])]
        return {"captions": caps, "organ": tile.info["organ"],
                "provenance": Hh.provenance(job, tile, image=f"quilt_1m/{path}", captions=[c["caption"] for c in caps])}

    def write(self, ctx, jobs, results):
        rows = [COLUMNS]
        for job, res in zip(jobs, results):
            for cap in res["captions"]:
                rows.append([len(rows) - 1, cap["caption"], job.ids["image_path"], job.extra["subset"], job.split,
                             ORGAN[res["organ"]], cap["roi_text"], cap["noisy_text"], cap["corrected_text"], "[]",
                             POWER[job.extra["scale"]][0], job.hw[0], job.hw[1]])
        E.atomic_write_text(ctx.out / self.name / "quilt_1M_lookup.csv", csv_text(rows))
        counts = {sp: sum(1 for j in jobs if j.split == sp) for sp in ("train", "val")}
        counts["pairs"] = len(rows) - 1
        return counts
