"""Sharded runs: each process scores a share of every dataset's images; ``merge`` joins the shards.

A shard (``--shard i/N``, or one rank of ``torchrun``) scores the batches ``b`` with ``b % N == i``
of each task's images, in the dataset's order (all samples of an image stay together, and each
batch holds the images one process would put in it, so the model outputs are the same bits), and
writes its per-sample records with their position in the whole dataset, and, where the protocol
tunes on a validation split, its share of the tuning records. It summarises nothing. ``merge``
puts each pair's records back in dataset order, tunes on all tuning records and summarises
exactly as one process does, so its ``results.json`` holds the same numbers as a run of all
samples in one process.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.sample import Sample

POSITION = "_position"  # a record's place among the dataset's samples (shard records only)


def shard_samples(samples: Sequence[Sample], index: int, count: int, block: int = 1) -> list[Sample]:
    """The samples of the images in blocks ``b`` with ``b % count == index``: images in order of first
    appearance, ``block`` consecutive images per block. With the run's batch size as the block, a
    shard's batches are the batches one process makes of the same images (same batch, same bits)."""
    order: dict[str, int] = {}
    for s in samples:
        order.setdefault(s.image_path, len(order))
    return [s for s in samples if (order[s.image_path] // block) % count == index]


def with_positions(records: Any, samples: Sequence[Sample], where: str) -> Any:
    """``records`` with the column ``POSITION``: each row's sample position in ``samples``."""
    position: dict[str, int] = {}
    for k, s in enumerate(samples):
        if position.setdefault(s.sample_id, k) != k:
            raise ValueError(f"{where}: sample id {s.sample_id!r} occurs twice; a sharded run needs unique ids")
    return records.assign(**{POSITION: records["sample_id"].map(position).astype("int64")})


def in_order(frames: list[Any], task: str) -> Any:
    """The rows of ``task`` of several shards' records, in dataset order, without ``POSITION``."""
    import pandas as pd

    parts = [f[f["task"] == task] for f in frames if len(f)]
    if not parts:
        return pd.DataFrame()
    joined = pd.concat(parts, ignore_index=True).sort_values(POSITION, kind="stable")
    return joined.drop(columns=[POSITION]).reset_index(drop=True)


def add_counts(values: list[Any]) -> Any:
    """The shards' values of one counter joined: ints added, dicts key by key, lists concatenated
    (the first 50 entries, as ``describe`` keeps); anything else is the first shard's."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        return {k: add_counts([v.get(k, 0) for v in values]) for k in values[0]}
    if all(isinstance(v, list) for v in values):
        return [x for v in values for x in v][:50]
    return values[0]


def merged_model_record(records: list[dict[str, Any]], counters: Sequence[str]) -> dict[str, Any]:
    """A model's record of the joined run: the first shard's, with its ``counters`` added up."""
    out = dict(records[0])
    for key in counters:
        if all(key in r for r in records):
            out[key] = add_counts([r[key] for r in records])
    return out


def read_shard(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a shard's results.json ({exc})") from None
    if not isinstance(doc.get("shard"), dict):
        raise ValueError(f"{path}: not a shard of a run (no 'shard' entry); expected the output of run --shard i/N")
    return doc


def check_shards(folders: Sequence[Path], docs: Sequence[dict[str, Any]]) -> None:
    """All shards of one run, each once: the same settings, indices 0..N-1."""
    count = docs[0]["shard"]["count"]
    seen: dict[int, Path] = {}
    for folder, doc in zip(folders, docs):
        if doc["shard"]["count"] != count:
            raise ValueError(f"{folder}: shard of {doc['shard']['count']} processes; {folders[0]} is of {count}")
        i = doc["shard"]["index"]
        if i in seen:
            raise ValueError(f"{folder}: shard {i}/{count} given twice (also {seen[i]})")
        seen[i] = folder
        a = {k: v for k, v in doc["config"].items() if k not in ("shard", "output", "quiet")}
        b = {k: v for k, v in docs[0]["config"].items() if k not in ("shard", "output", "quiet")}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"{folder}: run settings differ from {folders[0]} ({', '.join(diff)})")
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ValueError(f"shards {', '.join(f'{i}/{count}' for i in missing)} missing; give every shard's folder")


def merge(folders: Sequence[str | Path], output: str | Path) -> dict[str, Any]:
    """Join the shard folders of one run into the run folder ``output``; returns its results."""
    from benchmark.run.config import RunConfig
    from benchmark.run.engine import Runner

    dirs = [Path(f) for f in folders]
    if not dirs:
        raise ValueError("merge needs the folders of a run's shards")
    docs = [read_shard(d) for d in dirs]
    check_shards(dirs, docs)
    config = {**docs[0]["config"], "shard": None, "output": str(output)}
    runner = Runner(RunConfig.from_mapping(config, "shard config"))
    state = runner.merge_shards(dirs, docs)
    for d in dirs:  # the saved example heatmaps of every shard
        src = d / "heatmaps"
        if src.is_dir():
            shutil.copytree(src, runner.out / "heatmaps", dirs_exist_ok=True)
    return state
