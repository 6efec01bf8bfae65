"""A contact sheet of generated phantoms with their ground truth and report text, read back
from the written files (so it also shows that the official formats decode as intended)."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np

from benchmark.io.images import read_image


def _boxes_rect(ax, boxes, color, labels=None):
    from matplotlib.patches import Rectangle

    for i, (x, y, w, h) in enumerate(boxes):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.2))
        if labels:
            ax.text(x, y - 4, labels[i], color=color, fontsize=5, va="bottom")


def _contours(ax, mask, color):
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.9)


def _mimic(root: Path, k: int):
    prov = _provenance(root, "mimic_cxr")
    out = []
    for p in [p for p in prov if p["findings"]][: k - 1] + [p for p in prov if not p["findings"]][:1]:
        img = read_image(root / "mimic_cxr" / p["image"])
        txt = (root / "mimic_cxr" / p["image"]).parent.with_suffix(".txt").read_text()
        body = " ".join(txt.split("FINDINGS:")[-1].split())
        boxes = [b for f in p["findings"] for b in f["boxes"]]
        labels = [f"{f['kind']} {f['side'] or ''}".strip() for f in p["findings"] for _ in f["boxes"]]
        out.append(("mimic_cxr (train)", img, lambda ax, b=boxes, lab=labels: _boxes_rect(ax, b, "yellow", lab), body))
    return out


def _provenance(root: Path, name: str) -> list[dict]:
    path = root / "provenance" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _rsna(root: Path, k: int):
    d = root / "rsna_pneumonia"
    rows = list(csv.DictReader(open(d / "stage_2_train_labels.csv")))
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["patientId"], [])
        if r["Target"] == "1":
            by[r["patientId"]].append([float(r[c]) for c in ("x", "y", "width", "height")])
    pids = [p for p in by if by[p]][: k - 1] + [p for p in by if not by[p]][:1]
    return [("rsna_pneumonia", read_image(d / "stage_2_train_images" / f"{p}.dcm"),
             lambda ax, b=by[p]: _boxes_rect(ax, b, "red"), "Lung Opacity" if by[p] else "negative") for p in pids]


def _mscxr(root: Path, k: int):
    d = root / "ms_cxr"
    rows = list(csv.DictReader(open(d / "MS_CXR_Local_Alignment_v1.1.0.csv")))
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["path"], []).append(r)
    out = []
    for path, rs in list(by.items())[:k]:
        b = [[float(r[c]) for c in "xywh"] for r in rs]
        out.append(("ms_cxr", read_image(d / path), lambda ax, b=b: _boxes_rect(ax, b, "cyan"),
                    f"[{rs[0]['category_name']}] {rs[0]['label_text']}"))
    return out


def _chexlocalize(root: Path, k: int):
    from pycocotools import mask as mu

    d = root / "chexlocalize"
    seg = json.loads((d / "CheXlocalize" / "gt_segmentations_test.json").read_text())
    out = []
    colors = ["red", "orange", "yellow", "lime", "cyan", "magenta", "white", "pink", "violet", "gold"]
    for cxr, tasks in list(seg.items())[:k]:
        p, s, v = cxr.split("_")[:3]
        img = read_image(d / "CheXpert" / "test" / p / s / f"{v}_frontal.jpg")
        pos = [(t, mu.decode(r)) for t, r in tasks.items() if mu.area(r) > 0]

        def draw(ax, pos=pos):
            for i, (_t, m) in enumerate(pos):
                _contours(ax, m, colors[i % len(colors)])

        out.append(("chexlocalize", img, draw, ", ".join(t for t, _ in pos)))
    return out


def _covid(root: Path, k: int):
    d = root / "covid_rural"
    out = []
    for jp in sorted((d / "jpgs").glob("*.jpg"))[:k]:
        m = read_image(d / "pngs_masks" / f"{jp.stem}.png") > 0
        out.append(("covid_rural", read_image(jp), lambda ax, m=m: _contours(ax, m, "red"),
                    "ground-glass opacity" if m.any() else "no opacity"))
    return out


def _siim(root: Path, k: int):
    from benchmark.demo.material import decode_relative_rle

    d = root / "siim_pneumothorax"
    lines = (d / "train-rle.csv").read_text().splitlines()[1:]
    by: dict[str, list] = {}
    for ln in lines:
        i, r = ln.split(",", 1)
        by.setdefault(i, []).append(r.strip())
    paths = {p.stem: p for p in (d / "dicom-images-train").rglob("*.dcm")}
    ids = [i for i in by if by[i][0] != "-1"][: k - 1] + [i for i in by if by[i][0] == "-1"][:1]
    out = []
    for i in ids:
        import pydicom

        ds = pydicom.dcmread(paths[i], stop_before_pixels=True)
        h, w = int(ds.Rows), int(ds.Columns)
        m = np.zeros((h, w), bool)
        for r in by[i]:
            if r != "-1":
                m |= decode_relative_rle(r, h, w)
        out.append(("siim_pneumothorax", read_image(paths[i]), lambda ax, m=m: _contours(ax, m, "red"),
                    f"{len(by[i]) if by[i][0] != '-1' else 0} mask row(s), {ds.PhotometricInterpretation}"))
    return out


def _det10(root: Path, k: int):
    d = root / "chestx_det10"
    entries = json.loads((d / "test.json").read_text())
    out = []
    for e in [e for e in entries if e["boxes"]][:k]:
        b = [[x1, y1, x2 - x1 + 1, y2 - y1 + 1] for x1, y1, x2, y2 in e["boxes"]]
        out.append(("chestx_det10", read_image(d / "test_data" / e["file_name"]),
                    lambda ax, b=b, s=e["syms"]: _boxes_rect(ax, b, "lime", s), ", ".join(e["syms"])))
    return out


def _nih(root: Path, k: int):
    d = root / "nih_bbox"
    lines = (d / "BBox_List_2017.csv").read_text().splitlines()[1:]
    by: dict[str, list] = {}
    for ln in lines:
        parts = ln.split(",")
        by.setdefault(parts[0], []).append((parts[1], [float(v) for v in parts[2:6]]))
    out = []
    for img, items in list(by.items())[:k]:
        out.append(("nih_bbox", read_image(d / "images" / img),
                    lambda ax, it=items: _boxes_rect(ax, [b for _, b in it], "orange", [lab for lab, _ in it]),
                    ", ".join(lab for lab, _ in items)))
    return out


def _via_loader(name: str, loader: str):
    """Images of one demo set read back through its real loader: the class (or the caption) under each
    image and the mask contour where there is one (the pathology and classification sets)."""

    def read(root: Path, k: int):
        from benchmark.registry import datasets

        ds = datasets.get(loader)(root / name)
        seen: dict[str, object] = {}
        for s in ds.samples():
            if s.image_id not in seen and (s.label is None or s.label == 1):
                seen[s.image_id] = s
        out = []
        for s in list(seen.values())[:: max(1, len(seen) // k)][:k]:
            mask = read_image(s.mask_paths[0]) > 0 if s.mask_paths else None
            prompts = s.prompts or {}
            text = str(prompts.get("simple") or prompts.get("report") or s.category)
            out.append((f"{name} · {s.category}" if s.category else name, read_image(s.image_path, "cv2-rgb"),
                        lambda ax, m=mask: _contours(ax, m, "lime"), text))
        return out

    return read


READERS = {"mimic_cxr": _mimic, "rsna_pneumonia": _rsna, "ms_cxr": _mscxr, "chexlocalize": _chexlocalize,
           "covid_rural": _covid, "siim_pneumothorax": _siim, "chestx_det10": _det10, "nih_bbox": _nih,
           "sicapv2": _via_loader("sicapv2", "demo_sicapv2"), "wsss4luad": _via_loader("wsss4luad", "demo_wsss4luad"),
           "dhmc_luad": _via_loader("dhmc_luad", "demo_dhmc_luad"), "quilt1m": _via_loader("quilt1m", "demo_quilt1m"),
           "nih_chestxray14": _via_loader("nih_chestxray14", "demo_nih_chestxray14"),
           "cxr_lt": _via_loader("cxr_lt", "demo_cxr_lt")}


def contact_sheet(root: str | Path, out_png: str | Path, *, per_dataset: int = 4, datasets=None) -> Path:
    """Draw ``per_dataset`` images of each generated dataset with ground truth and text into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    names = [n for n in (datasets or READERS) if (root / n).is_dir()]
    cells = []
    for n in names:
        cells += READERS[n](root, per_dataset)
    if not cells:
        raise FileNotFoundError(f"{root}: no generated demo dataset to preview")
    cols = per_dataset
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img, draw, text) in zip(axes.ravel(), cells):
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=255)
        draw(ax)
        ax.set_title(title, fontsize=7)
        ax.text(0.0, -0.02, "\n".join(textwrap.wrap(text, 60)[:4]), transform=ax.transAxes, fontsize=5, va="top")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
