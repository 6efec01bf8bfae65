"""The demo SICAPv2 writer: synthetic prostate tiles in the dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np

from benchmark.demo import encode as E
from benchmark.demo import histology as Hh
from benchmark.demo.writer import DemoSet, Job, unique_ints

GRADES = (("NC", "benign"), ("G3", "g3"), ("G4", "g4"), ("G5", "g5"))
SIZE = 512


class SICAPv2Demo(DemoSet):
    """512² JPEG patches with Gleason-region JPEG masks and ``partition/Test/Test.xlsx``; one grade per
    patch, the four classes equally often, half of the G4 patches cribriform (``G4C``)."""

    name, code, title = "sicapv2", 21, "SICAPv2 (prostate Gleason patterns)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n = max(8, ctx.n_test * 3 // 10)
        order = rng.permutation(n)
        patients = [f"{int(rng.integers(16, 19))}B{v:07d}" for v in unique_ints(rng, max(2, n // 6), 1_000, 9_999_999)]
        jobs = []
        for i in range(n):
            cls, kind = GRADES[int(order[i]) % 4]
            if kind == "g4" and rng.random() < 0.5:
                kind = "g4c"
            pid = patients[int(rng.integers(len(patients)))]
            x, y = int(rng.integers(1_000, 90_000)), int(rng.integers(1_000, 90_000))
            stem = (f"{pid}_Block_Region_{int(rng.integers(1, 12))}_{int(rng.integers(0, 20))}_"
                    f"{int(rng.integers(0, 20))}_xini_{x}_yini_{y}")
            jobs.append(Job(self.name, "test", i, (SIZE, SIZE), [], ids={"image_name": f"{stem}.jpg"},
                            extra={"class": cls, "kind": kind}))
        return jobs

    def render(self, job, rng, root):
        tile = Hh.prostate(rng, job.hw, job.extra["kind"], s=1.0)
        name = job.ids["image_name"]
        mask = np.zeros(job.hw, bool) if tile.region is None else Hh.block_mask(tile.region)
        E.write_bytes(root / "images" / name, E.jpeg_rgb_bytes(tile.rgb, 90))
        E.write_bytes(root / "masks" / name, E.jpeg_bytes(mask.astype(np.uint8) * 255, 100))
        n_on = int(np.count_nonzero(mask))
        return {"mask_pixels": n_on, "provenance": Hh.provenance(job, tile, image=f"images/{name}", mask_pixels=n_on)}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        rows = [["image_name", "NC", "G3", "G4", "G5", "G4C"]]
        for job in jobs:
            cls = job.extra["class"]
            rows.append([job.ids["image_name"], *(int(cls == c) for c, _ in GRADES), int(job.extra["kind"] == "g4c")])
        E.write_bytes(root / "partition" / "Test" / "Test.xlsx", E.xlsx_bytes(rows))
        counts = {"test": len(jobs), **{c: sum(1 for j in jobs if j.extra["class"] == c) for c, _ in GRADES}}
        counts["G4C"] = sum(1 for j in jobs if j.extra["kind"] == "g4c")
        counts["masks_non_empty"] = sum(1 for r in results if r["mask_pixels"])
        return counts
