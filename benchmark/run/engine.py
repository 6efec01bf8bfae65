"""The runner: every model on every dataset through one protocol, with run records.

Order of work for one run:
1. resolve names (unknown names fail here, before anything heavy loads);
2. load datasets (cheap) and generate the demo data if a demo set is asked for and absent;
3. for each (dataset, model) pair: heatmaps / scores (cached by content), per-sample
   records through the protocol, pooled summaries with bootstrap CIs;
4. write ``samples/…parquet`` and ``pairs/…json`` as each pair finishes, and
   ``results.json`` after every pair, so an interrupted run resumes with ``--skip-existing``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from benchmark import __version__
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, build_adapter
from benchmark.cache import ArrayCache, cache_key, checkpoint_sha256, file_sha256
from benchmark.dataset import DataError, Dataset, build_dataset, cache_home, demo_root, is_demo
from benchmark.protocols.base import Protocol, resolve_protocol
from benchmark.records import (
    SCHEMA_VERSION,
    atomic_write_json,
    atomic_write_text,
    environment,
    git_commit,
    nan_to_none,
    now_iso,
    record_stem,
    write_parquet_atomic,
)
from benchmark.registry import RegistryError
from benchmark.registry import datasets as dataset_registry
from benchmark.registry import models as model_registry
from benchmark.sample import Sample

log = logging.getLogger("afloc_bench.runner")

TASK_CAPABILITY = {"grounding": GROUNDING, "classification": ZEROSHOT_CLS}


@dataclass
class RunConfig:
    """Everything that defines a run. YAML keys and CLI flags map onto these fields."""

    models: list[str] = field(default_factory=lambda: ["all"])
    datasets: list[str] = field(default_factory=lambda: ["demo"])
    protocol: str = "afloc-compat@1"
    n_boot: int = 1000
    seed: int = 0
    ckpt: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_root: str | None = None
    device: str = "auto"
    batch_size: int = 16
    num_workers: int | None = None
    limit: int | None = None
    output: str | None = None
    skip_existing: bool = False
    cache: bool = True
    cache_dir: str | None = None
    prompt_set: str = "simple"
    split: str | None = None
    save_heatmaps: int = 8
    quiet: bool = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        data = {k.replace("-", "_"): v for k, v in (data or {}).items()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        cfg = cls()
        for k, v in data.items():
            setattr(cfg, k, v)
        cfg.normalise()
        return cfg

    def override(self, **flags: Any) -> "RunConfig":
        """Flags given on the command line (not None) win over the YAML values."""
        for k, v in flags.items():
            if v is not None:
                setattr(self, k, v)
        self.normalise()
        return self

    def normalise(self) -> None:
        for name in ("models", "datasets"):
            val = getattr(self, name)
            if isinstance(val, str):
                setattr(self, name, [p.strip() for p in val.split(",") if p.strip()])
        if isinstance(self.ckpt, (list, tuple)):
            self.ckpt = parse_assignments(self.ckpt, "--ckpt")
        self.n_boot, self.seed, self.batch_size = int(self.n_boot), int(self.seed), int(self.batch_size)
        if self.limit is not None:
            self.limit = int(self.limit)
            if self.limit <= 0:
                raise ValueError("--limit must be a positive number of samples")
        if self.n_boot < 0:
            raise ValueError("--n-boot must be >= 0")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be a positive number of images")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ValueError("--num-workers must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_assignments(items: Iterable[str], flag: str) -> dict[str, str]:
    """``["afloc=/p/a.ckpt", ...]`` → dict; a malformed item names the flag."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects MODEL=PATH, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a YAML mapping of run options, got {type(data).__name__}")
    return data


def choose_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu. A named ``cuda[:N]`` that torch cannot see
    is an error here, before any model loads."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if device == "cpu":
        return device
    try:
        import torch
    except ImportError:
        torch = None
    if device == "auto":
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    n = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    index = device.partition(":")[2]
    if n == 0:
        raise ValueError(f"--device {device}: torch sees no CUDA device (torch.cuda.is_available() is False); "
                         "use cpu or auto")
    if index and (not index.isdigit() or int(index) >= n):
        raise ValueError(f"--device {device}: torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return device


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# ---------------------------------------------------------------------------
@dataclass
class PairPlan:
    dataset: str
    model: str
    tasks: list[str]
    reason: str = ""


class Runner:
    def __init__(self, config: RunConfig):
        self.cfg = config
        self.models = model_registry.resolve(config.models)
        self.datasets = dataset_registry.resolve(config.datasets)
        self.protocol: Protocol = resolve_protocol(config.protocol)
        for name in self.cfg.ckpt:
            if name not in self.models:
                raise RegistryError(f"--ckpt given for {name!r}, which is not among the models of this run "
                                    f"({', '.join(self.models)})")
        self.device = choose_device(config.device)
        self.out = Path(config.output) if config.output else default_output_dir()
        self.cache = ArrayCache(Path(config.cache_dir) if config.cache_dir else cache_home() / "arrays",
                                enabled=config.cache)
        self.progress = not config.quiet and sys.stderr.isatty()
        self._datasets: dict[str, Dataset] = {}
        self._adapters: dict[str, Adapter] = {}
        self._image_shas: dict[str, str] = {}

    # -- planning ---------------------------------------------------------
    def check_models(self) -> list[str]:
        """Models that need a checkpoint and have none: an error if named, skipped if from a group."""
        problems = []
        explicit = set(i for spec in self.cfg.models for i in str(spec).split(","))
        for m in self.models:
            if model_registry.entry(m).get("needs_checkpoint", False) and m not in self.cfg.ckpt:
                if m in explicit:
                    raise RegistryError(f"model {m!r} needs a checkpoint: pass --ckpt {m}=PATH")
                problems.append(m)
        return problems

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            if is_demo(name):
                ensure_demo_data()
            overrides = {"split": self.cfg.split} if self.cfg.split else {}
            self._datasets[name] = build_dataset(name, self.cfg.data_root, **overrides)
        return self._datasets[name]

    def plan(self) -> list[PairPlan]:
        no_ckpt = set(self.check_models())
        plans = []
        for d in self.datasets:
            card_tasks = list(dataset_registry.entry(d).capabilities)
            for m in self.models:
                caps = set(model_registry.entry(m).capabilities)
                tasks = [t for t in card_tasks if t in self.protocol.tasks and TASK_CAPABILITY.get(t) in caps]
                reason = ""
                if m in no_ckpt:
                    tasks, reason = [], "needs a checkpoint (--ckpt MODEL=PATH)"
                elif not tasks:
                    reason = (f"no shared task: dataset {card_tasks}, model {sorted(caps)}, "
                              f"protocol {list(self.protocol.tasks)}")
                plans.append(PairPlan(d, m, tasks, reason))
        return plans

    # -- the run ------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plans = self.plan()
        self.out.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_text(self.out / "config.resolved.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=True))
        atomic_write_json(self.out / "env.json", environment(self.device))
        state = self._new_results()
        skipped_models: dict[tuple[str, str], list[str]] = {}
        for plan in plans:
            if not plan.tasks:
                state["skipped_pairs"].append({"dataset": plan.dataset, "model": plan.model, "reason": plan.reason})
                skipped_models.setdefault((plan.model, plan.reason), []).append(plan.dataset)
        for (model, reason), names in skipped_models.items():
            log.warning("skipping %s on %d dataset(s) (%s): %s", model, len(names), ", ".join(names), reason)
        for plan in plans:
            if not plan.tasks:
                continue
            pair = self._run_pair(plan, state)
            state["results"].setdefault(plan.dataset, {})[plan.model] = pair["rows"]
            atomic_write_json(self.out / "results.json", nan_to_none(state))
        atomic_write_json(self.out / "results.json", nan_to_none(state))
        return state

    def _new_results(self) -> dict[str, Any]:
        git = git_commit()
        return {
            "schema_version": SCHEMA_VERSION,
            "harness_version": __version__,
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
            "date": now_iso(),
            "config": self.cfg.to_dict(),
            "limit": self.cfg.limit,
            "device": self.device,
            "protocol": self.protocol.describe(),
            "datasets": {},
            "models": {},
            "results": {},
            "skipped_pairs": [],
        }

    def _dataset_record(self, name: str, ds: Dataset, samples: list[Sample]) -> dict[str, Any]:
        h = hashlib.sha256()
        p = hashlib.sha256()
        root = Path(ds.root).resolve()
        for s in samples:
            h.update(json.dumps([s.sample_id, s.category, s.label, s.boxes, s.polygons,
                                 [r.get("counts") if isinstance(r.get("counts"), str) else str(r.get("counts"))
                                  for r in s.rles], [_under_root(m, root) for m in s.mask_paths]],
                                default=str).encode())
            p.update(s.prompt(self.cfg.prompt_set).encode() + b"\0")
        card = ds.card
        return {
            "name": name,
            "loader": card.name,
            "card_version": card.version,
            "root": str(ds.root),
            "split": ds.split,
            "demo": is_demo(name),
            "resampling_unit": card.resampling_unit,
            "n_samples_total": len(ds.samples()),
            "n_samples_used": len(samples),
            "n_skipped": len(ds.skipped),
            "skipped": ds.skipped[:100],
            "sample_hash": h.hexdigest(),
            "prompt_set": self.cfg.prompt_set,
            "prompt_hash": p.hexdigest(),
        }

    def _adapter(self, name: str) -> Adapter:
        if name not in self._adapters:
            adapter = build_adapter(name)
            adapter.options.update(self.cfg.model_options.get(name, {}))
            ckpt = self.cfg.ckpt.get(name)
            adapter.load(ckpt, self.device)
            self._adapters[name] = adapter
        return self._adapters[name]

    def _model_record(self, name: str, adapter: Adapter) -> dict[str, Any]:
        ckpt = self.cfg.ckpt.get(name) or getattr(adapter, "checkpoint", None)
        rec = adapter.describe()
        rec["checkpoint"] = str(ckpt) if ckpt else None
        rec["checkpoint_sha256"] = checkpoint_sha256(ckpt) if ckpt else None
        return rec

    def _pair_fingerprint(self, plan: PairPlan, ds_rec: dict[str, Any]) -> str:
        entry = model_registry.entry(plan.model)
        ckpt = self.cfg.ckpt.get(plan.model)
        payload = {"protocol": self.protocol.id, "n_boot": self.cfg.n_boot, "seed": self.cfg.seed,
                   "limit": self.cfg.limit, "ckpt": ckpt,
                   "model_options": self.cfg.model_options.get(plan.model, {}), "registered": entry.options,
                   "sample_hash": ds_rec["sample_hash"], "prompt_hash": ds_rec["prompt_hash"],
                   "harness": __version__, "tasks": plan.tasks,
                   "default_weights": None if ckpt else entry.get("demo_weights")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _run_pair(self, plan: PairPlan, state: dict[str, Any]) -> dict[str, Any]:
        import pandas as pd

        ds = self.dataset(plan.dataset)
        samples = ds.samples()
        if self.cfg.limit is not None:
            samples = samples[: self.cfg.limit]
        ds_rec = self._dataset_record(plan.dataset, ds, samples)
        state["datasets"][plan.dataset] = ds_rec
        stem = record_stem(plan.dataset, plan.model)
        pair_path = self.out / "pairs" / f"{stem}.json"
        fingerprint = self._pair_fingerprint(plan, ds_rec)
        if self.cfg.skip_existing and pair_path.is_file():
            old = json.loads(pair_path.read_text())
            if old.get("fingerprint") == fingerprint and (self.out / "samples" / f"{stem}.parquet").is_file():
                log.info("skip-existing: %s on %s already done", plan.model, plan.dataset)
                state["models"][plan.model] = old["model"]
                return old
        adapter = self._adapter(plan.model)
        state["models"][plan.model] = self._model_record(plan.model, adapter)
        t0 = time.time()
        frames, rows, run_skips, used_params = [], [], [], {}
        unit = ds.card.resampling_unit
        for task in plan.tasks:
            records, skipped = self._records(task, adapter, samples, plan)
            run_skips.extend(skipped)
            if records.empty:
                continue
            params: dict[str, Any] = {"prompt_set": self.cfg.prompt_set}
            needs_tuning = self.protocol.needs_tuning_for(samples) if hasattr(self.protocol, "needs_tuning_for") \
                else bool(self.protocol.tuning_split)
            if needs_tuning and task == "grounding":
                params.update(self._tune(plan, adapter, task))
            summary = self.protocol.summarize(records, task, n_boot=self.cfg.n_boot, seed=self.cfg.seed,
                                              unit=unit, params=params)
            used_params[task] = params
            rows.extend({"task": task, **r} for r in summary)
            frames.append(records)
        # the adapter's own counters (e.g. unmatched human-benchmark entries) are final only now;
        # an adapter reused across datasets reports its running totals
        state["models"][plan.model] = self._model_record(plan.model, adapter)
        if frames:
            write_parquet_atomic(pd.concat(frames, ignore_index=True), self.out / "samples" / f"{stem}.parquet")
        pair = {"dataset": plan.dataset, "model": plan.model, "fingerprint": fingerprint, "tasks": plan.tasks,
                "rows": nan_to_none(rows), "protocol_params": nan_to_none(used_params), "model_record": state["models"][plan.model],
                "model": state["models"][plan.model], "n_run_skipped": len(run_skips),
                "run_skipped": run_skips[:100], "seconds": round(time.time() - t0, 3),
                "cache": {"hits": self.cache.hits, "misses": self.cache.misses}}
        ds_rec["n_run_skipped"] = ds_rec.get("n_run_skipped", 0) + len(run_skips)
        atomic_write_json(pair_path, pair)
        if run_skips:
            log.warning("%s on %s: %d sample(s) skipped at run time (see results.json)", plan.model, plan.dataset,
                        len(run_skips))
        return pair

    def _tune(self, plan: PairPlan, adapter: Adapter, task: str) -> dict[str, Any]:
        split = self.protocol.tuning_split
        entry = dataset_registry.entry(plan.dataset)
        tune_ds = entry.load()(root=self.dataset(plan.dataset).root, **{**entry.options, "split": split})
        samples = tune_ds.samples()
        records, _ = self._records(task, adapter, samples, plan)
        params = self.protocol.tune(records)
        log.info("tuned %s on %s/%s: %s", self.protocol.id, plan.dataset, split, params)
        return params

    # -- per-sample records ----------------------------------------------------
    def _records(self, task: str, adapter: Adapter, samples: list[Sample], plan: PairPlan):
        import pandas as pd

        if task == "grounding":
            negatives = self.protocol.uses_negatives_for(samples) if hasattr(self.protocol, "uses_negatives_for") \
                else getattr(self.protocol, "uses_negatives", False)
            wanted = [s for s in samples if s.has_localization or (negatives and s.label is not None)]
            wanted, refused = self._supported(adapter, wanted, plan, task)
            values, skipped = self._grounding(adapter, wanted, plan)
        else:
            wanted = [s for s in samples if s.label is not None]
            wanted, refused = self._supported(adapter, wanted, plan, task)
            values, skipped = self._classification(adapter, wanted, plan)
        skipped = refused + skipped
        rows = []
        for s, rec in values:
            base = {"sample_id": s.sample_id, "image_id": s.image_id, "patient_id": s.patient_id,
                    "category": s.category, "label": s.label, "split": s.split, "task": task}
            base.update(rec)
            rows.append(base)
        return pd.DataFrame(rows), skipped

    def _supported(self, adapter: Adapter, samples: list[Sample], plan: PairPlan, task: str):
        """Samples whose prompt the model can answer, and a skip entry for each of the others.

        A model with a fixed label set (a classifier behind Grad-CAM) cannot score a finding it has
        no output for; the optional hook ``adapter.unsupported_prompt(prompt) -> reason | None``
        says so, and those samples are counted as skipped instead of stopping the run."""
        check = getattr(adapter, "unsupported_prompt", None)
        if check is None:
            return samples, []
        reasons: dict[str, str | None] = {}
        keep, refused, cats = [], [], set()
        for s in samples:
            prompt = s.prompt(self.cfg.prompt_set) if task == "grounding" \
                else classification_prompts(plan.dataset, s.category)[0][0]
            if prompt not in reasons:
                reasons[prompt] = check(prompt)
            if reasons[prompt] is None:
                keep.append(s)
            else:
                refused.append({"sample_id": s.sample_id, "path": s.image_path,
                                "reason": f"{plan.model} cannot score this prompt: {reasons[prompt]}"})
                cats.add(str(s.category))
        if refused:
            log.warning("%s on %s (%s): %d sample(s) skipped, no model output for %s", plan.model, plan.dataset,
                        task, len(refused), ", ".join(sorted(cats)))
        return keep, refused

    def _image_sha(self, path: str) -> str:
        if path not in self._image_shas:
            self._image_shas[path] = file_sha256(path)
        return self._image_shas[path]

    def _iter_images(self, adapter: Adapter, paths: list[str], desc: str):
        """Yield (batch paths, model batch, sizes) with errors reported as (path, message)."""
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(_ImageSet(paths, adapter), batch_size=self.cfg.batch_size, shuffle=False,
                            num_workers=default_workers() if self.cfg.num_workers is None else self.cfg.num_workers,
                            collate_fn=list)
        from tqdm.auto import tqdm

        with tqdm(total=len(paths), desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            for items in loader:
                bar.update(len(items))
                ok = [it for it in items if it[3] is None]
                bad = [(it[0], it[3]) for it in items if it[3] is not None]
                batch = adapter.collate([it[1] for it in ok]) if ok else None
                if batch is not None and isinstance(batch, torch.Tensor):
                    batch = batch.to(self.device)
                yield [it[0] for it in ok], batch, [it[2] for it in ok], bad

    def _grounding_per_sample(self, adapter: Adapter, samples: list[Sample], plan: PairPlan):
        """Adapters whose map depends on the sample itself (e.g. the human benchmark)."""
        from benchmark.io.images import image_size

        out, skipped, sizes = [], [], []
        for s in samples:
            try:
                sizes.append(s.image_size or image_size(s.image_path))
            except DataError as exc:
                skipped.append({"sample_id": s.sample_id, "path": s.image_path, "reason": str(exc)})
                sizes.append(None)
        keep = [(s, z) for s, z in zip(samples, sizes) if z is not None]
        maps = adapter.similarity_map_for_samples([s for s, _ in keep], [z for _, z in keep])
        # Readers who marked salient points (the human benchmark) are scored on those points,
        # not on the argmax of their binary map.
        points = None
        if hasattr(adapter, "salient_points_for_samples") and hasattr(self.protocol, "points_record"):
            points = adapter.salient_points_for_samples([s for s, _ in keep])
            if points is not None and len(points) != len(keep):
                raise RuntimeError(f"{plan.model}.salient_points_for_samples returned {len(points)} entries "
                                   f"for {len(keep)} samples")
        for i, ((s, size), grid) in enumerate(zip(keep, maps)):
            rec = self.protocol.grounding_record(np.asarray(grid, dtype=np.float32), s, size, adapter.input_geometry)
            if points is not None and points[i] is not None:
                rec.update(self.protocol.points_record(points[i], s, size))
            out.append((s, rec))
        return out, skipped

    def _grounding(self, adapter: Adapter, samples: list[Sample], plan: PairPlan):
        if hasattr(adapter, "similarity_map_for_samples"):
            return self._grounding_per_sample(adapter, samples, plan)
        ckpt_sha = self._ckpt_sha(plan.model, adapter)
        with_prob = bool(getattr(adapter, "grounding_probability", False))
        probs: dict[tuple[str, str], float] = {}
        grids: dict[tuple[str, str], np.ndarray] = {}
        sizes: dict[str, tuple[int, int]] = {}

        def from_cache(s: Sample, path: str, hit: dict[str, np.ndarray]) -> None:
            prompt = s.prompt(self.cfg.prompt_set)
            grids[(path, prompt)] = hit["grid"]
            sizes[path] = tuple(int(v) for v in hit["image_size"])
            if "prob" in hit:
                probs[(path, prompt)] = float(hit["prob"])

        by_image, todo, skipped = self._cached(adapter, samples, "heatmap", ckpt_sha,
                                               lambda s: s.prompt(self.cfg.prompt_set), from_cache)
        text_cache: dict[str, Any] = {}
        for paths, batch, bsizes, bad in self._iter_images(adapter, todo, f"{plan.model} × {plan.dataset}"):
            for path, msg in bad:
                skipped.extend({"sample_id": s.sample_id, "path": path, "reason": msg} for s in by_image[path])
            if not paths:
                continue
            img_emb = adapter.encode_images(batch)
            pair_img, pair_prompt, seen = [], [], set()
            for i, path in enumerate(paths):
                sizes[path] = bsizes[i]
                for s in by_image[path]:
                    prompt = s.prompt(self.cfg.prompt_set)
                    if (path, prompt) not in grids and (i, prompt) not in seen:
                        seen.add((i, prompt))
                        pair_img.append(i)
                        pair_prompt.append(prompt)
            if not pair_img:
                continue
            new = [p for p in dict.fromkeys(pair_prompt) if p not in text_cache]
            if new:
                emb = adapter.encode_texts(new)
                for j, p in enumerate(new):
                    text_cache[p] = adapter.take(emb, [j])
            txt = adapter.concat([text_cache[p] for p in pair_prompt])
            paired = adapter.take(img_emb, pair_img)
            maps = np.asarray(adapter.similarity_map(paired, txt), dtype=np.float32)
            pair_probs = np.asarray(adapter.score(paired, txt, txt), dtype=np.float64) if with_prob else None
            if maps.ndim != 3 or len(maps) != len(pair_img):
                raise RuntimeError(f"{plan.model}.similarity_map returned shape {maps.shape}; expected "
                                   f"[{len(pair_img)}, h, w]")
            for k, (i, prompt) in enumerate(zip(pair_img, pair_prompt)):
                path = paths[i]
                grids[(path, prompt)] = maps[k]
                extra = {}
                if pair_probs is not None:
                    probs[(path, prompt)] = float(pair_probs[k])
                    extra["prob"] = np.asarray(pair_probs[k])
                self.cache.put(cache_key("heatmap", model_id=adapter.model_id, checkpoint_sha=ckpt_sha,
                                         preprocessing_id=adapter.preprocessing_id, image_sha=self._image_sha(path),
                                         prompt=prompt), grid=maps[k], image_size=np.asarray(sizes[path]), **extra)
        out = []
        for s in samples:
            key = (s.image_path, s.prompt(self.cfg.prompt_set))
            if key not in grids:
                continue  # already reported in ``skipped``
            try:
                rec = self.protocol.grounding_record(grids[key], s, sizes[s.image_path], adapter.input_geometry)
                if key in probs:
                    rec["prob"] = probs[key]
            except DataError as exc:
                skipped.append({"sample_id": s.sample_id, "path": exc.path or s.image_path, "reason": str(exc)})
                continue
            out.append((s, rec))
        self._save_heatmaps(plan, adapter, [s for s, _ in out], grids)
        return out, skipped

    def _save_heatmaps(self, plan: PairPlan, adapter: Adapter, samples: list[Sample],
                       grids: dict[tuple[str, str], np.ndarray]) -> None:
        """Keep the native grids of the first few samples, for overlays in reports."""
        keep = [s for s in samples if s.has_localization][: max(0, int(self.cfg.save_heatmaps))]
        if not keep:
            return
        import io

        from benchmark.records import atomic_write_bytes

        prompts = [s.prompt(self.cfg.prompt_set) for s in keep]
        buf = io.BytesIO()
        np.savez_compressed(buf, sample_id=np.array([s.sample_id for s in keep]),
                            image_path=np.array([s.image_path for s in keep]), prompt=np.array(prompts),
                            sample_json=np.array([json.dumps(s.to_dict(), default=str) for s in keep]),
                            grid=np.stack([grids[(s.image_path, p)] for s, p in zip(keep, prompts)]),
                            input_geometry=np.array(adapter.input_geometry))
        atomic_write_bytes(self.out / "heatmaps" / f"{record_stem(plan.dataset, plan.model)}.npz", buf.getvalue())

    def _classification(self, adapter: Adapter, samples: list[Sample], plan: PairPlan):
        ckpt_sha = self._ckpt_sha(plan.model, adapter)
        ds_name = plan.dataset
        scores: dict[tuple[str, str], float] = {}

        def prompts_of(s: Sample) -> str:
            return json.dumps(classification_prompts(ds_name, s.category))

        def from_cache(s: Sample, path: str, hit: dict[str, np.ndarray]) -> None:
            scores[(path, s.category)] = float(hit["score"])

        by_image, todo, skipped = self._cached(adapter, samples, "score", ckpt_sha, prompts_of, from_cache)
        class_emb: dict[str, tuple[Any, Any]] = {}
        for paths, batch, _sizes, bad in self._iter_images(adapter, todo, f"{plan.model} × {plan.dataset} (cls)"):
            for path, msg in bad:
                skipped.extend({"sample_id": s.sample_id, "path": path, "reason": msg} for s in by_image[path])
            if not paths:
                continue
            img_emb = adapter.encode_images(batch)
            idx, cats, seen = [], [], set()
            for i, path in enumerate(paths):
                for s in by_image[path]:
                    if (path, s.category) not in scores and (i, s.category) not in seen:
                        seen.add((i, s.category))
                        idx.append(i)
                        cats.append(s.category)
            for c in dict.fromkeys(cats):
                if c not in class_emb:
                    pos, neg = classification_prompts(ds_name, c)
                    class_emb[c] = (adapter.encode_prompt_ensemble(pos), adapter.encode_prompt_ensemble(neg))
            pos = adapter.concat([class_emb[c][0] for c in cats])
            neg = adapter.concat([class_emb[c][1] for c in cats])
            probs = np.asarray(adapter.score(adapter.take(img_emb, idx), pos, neg), dtype=np.float64)
            for k, (i, c) in enumerate(zip(idx, cats)):
                scores[(paths[i], c)] = float(probs[k])
                self.cache.put(cache_key("score", model_id=adapter.model_id, checkpoint_sha=ckpt_sha,
                                         preprocessing_id=adapter.preprocessing_id,
                                         image_sha=self._image_sha(paths[i]),
                                         prompt=json.dumps(classification_prompts(ds_name, c))),
                               score=np.asarray(probs[k]))
        out = []
        for s in samples:
            key = (s.image_path, s.category)
            if key in scores:
                out.append((s, self.protocol.classification_record(scores[key], s)))
        return out, skipped

    def _cached(self, adapter: Adapter, samples: list[Sample], kind: str, ckpt_sha: str, text_of, on_hit):
        """Group samples by image, hand cached entries to ``on_hit``, list the images left to compute.

        Returns ``(samples by image, images to compute, skipped samples)``; an image that cannot
        be read is reported once per sample, never dropped silently.
        """
        by_image: dict[str, list[Sample]] = {}
        for s in samples:
            by_image.setdefault(s.image_path, []).append(s)
        skipped: list[dict[str, str]] = []
        todo: list[str] = []
        for path, group in by_image.items():
            try:
                sha = self._image_sha(path)
            except OSError as exc:
                skipped.extend({"sample_id": s.sample_id, "path": path, "reason": _io_reason(exc)} for s in group)
                continue
            missing = False
            for s in group:
                hit = self.cache.get(cache_key(kind, model_id=adapter.model_id, checkpoint_sha=ckpt_sha,
                                               preprocessing_id=adapter.preprocessing_id, image_sha=sha,
                                               prompt=text_of(s)))
                if hit is None:
                    missing = True
                else:
                    on_hit(s, path, hit)
            if missing:
                todo.append(path)
        return by_image, todo, skipped

    def _ckpt_sha(self, model: str, adapter: Adapter) -> str:
        ckpt = self.cfg.ckpt.get(model) or getattr(adapter, "checkpoint", None)
        if ckpt:
            return checkpoint_sha256(ckpt)
        return adapter.weights_fingerprint() or "none"


def _under_root(path: str | os.PathLike, root: Path) -> str:
    """A ground-truth file as the sample hash sees it: relative to the (resolved) dataset root when
    inside it, so the same dataset in another folder (another cache, another machine) hashes the same."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _io_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "image file not found"
    return f"image file unreadable ({type(exc).__name__}: {exc})"


def classification_prompts(dataset: str, category: str | None) -> tuple[list[str], list[str]]:
    """Positive and negative prompt ensembles for zero-shot classification of ``category``."""
    from benchmark.prompts import classification_prompts as table

    return table(dataset, category)


class _ImageSet:
    """Map-style dataset for DataLoader workers: read + preprocess, errors returned not raised."""

    def __init__(self, paths: list[str], adapter: Adapter):
        self.paths, self.adapter = paths, adapter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from benchmark.io.images import read_image

        path = self.paths[i]
        try:
            img = read_image(path, self.adapter.color)
        except DataError as exc:
            return path, None, None, str(exc)
        return path, self.adapter.preprocess(img), (int(img.shape[0]), int(img.shape[1])), None


def default_output_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / stamp


def ensure_demo_data() -> Path:
    """Generate the demo datasets into the cache folder on first use."""
    root = demo_root()
    try:
        from benchmark import demo
    except ImportError as exc:  # pragma: no cover - the generator ships with the package
        raise DataError(root, f"demo data generator unavailable: {exc}") from exc
    return Path(demo.ensure(root, seed=0))
