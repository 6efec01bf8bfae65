"""The demo WSSS4LUAD writer: synthetic lung tiles in the dataset's official on-disk layout."""

from __future__ import annotations

from benchmark.demo import encode as E
from benchmark.demo import histology as Hh
from benchmark.demo.writer import DemoSet, Job, unique_ints

# class -> (file-name vector [tumor, stroma, normal], what the tile shows)
SINGLE = {"tumor": ((1, 0, 0), "lung_tumor"), "stroma": ((0, 1, 0), "tumor_stroma"),
          "normal": ((0, 0, 1), "normal_lung")}
MULTI = (((1, 1, 0), ["tumor_stroma", "lung_tumor"]), ((0, 1, 1), ["normal_lung", "tumor_stroma"]),
         ((1, 0, 1), ["normal_lung", "lung_tumor"]), ((1, 1, 1), ["normal_lung", "tumor_stroma", "lung_tumor"]))


class WSSS4LUADDemo(DemoSet):
    """``1.training/<slide>-<x>-<y>-[a, b, c].png`` patches (224-320 px): tumour, stroma and normal lung
    equally often, plus about 10 % multi-label patches (which the loader excludes)."""

    name, code, title = "wsss4luad", 22, "WSSS4LUAD (lung adenocarcinoma tissue patches)"

    def plan(self, ctx):
        rng = self.plan_rng(ctx)
        n_single = max(6, ctx.n_test * 3 // 10)
        n_multi = max(2, n_single // 10)
        order = rng.permutation(n_single)
        classes = list(SINGLE)
        slides = unique_ints(rng, max(2, (n_single + n_multi) // 8), 100_000, 999_999)
        jobs = []
        for i in range(n_single + n_multi):
            if i < n_single:
                cls = classes[int(order[i]) % 3]
                vec, kinds = SINGLE[cls][0], [SINGLE[cls][1]]
            else:
                cls = "multi"
                vec, kinds = MULTI[int(rng.integers(len(MULTI)))]
            h, w = (int(rng.integers(112, 161)) * 2 for _ in range(2))
            slide = slides[int(rng.integers(len(slides)))]
            stem = f"{slide}-{int(rng.integers(1_000, 60_000))}-{int(rng.integers(1_000, 60_000))}-{list(vec)}"
            jobs.append(Job(self.name, "train", i, (h, w), [], ids={"file": f"{stem}.png"},
                            extra={"class": cls, "kind": "+".join(kinds), "kinds": kinds, "vector": list(vec)}))
        return jobs

    def render(self, job, rng, root):
        kinds = job.extra["kinds"]
        tile = Hh.render(rng, kinds[0], job.hw, 0.8) if len(kinds) == 1 else Hh.mixed(rng, job.hw, kinds, 0.8)
        name = job.ids["file"]
        E.write_bytes(root / "1.training" / name, E.png_rgb_bytes(tile.rgb))
        return {"provenance": Hh.provenance(job, tile, image=f"1.training/{name}", vector=job.extra["vector"])}

    def write(self, ctx, jobs, results):
        single = [j for j in jobs if j.extra["class"] != "multi"]
        counts = {"train": len(single), **{c: sum(1 for j in single if j.extra["class"] == c) for c in SINGLE}}
        counts["multi_label"] = len(jobs) - len(single)
        return counts
