"""The run engine: every model on every dataset through one protocol, with run records.

Order of work for one run:
1. resolve names (unknown names fail here, before anything heavy loads);
2. load datasets (cheap) and generate the demo data if a demo set is asked for and absent;
3. for each (dataset, model) pair: heatmaps / scores (cached by content), per-sample
   records through the protocol, pooled summaries with bootstrap CIs;
4. write ``samples/…parquet`` and ``pairs/…json`` as each pair finishes, and
   ``results.json`` after every pair, so an interrupted run resumes with ``--skip-existing``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark import __version__
from benchmark.adapter import GROUNDING, ZEROSHOT_CLS, Adapter, Query, build_adapter, code_version, demo_weights_of
from benchmark.cache import ArrayCache, cache_key, checkpoint_sha256, file_sha256
from benchmark.dataset import DataError, Dataset, build_dataset, cache_home, is_demo
from benchmark.parallel import usable_cores
from benchmark.prompts import classification_prompts
from benchmark.protocols.base import Protocol, resolve_protocol
from benchmark.records import (
    SCHEMA_VERSION,
    atomic_write_bytes,
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
from benchmark.run.config import RunConfig, choose_device, default_output_dir, default_workers
from benchmark.run.images import MEMO_BYTES, InputMemo, image_batches
from benchmark.run.jobs import job_layout, joined_units, run_jobs, torch_threads
from benchmark.run.numerics import Numerics
from benchmark.run.shards import in_order, merged_model_record, shard_samples, with_positions
from benchmark.sample import Sample

log = logging.getLogger("afloc_bench.runner")

TASK_CAPABILITY = {"grounding": GROUNDING, "classification": ZEROSHOT_CLS}


@dataclass
class PairPlan:
    dataset: str
    model: str
    tasks: list[str]
    reason: str = ""


class Runner:
    SNAPSHOT_S = 30.0  # results.json is rewritten during a run at most this often (and at its end)
    TEXT_CHUNK = 64  # prompts encoded per text batch

    def __init__(self, config: RunConfig):
        self.cfg = config
        self.models = model_registry.resolve(config.models)
        self.datasets = dataset_registry.resolve(config.datasets)
        self.protocol: Protocol = resolve_protocol(config.protocol)
        for name, path in self.cfg.ckpt.items():
            if name not in self.models:
                raise RegistryError(f"--ckpt given for {name!r}, which is not among the models of this run "
                                    f"({', '.join(self.models)})")
            if not model_registry.get(name).takes_checkpoint:
                raise RegistryError(f"--ckpt {name}={path}: {name!r} is a weight-free model and takes no checkpoint")
            if not Path(path).expanduser().exists():
                raise DataError(path, f"checkpoint of {name!r} not found (--ckpt {name}=PATH: a local file or folder)")
        self.device = choose_device(config.device)
        self.numerics = Numerics(config.precision, config.channels_last, self.device)
        self.out = Path(config.output) if config.output else default_output_dir()
        self.cache = ArrayCache(Path(config.cache_dir) if config.cache_dir else cache_home() / "arrays",
                                enabled=config.cache)
        self.progress = not config.quiet
        self.inputs = InputMemo()  # preprocessed inputs shared by the models of the dataset being run
        self._datasets: dict[str, Dataset] = {}
        self._ds_records: dict[str, dict[str, Any]] = {}
        self._adapters: dict[str, Adapter] = {}
        self._weights_by_modality: dict[str, dict[str | None, str | None]] = {}
        self._image_shas: dict[str, str] = {}
        self._previous: dict[str, Any] | None = None
        self._job_workers: int | None = None  # DataLoader workers of a job (default: cores left to it, less one)

    # -- planning ---------------------------------------------------------
    def check_models(self) -> list[str]:
        """Models that need a checkpoint and have none: an error if named, skipped if from a group."""
        problems = []
        explicit = set(i for spec in self.cfg.models for i in str(spec).split(","))
        for m in self.models:
            entry = model_registry.entry(m)
            if (entry.get("needs_checkpoint", False) and m not in self.cfg.ckpt
                    and not (self.cfg.model_options.get(m) and entry.load().runs_without_checkpoint(
                        {**entry.options, **self.cfg.model_options[m]}))):
                if m in explicit:
                    raise RegistryError(f"model {m!r} needs a checkpoint: pass --ckpt {m}=PATH")
                problems.append(m)
        return problems

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            if is_demo(name):  # every demo set of the run at once (one generation, all cores)
                from benchmark.demo import ensure_demo_data

                ensure_demo_data([d for d in self.datasets if is_demo(d)])
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
    def preflight(self) -> None:
        """Everything that can be checked before the run folder is touched: every dataset root (all
        missing ones named at once), the prompt set, and the run folder's earlier record."""
        missing = []
        for name in self.datasets:
            try:
                ds = self.dataset(name)
            except DataError as exc:
                missing.append(str(exc))
                continue
            if not ds.root.exists():
                missing.append(f"{ds.root}: dataset root of {name!r} does not exist")
        if missing:
            raise DataError(None, f"{len(missing)} dataset(s) cannot be read: " + "; ".join(missing))
        sets = {n: set(self._datasets[n].card.prompt_sets) for n in self.datasets}
        if self.cfg.prompt_set != "simple" and not any(self.cfg.prompt_set in v for v in sets.values()):
            known = sorted(set().union(*sets.values()))
            raise ValueError(f"--prompt-set {self.cfg.prompt_set!r}: none of the datasets has it (they have "
                             f"{', '.join(known)})")
        self._previous = self._previous_results()

    def _previous_results(self) -> dict[str, Any] | None:
        """A run folder already holding another run's results: its pairs are kept (merged) when it was
        made with the same settings, and the run is refused otherwise, never silently replaced."""
        path = self.out / "results.json"
        if not path.is_file():
            return None
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(path, f"an unreadable run record ({exc}); move it away or choose another -o") from None
        ours = self._new_results()
        for key, mine, theirs in (("protocol", ours["protocol"]["id"], (old.get("protocol") or {}).get("id")),
                                  ("limit", self.cfg.limit, old.get("limit")),
                                  ("n_boot", self.cfg.n_boot, (old.get("config") or {}).get("n_boot")),
                                  ("seed", self.cfg.seed, (old.get("config") or {}).get("seed")),
                                  ("prompt_set", self.cfg.prompt_set, (old.get("config") or {}).get("prompt_set")),
                                  ("split", self.cfg.split, (old.get("config") or {}).get("split")),
                                  ("harness_version", __version__, old.get("harness_version"))):
            if mine != theirs:
                raise ValueError(f"-o {self.out}: holds a run with {key} {theirs!r}, this run has {mine!r}; "
                                 "choose another run folder (a run folder holds one set of settings)")
        return old

    def run(self) -> dict[str, Any]:
        plans = self.plan()
        self.preflight()
        self.out.mkdir(parents=True, exist_ok=True)
        import yaml

        jobs, threads = job_layout(self.cfg.jobs, self.cfg.threads, self.device, sum(1 for p in plans if p.tasks),
                                   sharded=self.cfg.shard is not None)
        with _run_log(self.out / "run.log"):
            atomic_write_text(self.out / "config.resolved.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=True))
            env = environment(self.device)
            if self.device == "cpu" and env.get("torch"):  # the run's own threads, not this process's default
                env["torch"]["num_threads"] = threads
                env["jobs"] = jobs
            atomic_write_json(self.out / "env.json", env)
            return self._run(plans, jobs, threads)

    def _run(self, plans: list[PairPlan], jobs: int, threads: int | None) -> dict[str, Any]:
        state = self._new_results()
        if self._previous is not None:  # pairs of an earlier run into this folder stay in its record
            for key in ("datasets", "models", "results"):
                state[key] = dict(self._previous.get(key) or {})
            state["results"] = {d: dict(m) for d, m in state["results"].items()}
            state["skipped_pairs"] = [p for p in self._previous.get("skipped_pairs") or []
                                      if (p["dataset"], p["model"]) not in {(q.dataset, q.model) for q in plans}]
        skipped_models: dict[tuple[str, str], list[str]] = {}
        for plan in plans:
            if not plan.tasks:
                state["skipped_pairs"].append({"dataset": plan.dataset, "model": plan.model, "reason": plan.reason})
                skipped_models.setdefault((plan.model, plan.reason), []).append(plan.dataset)
        for (model, reason), names in skipped_models.items():
            log.warning("skipping %s on %d dataset(s) (%s): %s", model, len(names), ", ".join(names), reason)
        todo = [plan for plan in plans if plan.tasks]
        self.numerics = dataclasses.replace(self.numerics, threads=threads if self.device == "cpu" else None)
        if self.device == "cpu":
            state["execution"] = {"jobs": jobs, "threads": threads}
        if jobs > 1:
            log.info("%d pairs in %d jobs side by side, one torch thread each", len(todo), jobs)
            self._run_jobs(todo, state, jobs)
        else:
            with torch_threads(threads):
                self._run_serial(todo, state)
        skipped = {d: sum(rec.get("n_run_skipped", {}).values()) + rec.get("n_skipped", 0)
                   for d, rec in state["datasets"].items()}
        for d, n in skipped.items():
            if n:
                log.warning("%s: %d sample(s) skipped (unreadable files or no model output; results.json lists them)",
                            d, n)
        return state

    def _run_serial(self, todo: list[PairPlan], state: dict[str, Any]) -> None:
        t_run = last_snapshot = time.time()
        try:
            for k, plan in enumerate(todo, 1):
                pair = self._run_pair(plan, state)
                state["results"].setdefault(plan.dataset, {})[plan.model] = pair["rows"]
                # one line per finished pair, terminal or not: a long run never looks hung
                log.info("[%d/%d] %s × %s done in %.1f s (%.0f s so far)", k, len(todo), plan.model,
                         plan.dataset, float(pair.get("seconds") or 0.0), time.time() - t_run)
                # pairs/ holds each finished pair at once (a resume reads those); the growing record is
                # rewritten at most every SNAPSHOT_S, and whenever the run ends, stopped or not
                if time.time() - last_snapshot >= self.SNAPSHOT_S or k == 1:
                    atomic_write_json(self.out / "results.json", nan_to_none(state))
                    last_snapshot = time.time()
        finally:
            atomic_write_json(self.out / "results.json", nan_to_none(state))

    def _run_jobs(self, todo: list[PairPlan], state: dict[str, Any], jobs: int) -> None:
        """``todo`` in ``jobs`` forked processes (``benchmark.run.jobs``); ``state`` ends as the serial
        loop leaves it: pairs, dataset and model records in the order of the plan."""
        base = copy.deepcopy(state)
        done: dict[int, tuple[int, dict[str, Any]]] = {}
        self.inputs.budget = max(MEMO_BYTES // jobs, 256 * 2**20)
        # with a job per core a decoding process only adds copies through shared memory: jobs decode
        # their own images unless cores are left over
        self._job_workers = max(0, min(4, usable_cores() // jobs - 1))
        units = joined_units(len(todo), [self._unit_keys(plan) for plan in todo])
        # the largest units first (samples to score, a proxy for time), so that no long unit starts last
        size = {name: len(self._samples(name)) for name in dict.fromkeys(plan.dataset for plan in todo)}
        units.sort(key=lambda unit: -sum(size[todo[k].dataset] for k in unit))
        self._hash_images(todo)

        def work(k: int) -> dict[str, Any]:  # in a job
            plan = todo[k]
            pair = self._run_pair(plan, {"datasets": {}, "models": {}})
            return {"pair": pair, "dataset": self._ds_records[plan.dataset]}

        t_run = last_snapshot = time.time()

        def on_done(k: int, job: int, got: dict[str, Any]) -> None:
            nonlocal last_snapshot
            done[k] = (job, got)
            plan, pair = todo[k], got["pair"]
            log.info("[%d/%d] %s × %s done in %.1f s (%.0f s so far)", len(done), len(todo), plan.model,
                     plan.dataset, float(pair.get("seconds") or 0.0), time.time() - t_run)
            if time.time() - last_snapshot >= self.SNAPSHOT_S or len(done) == 1:
                atomic_write_json(self.out / "results.json", nan_to_none(self._joined(base, todo, done)))
                last_snapshot = time.time()

        try:
            run_jobs(work, units, jobs, on_done)
        finally:
            state.update(self._joined(base, todo, done))
            atomic_write_json(self.out / "results.json", nan_to_none(state))

    def _hash_images(self, plans: list[PairPlan]) -> None:
        """Every image of the run's datasets hashed once, on every core, before the jobs are forked
        (they inherit the hashes instead of each hashing the images of every set it touches)."""
        from concurrent.futures import ThreadPoolExecutor

        paths: dict[str, None] = {}
        for name in dict.fromkeys(plan.dataset for plan in plans):
            for s in self._samples(name):
                paths.setdefault(s.image_path)
        todo = [p for p in paths if p not in self._image_shas]

        def sha(path: str) -> str | None:  # hashlib releases the GIL while it hashes
            try:
                return file_sha256(path)
            except OSError:
                return None  # reported by the pair that reads it

        with ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="afloc-sha") as pool:
            for path, digest in zip(todo, pool.map(sha, todo)):
                if digest is not None:
                    self._image_shas[path] = digest

    def _samples(self, name: str) -> list[Sample]:
        """The samples of a dataset this run scores (its first ``--limit``)."""
        samples = self.dataset(name).samples()
        return samples[: self.cfg.limit] if self.cfg.limit is not None else samples

    @staticmethod
    def _unit_keys(plan: PairPlan) -> list[tuple]:
        """Pairs that share a key run one after another in one job: on a dataset, the models of one
        ``score_family`` (scores computed once, then read from the cache) or ``input_family``
        (decoded inputs reused), and every pair of a model whose record counts across its pairs
        (``run_counters``). Other pairs are units of their own, so that no unit grows long."""
        cls = model_registry.entry(plan.model).load()
        keys: list[tuple] = []
        for kind in ("score_family", "input_family"):
            if getattr(cls, kind, None):
                keys.append((kind, plan.dataset, getattr(cls, kind)))
        if getattr(cls, "run_counters", ()):
            keys.append(("counts", plan.model))
        return keys

    def _joined(self, base: dict[str, Any], todo: list[PairPlan], done: dict[int, tuple[int, dict[str, Any]]]
                ) -> dict[str, Any]:
        """The run's record from its finished pairs, as the serial loop would have written it: in the
        order of the plan; each model's record that of its last pair, with the counts of every job
        added up and its checkpoint per modality where it used more than one."""
        state = copy.deepcopy(base)
        last: dict[str, dict[int, dict[str, Any]]] = {}  # model -> job -> record of its latest pair there
        final: dict[str, dict[str, Any]] = {}
        checkpoints: dict[str, dict[str | None, Any]] = {}
        recorded: set[str] = set()
        for k in sorted(done):
            job, got = done[k]
            plan, pair = todo[k], got["pair"]
            if plan.dataset not in recorded:  # this run's record of the set replaces an earlier run's
                recorded.add(plan.dataset)
                state["datasets"][plan.dataset] = {**got["dataset"], "n_run_skipped": {}}
            ds_rec = state["datasets"][plan.dataset]
            ds_rec["n_run_skipped"][plan.model] = int(pair.get("n_run_skipped", 0))
            state["results"].setdefault(plan.dataset, {})[plan.model] = pair["rows"]
            last.setdefault(plan.model, {})[job] = pair["model"]
            final[plan.model] = pair["model"]
            checkpoints.setdefault(plan.model, {})[self.dataset(plan.dataset).card.modality] = \
                pair["model"].get("checkpoint")
        for model, by_job in last.items():
            counters = getattr(model_registry.entry(model).load(), "run_counters", ())
            others = [r for r in by_job.values() if r is not final[model]]
            rec = merged_model_record([final[model], *others], counters)
            rec.pop("checkpoint_by_modality", None)
            if len(set(checkpoints[model].values())) > 1:
                rec["checkpoint_by_modality"] = dict(sorted(checkpoints[model].items(), key=lambda kv: str(kv[0])))
            state["models"][model] = rec
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
            **({"shard": dict(zip(("index", "count"), self.cfg.shard_position()))} if self.cfg.shard else {}),
        }

    def _dataset_record(self, name: str, ds: Dataset, samples: list[Sample]) -> dict[str, Any]:
        h = hashlib.sha256()
        p = hashlib.sha256()
        root = Path(ds.root).resolve()
        prompt_set = self.cfg.prompt_set if self.cfg.prompt_set in ds.card.prompt_sets else "simple"
        if prompt_set != self.cfg.prompt_set:
            log.warning("%s has no prompt set %r: its samples use 'simple' (recorded so)", name, self.cfg.prompt_set)
        for s in samples:
            h.update(json.dumps([s.sample_id, s.category, s.label, s.boxes, s.polygons,
                                 [r.get("counts") if isinstance(r.get("counts"), str) else str(r.get("counts"))
                                  for r in s.rles], [_under_root(m, root) for m in s.mask_paths]],
                                default=str).encode())
            p.update(s.prompt(prompt_set).encode() + b"\0")
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
            "prompt_set": prompt_set,
            "prompt_hash": p.hexdigest(),
            "n_run_skipped": {},  # per model: samples that failed at run time (unreadable image, no output)
        }

    def _adapter(self, name: str, modality: str | None = None) -> Adapter:
        """The loaded adapter of ``name``; without a --ckpt, one per set of demo weights (a model may
        have its own for a modality's datasets: AFLoc's pathology demo model)."""
        ckpt = self.cfg.ckpt.get(name)
        weights = None if ckpt else demo_weights_of(model_registry.entry(name), modality)[0]
        key = f"{name}@{weights}" if weights else name
        if key not in self._adapters:
            adapter = build_adapter(name, None if ckpt else modality)
            adapter.options.update(self.cfg.model_options.get(name, {}))
            adapter.load(ckpt, self.device)
            self.numerics.prepare_adapter(adapter)
            self._adapters[key] = adapter
        return self._adapters[key]

    def _model_record(self, name: str, adapter: Adapter, modality: str | None = None) -> dict[str, Any]:
        ckpt = self.cfg.ckpt.get(name) or getattr(adapter, "checkpoint", None)
        rec = adapter.describe()
        rec["plugin"] = model_registry.entry(name).plugin  # distribution and version of an out-of-tree model
        rec["checkpoint"] = str(ckpt) if ckpt else None
        rec["checkpoint_sha256"] = checkpoint_sha256(ckpt) if ckpt else None
        seen = self._weights_by_modality.setdefault(name, {})
        seen[modality] = rec["checkpoint"]
        if len(set(seen.values())) > 1:  # one model on two modalities' own demo weights: name each
            rec["checkpoint_by_modality"] = dict(sorted(seen.items()))
        return rec

    def _pair_fingerprint(self, plan: PairPlan, ds_rec: dict[str, Any], samples: list[Sample]) -> str:
        """What a finished pair's numbers depend on, by content: the checkpoint's bytes, every image's
        bytes, the adapter's code, the samples and prompts, the protocol and its settings. A resume
        (``--skip-existing``) reuses a pair only when all of it is unchanged."""
        entry = model_registry.entry(plan.model)
        ckpt = self.cfg.ckpt.get(plan.model)
        images = hashlib.sha256()
        for path in sorted({s.image_path for s in samples}):
            try:
                images.update(f"{path}\0{self._image_sha(path)}\0".encode())
            except OSError:
                images.update(f"{path}\0missing\0".encode())
        payload = {"protocol": self.protocol.id, "n_boot": self.cfg.n_boot, "seed": self.cfg.seed,
                   "limit": self.cfg.limit, "ckpt_sha256": checkpoint_sha256(ckpt) if ckpt else None,
                   "model_options": self.cfg.model_options.get(plan.model, {}), "registered": entry.options,
                   "sample_hash": ds_rec["sample_hash"], "prompt_hash": ds_rec["prompt_hash"],
                   "images": images.hexdigest(), "code": code_version(entry.load()),
                   "harness": __version__, "tasks": plan.tasks,
                   "default_weights": None if ckpt else
                   demo_weights_of(entry, self.dataset(plan.dataset).card.modality)[0]}
        if not self.numerics.default:  # left out at the default, so earlier runs' fingerprints still hold
            payload["numerics"] = self.numerics.record()
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _run_pair(self, plan: PairPlan, state: dict[str, Any]) -> dict[str, Any]:
        import pandas as pd

        ds = self.dataset(plan.dataset)
        samples = ds.samples()
        if self.cfg.limit is not None:
            samples = samples[: self.cfg.limit]
        if plan.dataset not in self._ds_records:
            self._ds_records[plan.dataset] = self._dataset_record(plan.dataset, ds, samples)
        ds_rec = self._ds_records[plan.dataset]
        state["datasets"][plan.dataset] = ds_rec
        stem = record_stem(plan.dataset, plan.model)
        pair_path = self.out / "pairs" / f"{stem}.json"
        fingerprint = self._pair_fingerprint(plan, ds_rec, samples)
        if self.cfg.skip_existing and pair_path.is_file():
            old = json.loads(pair_path.read_text())
            if old.get("fingerprint") == fingerprint and (self.out / "samples" / f"{stem}.parquet").is_file():
                log.info("skip-existing: %s on %s already done", plan.model, plan.dataset)
                state["models"][plan.model] = old["model"]
                ds_rec["n_run_skipped"][plan.model] = int(old.get("n_run_skipped", 0))
                return old
        adapter = self._adapter(plan.model, ds.card.modality)
        state["models"][plan.model] = self._model_record(plan.model, adapter, ds.card.modality)
        self.inputs.start(plan.dataset)
        t0 = time.time()
        frames, rows, run_skips, used_params = [], [], [], {}
        unit = ds.card.resampling_unit
        preprocessing: dict[str, dict[str, str]] = {}
        shard = self.cfg.shard_position()
        tuning_frames, tuned, task_params = [], [], {}
        for task in plan.tasks:
            adapter.for_task(task)
            preprocessing[task] = adapter.preprocessing()
            records, skipped = self._records(task, adapter, ds, samples, plan)
            run_skips.extend(skipped)
            needs_tuning = self.protocol.needs_tuning_for(samples) and task == "grounding"
            if shard is not None:  # records only, placed in dataset order; ``merge`` summarises
                task_params[task] = self._task_params(ds, task)
                if needs_tuning:
                    tuned.append(task)
                    tuning_frames.append(self._tuning_records(plan, adapter, task))
                if not records.empty:
                    frames.append(with_positions(records, samples, plan.dataset))
                continue
            if records.empty:
                continue
            params = self._task_params(ds, task)
            if needs_tuning:
                params.update(self._tune(plan, adapter, task))
            rows.extend(self._summary(records, task, unit, params))
            used_params[task] = params
            frames.append(records)
        # the adapter's own counters (e.g. unmatched human-benchmark entries) are final only now;
        # an adapter reused across datasets reports its running totals
        state["models"][plan.model] = self._model_record(plan.model, adapter, ds.card.modality)
        if frames:
            write_parquet_atomic(pd.concat(frames, ignore_index=True), self.out / "samples" / f"{stem}.parquet")
        tuning = [f for f in tuning_frames if not f.empty]
        if tuning:
            write_parquet_atomic(pd.concat(tuning, ignore_index=True), self.out / "tuning" / f"{stem}.parquet")
        pair = {"dataset": plan.dataset, "fingerprint": fingerprint, "tasks": plan.tasks,
                "rows": nan_to_none(rows), "protocol_params": nan_to_none(used_params), "preprocessing": preprocessing,
                "model": state["models"][plan.model], "n_run_skipped": len(run_skips),
                "run_skipped": run_skips[:100], "seconds": round(time.time() - t0, 3),
                "cache": {"hits": self.cache.hits, "misses": self.cache.misses, "corrupt": self.cache.corrupt}}
        if shard is not None:
            pair["shard"] = {"index": shard[0], "count": shard[1], "unit": unit, "tuned_tasks": tuned,
                             "params": task_params}
        ds_rec["n_run_skipped"][plan.model] = len(run_skips)
        atomic_write_json(pair_path, pair)
        if run_skips:
            log.warning("%s on %s: %d sample(s) skipped at run time (see results.json)", plan.model, plan.dataset,
                        len(run_skips))
        return pair

    def _task_params(self, ds: Dataset, task: str) -> dict[str, Any]:
        """What the protocol needs to know of a task besides its records: the prompt set and, for a
        single-label classification set (card ``classification.mode: softmax``), ``softmax``."""
        params: dict[str, Any] = {"prompt_set": self.cfg.prompt_set}
        if task == "classification" and ds.card.classification_mode == "softmax":
            params["softmax"] = True
        return params

    def _summary(self, records: Any, task: str, unit: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        summary = self.protocol.summarize(records, task, n_boot=self.cfg.n_boot, seed=self.cfg.seed, unit=unit,
                                          params=params)
        return [{"task": task, **r} for r in summary]

    def _tuning_records(self, plan: PairPlan, adapter: Adapter, task: str):
        """Records of the protocol's tuning split (of a shard: its share, placed in that split's order)."""
        entry = dataset_registry.entry(plan.dataset)
        tune_ds = entry.load()(root=self.dataset(plan.dataset).root,
                               **{**entry.options, "split": self.protocol.tuning_split})
        samples = tune_ds.samples()
        records, _ = self._records(task, adapter, tune_ds, samples, plan)
        if self.cfg.shard is None or records.empty:
            return records
        return with_positions(records, samples, f"{plan.dataset}/{tune_ds.split}")

    def _tune(self, plan: PairPlan, adapter: Adapter, task: str) -> dict[str, Any]:
        params = self.protocol.tune(self._tuning_records(plan, adapter, task))
        log.info("tuned %s on %s/%s: %s", self.protocol.id, plan.dataset, self.protocol.tuning_split, params)
        return params

    # -- joining shards ----------------------------------------------------------
    def merge_shards(self, folders: list[Path], docs: list[dict[str, Any]]) -> dict[str, Any]:
        """This run's folder from the folders of its shards (``benchmark.run.shards.merge``)."""
        import pandas as pd
        import yaml

        def read(path: Path) -> pd.DataFrame:
            return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.resolved.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=True))
        env = json.loads((folders[0] / "env.json").read_text()) if (folders[0] / "env.json").is_file() else {}
        atomic_write_json(self.out / "env.json", {**env, "shards": [str(f) for f in folders]})
        state = self._new_results()
        state["device"] = docs[0].get("device", state["device"])
        state["skipped_pairs"] = docs[0].get("skipped_pairs", [])
        for dataset, models in docs[0]["results"].items():
            ds_rec = dict(docs[0]["datasets"][dataset])
            ds_rec["n_run_skipped"] = {m: sum(int(d["datasets"][dataset]["n_run_skipped"].get(m, 0)) for d in docs)
                                       for m in ds_rec["n_run_skipped"]}
            state["datasets"][dataset] = ds_rec
            for model in models:
                stem = record_stem(dataset, model)
                pairs = [json.loads((f / "pairs" / f"{stem}.json").read_text()) for f in folders]
                if len({p["fingerprint"] for p in pairs}) != 1:
                    raise ValueError(f"{model} on {dataset}: the shards scored different inputs (fingerprints differ)")
                info = pairs[0]["shard"]
                frames = [read(f / "samples" / f"{stem}.parquet") for f in folders]
                tuning = [read(f / "tuning" / f"{stem}.parquet") for f in folders]
                rows, used_params, joined = [], {}, []
                for task in pairs[0]["tasks"]:
                    records = in_order(frames, task)
                    if records.empty:
                        continue
                    params = dict(info.get("params", {}).get(task, {"prompt_set": self.cfg.prompt_set}))
                    if task in info["tuned_tasks"]:
                        params.update(self.protocol.tune(in_order(tuning, task)))
                    rows.extend(self._summary(records, task, info["unit"], params))
                    used_params[task] = params
                    joined.append(records)
                if joined:
                    write_parquet_atomic(pd.concat(joined, ignore_index=True),
                                         self.out / "samples" / f"{stem}.parquet")
                skips = [s for p in pairs for s in p.get("run_skipped", [])]
                pair = {**{k: v for k, v in pairs[0].items() if k != "shard"},
                        "rows": nan_to_none(rows), "protocol_params": nan_to_none(used_params),
                        "n_run_skipped": sum(int(p.get("n_run_skipped", 0)) for p in pairs),
                        "run_skipped": skips[:100], "seconds": round(max(p.get("seconds", 0.0) for p in pairs), 3),
                        "shards": len(pairs)}
                atomic_write_json(self.out / "pairs" / f"{stem}.json", pair)
                state["results"].setdefault(dataset, {})[model] = pair["rows"]
                counters = getattr(model_registry.entry(model).load(), "run_counters", ())
                state["models"][model] = merged_model_record([d["models"][model] for d in docs], counters)
        atomic_write_json(self.out / "results.json", nan_to_none(state))
        return state

    # -- per-sample records ----------------------------------------------------
    def _records(self, task: str, adapter: Adapter, ds: Dataset, samples: list[Sample], plan: PairPlan):
        import pandas as pd

        if task == "grounding":
            negatives = self.protocol.uses_negatives_for(samples)
            wanted = [s for s in samples if s.has_localization or (negatives and s.label is not None)]
        else:
            wanted = [s for s in samples if s.label is not None]
        wanted, refused = self._supported(adapter, ds, wanted, plan, task)
        everyone = wanted  # prompts are encoded in chunks of their order here, sharded or not
        shard = self.cfg.shard_position()
        if shard is not None:  # this shard's batches of the images, and its share of the refused samples
            wanted = shard_samples(wanted, *shard, block=self.cfg.batch_size)
            refused = [r for k, r in enumerate(refused) if k % shard[1] == shard[0]]
        if task == "grounding":
            values, skipped = self._grounding(adapter, ds, wanted, plan, everyone)
        else:
            values, skipped = self._classification(adapter, ds, wanted, plan, everyone)
        skipped = refused + skipped
        rows = []
        for s, rec in values:
            base = {"sample_id": s.sample_id, "image_id": s.image_id, "patient_id": s.patient_id,
                    "category": s.category, "label": s.label, "split": s.split, "task": task}
            base.update(rec)
            rows.append(base)
        return pd.DataFrame(rows), skipped

    def _supported(self, adapter: Adapter, ds: Dataset, samples: list[Sample], plan: PairPlan, task: str):
        """Samples whose query the model can answer, and a skip entry for each of the others.

        A model with a fixed label set (a classifier behind Grad-CAM) cannot answer a finding it has
        no output for (``Adapter.unsupported``); those samples are counted as skipped instead of
        stopping the run."""
        reasons: dict[Query, str | None] = {}
        keep, refused, cats = [], [], set()
        if task == "classification" and ds.card.classification_mode == "softmax" and not adapter.ranks_classes:
            reason = ("single-label classification compares class logits, which this model does not give "
                      "(Adapter.class_logit)")
            refused = [{"sample_id": s.sample_id, "path": s.image_path, "reason": f"{plan.model}: {reason}"}
                       for s in samples]
            if refused:
                log.warning("%s on %s (classification): %d sample(s) skipped: %s", plan.model, plan.dataset,
                            len(refused), reason)
            return [], refused
        for s in samples:
            query = ds.query(s, self.cfg.prompt_set) if task == "grounding" \
                else Query(classification_prompts(ds.card, s.category)[0][0], s.category)
            if query not in reasons:
                reasons[query] = adapter.unsupported(query)
            if reasons[query] is None:
                keep.append(s)
            else:
                refused.append({"sample_id": s.sample_id, "path": s.image_path,
                                "reason": f"{plan.model} cannot score this prompt: {reasons[query]}"})
                cats.add(str(s.category))
        if refused:
            log.warning("%s on %s (%s): %d sample(s) skipped, no model output for %s", plan.model, plan.dataset,
                        task, len(refused), ", ".join(sorted(cats)))
        return keep, refused

    def _grounding(self, adapter: Adapter, ds: Dataset, samples: list[Sample], plan: PairPlan,
                   text_order: list[Sample]):
        if adapter.per_sample_maps:
            return self._grounding_per_sample(adapter, samples, plan)
        queries = {s.sample_id: ds.query(s, self.cfg.prompt_set) for s in text_order}

        def key_of(s: Sample) -> str:
            q = queries[s.sample_id]
            return json.dumps([q.text, q.finding])

        def encode(keys: list[str]) -> dict[str, Any]:  # one text batch, as the model sees new prompts
            emb = adapter.encode_texts([Query(*json.loads(k)) for k in keys])
            return {k: adapter.take(emb, [j]) for j, k in enumerate(keys)}

        def compute(images: Any, txt: Any, n: int) -> dict[str, np.ndarray]:
            maps = np.asarray(adapter.similarity_map(images, txt), dtype=np.float32)
            if maps.ndim != 3 or len(maps) != n:
                raise RuntimeError(f"{plan.model}.similarity_map returned shape {maps.shape}; expected "
                                   f"[{n}, h, w]")
            out = {"grid": maps}
            if adapter.grounding_probability:
                out["prob"] = np.asarray(adapter.score(images, txt, txt), dtype=np.float64)
            return out

        outputs, sizes, skipped = self._infer(adapter, samples, plan, "heatmap", key_of, encode, compute,
                                              f"{plan.model} × {plan.dataset}", text_order)
        out, grids = [], {}
        done = [s for s in samples if (s.image_path, key_of(s)) in outputs]  # the others are in ``skipped``
        for s in done:
            grids[s.sample_id] = outputs[(s.image_path, key_of(s))]["grid"]
        records = self.protocol.grounding_records([grids[s.sample_id] for s in done], done,
                                                  [sizes[s.image_path] for s in done], adapter.input_geometry)
        for s, rec in zip(done, records):
            if isinstance(rec, DataError):
                skipped.append({"sample_id": s.sample_id, "path": rec.path or s.image_path, "reason": str(rec)})
                continue
            key = (s.image_path, key_of(s))
            if "prob" in outputs[key]:
                rec["prob"] = float(outputs[key]["prob"])
            out.append((s, rec))
        self._save_heatmaps(plan, adapter, [s for s, _ in out], {s.sample_id: queries[s.sample_id] for s, _ in out},
                            grids)
        return out, skipped

    def _classification(self, adapter: Adapter, ds: Dataset, samples: list[Sample], plan: PairPlan,
                        text_order: list[Sample]):
        keys: dict[str, str] = {}  # one class's prompt ensembles, built once per class

        def key_of(s: Sample) -> str:
            if s.category not in keys:
                keys[s.category] = json.dumps([*classification_prompts(ds.card, s.category), s.category])
            return keys[s.category]

        def encode(keys: list[str]) -> dict[str, Any]:  # one ensemble per class, positive and negative
            out = {}
            for k in keys:
                pos, neg, category = json.loads(k)
                out[k] = (adapter.encode_prompt_ensemble([Query(p, category) for p in pos]),
                          adapter.encode_prompt_ensemble([Query(n, category) for n in neg]))
            return out

        softmax = ds.card.classification_mode == "softmax"

        def compute(images: Any, txt: Any, n: int) -> dict[str, np.ndarray]:
            pos, neg = txt
            if softmax:
                return {"logit": np.asarray(adapter.class_logit(images, pos), dtype=np.float64)}
            return {"score": np.asarray(adapter.score(images, pos, neg), dtype=np.float64)}

        outputs, _sizes, skipped = self._infer(adapter, samples, plan, "class_logit" if softmax else "score", key_of,
                                               encode, compute, f"{plan.model} × {plan.dataset} (cls)", text_order)
        done = [s for s in samples if (s.image_path, key_of(s)) in outputs]
        if softmax:
            probs = class_softmax(done, [float(outputs[(s.image_path, key_of(s))]["logit"]) for s in done])
            out = []
            for s, (logit, prob) in zip(done, probs):
                rec = self.protocol.classification_record(prob, s)
                rec["logit"] = logit
                out.append((s, rec))
            return out, skipped
        return [(s, self.protocol.classification_record(float(outputs[(s.image_path, key_of(s))]["score"]), s))
                for s in done], skipped

    def _infer(self, adapter: Adapter, samples: list[Sample], plan: PairPlan, kind: str,
               key_of: Callable[[Sample], str], encode: Callable[[list[str]], dict[str, Any]],
               compute: Callable[[Any, Any, int], dict[str, np.ndarray]], desc: str, text_order: list[Sample]):
        """The one inference loop of every task.

        Samples are grouped by image; outputs cached under (model, weights, preprocessing, image
        content, ``key_of(sample)``) are reused; the other images are read in batches, encoded once,
        paired with the text side of each of their keys (``encode`` runs once per new key) and
        ``compute(image rows, text rows, n)`` gives one output row per pair (the text rows are
        the batch's distinct keys concatenated once, then indexed per pair). Returns ``(outputs by
        (image, key), image sizes, skipped samples)``; an image that cannot be read is reported
        once per sample, never dropped. ``text_order`` (the task's samples before sharding, a
        superset of ``samples``) fixes the order in which keys are encoded, in chunks.
        """
        ckpt_sha = self._ckpt_sha(plan.model, adapter)
        code = code_version(type(adapter))

        made: dict[tuple[str, str], str] = {}  # each key is looked up, then written: hashed once

        def cache_key_of(path: str, key: str) -> str:
            if (path, key) not in made:
                made[(path, key)] = cache_key(
                    kind, model_id=adapter.output_identity(kind) + self.numerics.identity, checkpoint_sha=ckpt_sha,
                    code_version=code,
                    preprocessing_id=f"{adapter.preprocessing_id}|decode={adapter.decode}",
                    image_sha=self._image_sha(path), prompt=key)
            return made[(path, key)]

        by_image: dict[str, list[Sample]] = {}
        for s in samples:
            by_image.setdefault(s.image_path, []).append(s)
        outputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        skipped: list[dict[str, str]] = []
        todo: list[str] = []
        for path, group in by_image.items():
            try:
                self._image_sha(path)
            except OSError as exc:
                skipped.extend({"sample_id": s.sample_id, "path": path, "reason": _io_reason(exc)} for s in group)
                continue
            missing = False
            for s in group:
                hit = self.cache.get(cache_key_of(path, key_of(s)))
                if hit is None:
                    missing = True
                else:
                    size = hit.pop("image_size", None)
                    if size is not None:
                        sizes[path] = tuple(int(v) for v in size)
                    outputs[(path, key_of(s))] = hit
            if missing:
                todo.append(path)
        # Text is encoded in fixed chunks of the task's prompts (first appearance in the unsharded
        # samples), whichever images need them first: a text encoder's outputs may change in their
        # last bits with its batch, and a shard or a resumed run sees other image batches.
        order = list(dict.fromkeys(key_of(s) for s in text_order))
        chunk_of = {k: i // self.TEXT_CHUNK for i, k in enumerate(order)}
        text_rows: dict[str, Any] = {}
        workers = self.cfg.num_workers if self.cfg.num_workers is not None else \
            default_workers() if self._job_workers is None else self._job_workers
        for paths, batch, bsizes, bad in image_batches(adapter, todo, batch_size=self.cfg.batch_size,
                                                       num_workers=workers, device=self.device, desc=desc,
                                                       progress=self.progress, memo=self.inputs,
                                                       numerics=self.numerics):
            for path, msg in bad:
                skipped.extend({"sample_id": s.sample_id, "path": path, "reason": msg} for s in by_image[path])
            if not paths:
                continue
            with self.numerics.autocast():
                img_emb = adapter.encode_images(batch)
            img_emb = self.numerics.to_float32(img_emb)
            pair_img, pair_key, seen = [], [], set()
            for i, path in enumerate(paths):
                sizes[path] = bsizes[i]
                for s in by_image[path]:
                    key = key_of(s)
                    if (path, key) not in outputs and (i, key) not in seen:
                        seen.add((i, key))
                        pair_img.append(i)
                        pair_key.append(key)
            if not pair_img:
                continue
            for c in sorted({chunk_of[k] for k in pair_key if k not in text_rows}):
                with self.numerics.autocast():
                    rows = encode(order[c * self.TEXT_CHUNK:(c + 1) * self.TEXT_CHUNK])
                text_rows.update(self.numerics.to_float32(rows))
            distinct = list(dict.fromkeys(pair_key))
            where = {k: j for j, k in enumerate(distinct)}
            txt = adapter.take(_concat_rows(adapter, [text_rows[k] for k in distinct]), [where[k] for k in pair_key])
            values = compute(adapter.take(img_emb, pair_img), txt, len(pair_key))
            for n, (i, key) in enumerate(zip(pair_img, pair_key)):
                path = paths[i]
                row = {name: v[n] for name, v in values.items()}
                outputs[(path, key)] = row
                self.cache.put(cache_key_of(path, key), image_size=np.asarray(sizes[path]),
                               **{name: np.asarray(v) for name, v in row.items()})
        return outputs, sizes, skipped

    def _grounding_per_sample(self, adapter: Adapter, samples: list[Sample], plan: PairPlan):
        """Adapters whose map depends on the sample itself (the human benchmark's segmentations)."""
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
        # not on the argmax of their binary map, by the protocols that score points.
        points = adapter.salient_points_for_samples([s for s, _ in keep])
        if points is not None and len(points) != len(keep):
            raise RuntimeError(f"{plan.model}.salient_points_for_samples returned {len(points)} entries "
                               f"for {len(keep)} samples")
        for i, ((s, size), grid) in enumerate(zip(keep, maps)):
            if grid is None:  # the adapter has no map for this sample (bring-your-own maps): counted, not scored
                skipped.append({"sample_id": s.sample_id, "path": s.image_path, "reason": adapter.missing_map_reason()})
                continue
            rec = self.protocol.grounding_record(np.asarray(grid, dtype=np.float32), s, size, adapter.input_geometry)
            if points is not None and points[i] is not None:
                rec.update(self.protocol.points_record(points[i], s, size) or {})
            out.append((s, rec))
        return out, skipped

    def _save_heatmaps(self, plan: PairPlan, adapter: Adapter, samples: list[Sample], queries: dict[str, Query],
                       grids: dict[str, np.ndarray]) -> None:
        """Keep the native grids of the first few samples, for overlays in reports."""
        keep = [s for s in samples if s.has_localization][: max(0, int(self.cfg.save_heatmaps))]
        if not keep:
            return
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, sample_id=np.array([s.sample_id for s in keep]),
                            image_path=np.array([s.image_path for s in keep]),
                            prompt=np.array([queries[s.sample_id].text for s in keep]),
                            sample_json=np.array([json.dumps(s.to_dict(), default=str) for s in keep]),
                            grid=np.stack([grids[s.sample_id] for s in keep]),
                            input_geometry=np.array(adapter.input_geometry))
        atomic_write_bytes(self.out / "heatmaps" / f"{record_stem(plan.dataset, plan.model)}.npz", buf.getvalue())

    def _image_sha(self, path: str) -> str:
        if path not in self._image_shas:
            self._image_shas[path] = file_sha256(path)
        return self._image_shas[path]

    def _ckpt_sha(self, model: str, adapter: Adapter) -> str:
        ckpt = self.cfg.ckpt.get(model) or getattr(adapter, "checkpoint", None)
        if ckpt:
            return checkpoint_sha256(ckpt)
        return adapter.weights_fingerprint() or "none"


class _run_log:
    """Everything the run logs at INFO and above also goes to ``run.log`` in the run folder, whatever
    the console shows (``-q`` keeps the console to warnings)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _run_log:
        root = logging.getLogger()
        self.level = root.level
        self.handlers = [(h, h.level) for h in root.handlers]
        for h, lvl in self.handlers:  # the console keeps its threshold when the root's is lowered
            h.setLevel(max(lvl, self.level))
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(self.handler)
        root.setLevel(min(self.level, logging.INFO) if self.level else logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        self.handler.close()
        root.setLevel(self.level)
        for h, lvl in self.handlers:
            h.setLevel(lvl)


def class_softmax(samples: list[Sample], logits: list[float]) -> list[tuple[float, float]]:
    """(logit, softmax over the classes of the sample's image) per sample: single-label
    classification's probability of each class, as the official pathology evaluation computes it."""
    by_image: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_image.setdefault(s.image_id or s.image_path, []).append(i)
    probs = np.zeros(len(samples))
    values = np.asarray(logits, dtype=np.float64)
    for idx in by_image.values():
        z = values[idx] - values[idx].max()
        e = np.exp(z)
        probs[idx] = e / e.sum()
    return list(zip(values.tolist(), probs.tolist()))


def _concat_rows(adapter: Adapter, rows: list[Any]) -> Any:
    """Text rows concatenated by the adapter; tuples (positive, negative) element by element, so an
    adapter's own ``concat`` (e.g. padding prompt ensembles) sees each kind alone."""
    if isinstance(rows[0], tuple):
        return tuple(adapter.concat([r[i] for r in rows]) for i in range(len(rows[0])))
    return adapter.concat(rows)


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
