"""The demo DHMC LUAD writer: synthetic lung adenocarcinoma tiles in AFLoc's layout of the dataset."""

from __future__ import annotations

from benchmark.demo import encode as E
from benchmark.demo import histology as Hh
from benchmark.demo.writer import DemoSet, Job, csv_text

PATTERNS = ("solid", "lepidic", "acinar", "micropapillary", "papillary")
SIZE = 224


class DHMCLUADDemo(DemoSet):
    """``MetaData_Release_1.0.csv`` and ``images_224/DHMC_<nnnn>.tif`` (224² RGB TIFF, one per slide row),
    the five predominant patterns equally often."""

    name, code, title = "dhmc_luad", 23, "DHMC LUAD (predominant histologic pattern)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n = max(10, ctx.n_test // 4)
        order = rng.permutation(n)
        jobs = []
        for i in range(n):
            cls = PATTERNS[int(order[i]) % len(PATTERNS)]
            x40 = rng.random() < 0.7
            jobs.append(Job(self.name, "all", i, (SIZE, SIZE), [], ids={"file": f"DHMC_{i + 1:04d}.tif"},
                            extra={"class": cls, "kind": cls, "mpp": "0.2522" if x40 else "0.5040",
                                   "magnification": "40" if x40 else "20"}))
        return jobs

    def render(self, job, rng, root):
        tile = Hh.lung(rng, job.hw, job.extra["kind"], s=0.7)
        name = job.ids["file"]
        E.write_bytes(root / "images_224" / name, E.tiff_rgb_bytes(tile.rgb))
        return {"provenance": Hh.provenance(job, tile, image=f"images_224/{name}")}

    def write(self, ctx, jobs, results):
        root = ctx.out / self.name
        rows = [["File Name", "Class", "Microns Per Pixel", "Magnification"]]
        rows += [[j.ids["file"], j.extra["class"], j.extra["mpp"], j.extra["magnification"]] for j in jobs]
        E.atomic_write_text(root / "MetaData_Release_1.0.csv", csv_text(rows))
        return {"all": len(jobs), **{c: sum(1 for j in jobs if j.extra["class"] == c) for c in PATTERNS}}
