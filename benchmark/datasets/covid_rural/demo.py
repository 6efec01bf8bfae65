"""The demo COVID Rural writer: synthetic phantoms in the dataset's official on-disk layout."""

from __future__ import annotations

import json

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo.findings import LEFT, RIGHT, Finding
from benchmark.demo.writer import DemoSet, Job, image_size, provenance, split_counts, unique_ints


class COVIDRuralDemo(DemoSet):
    """Bilateral peripheral ground-glass opacity: JPG, PNG mask, LabelMe polygons."""

    name, code, title = "covid_rural", 17, "COVID-19-AR (COVID Rural) opacity annotations"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        patients = unique_ints(rng, ctx.n_test, 16_000_000, 17_000_000)
        jobs = []
        for i in range(ctx.n_test):
            fs = ([] if rng.random() < 0.1
                  else [Finding("covid", severity=str(rng.choice(["small", "moderate", "large"])))])
            month, day, year = int(rng.integers(3, 9)), int(rng.integers(1, 29)), 2020
            stem = f"COVID-19-AR-{patients[i]}_{month:02d}-{day:02d}-{year}-XR"
            jobs.append(Job(self.name, "test", i, image_size(rng, 600, 800, (0.85, 1.2)), fs,
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
        return {"positive": bool(mask.any()), "provenance": provenance(job, ph, image=f"jpgs/{stem}.jpg")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        E.atomic_write_text(root / "splits" / "test.txt", "".join(f"{j.ids['stem']}\n" for j in jobs))
        counts = split_counts(jobs)
        counts["positive"] = sum(1 for r in results if r["positive"])
        return counts


def _labelme_shape(label: str, poly: list) -> dict:
    return {"label": label, "points": [[round(x, 2), round(y, 2)] for x, y in poly], "group_id": None,
            "shape_type": "polygon", "flags": {}}
