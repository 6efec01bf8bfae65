"""What every fine-tuning task shares: the run folder (refusing to overwrite, resuming), the id
lists, the resumable epoch loop with early stopping, safetensors checkpoints and the seeds summary.

The tasks (``seg``, ``cls``) supply the model, one training epoch and the validation scores; the
loop here decides when to stop, keeps the best epoch's weights and checkpoints every epoch, so the
two tasks resume, select and record the same way. Under torchrun (``Processes``) every process takes
its share of each batch, gradients are averaged with the pretraining trainer's helpers
(``benchmark.training.distributed``) and process 0 writes the files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from benchmark.finetune.fractions import ids_text, sha256_text
from benchmark.io.checkpoints import optimizer_from_safetensors, optimizer_to_safetensors
from benchmark.records import atomic_write_json, atomic_write_text, now_iso

log = logging.getLogger("afloc_bench.finetune")
STATE_FILE, MODEL_FILE, OPTIM_FILE = "state.json", "model.safetensors", "optim.safetensors"
BEST_FILE = "best.safetensors"


class ResumeError(ValueError):
    """A checkpoint folder that cannot be resumed by this run (names the folder)."""


class Processes:
    """The processes of a run: one, or torchrun's (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on GPUs).

    Every process holds the whole data and the same weights, draws the same batch order and
    augmentation, and trains on its share of each batch (``share``); ``backward`` averages the
    gradients so that a step moves the weights as the whole batch's mean loss would (BatchNorm
    statistics and MGCA's soft-Dice term are per share, as with DistributedDataParallel); after
    each epoch process 0's BatchNorm buffers are broadcast, so validation and selection agree."""

    def __init__(self, device: str | None):
        from benchmark.training.distributed import Distributed

        self.dist = Distributed(device or "auto")
        d = self.dist
        self.world, self.rank, self.main, self.device = d.world, d.rank, d.main, d.device

    def share(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.rank::self.world]

    def start(self, net) -> None:
        """Process 0's initial weights everywhere."""
        if self.world > 1:
            import torch.distributed as dist

            for t in net.state_dict().values():
                dist.broadcast(t, 0)

    def backward(self, loss: torch.Tensor | None, n_share: int, n_batch: int, params: list) -> None:
        """Backward of this share's mean ``loss`` (None: an empty share) and the gradients averaged."""
        from benchmark.training.distributed import average_gradients

        if self.world == 1:
            loss.backward()
            return
        if loss is None:  # nothing of this batch here: zero gradients, so the all-reduce still matches
            loss = sum(p.sum() for p in params) * 0.0
        (loss * (n_share * self.world / n_batch)).backward()
        for p in params:  # parameters this share's forward did not reach
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average_gradients(params, self.world)

    def end_epoch(self, net, values: dict[str, float], n: int) -> dict[str, float]:
        """Broadcast the BatchNorm buffers; the epoch's training means (over this process's ``n``
        images) as means over every process's images."""
        from benchmark.training.distributed import broadcast_buffers, reduce_mean

        broadcast_buffers(net, self.world)
        if self.world == 1:
            return values
        sums = reduce_mean({**{k: v * n for k, v in values.items()}, "\0n": float(n)}, self.world, self.device)
        total = sums.pop("\0n")
        return {k: v / max(total, 1e-12) for k, v in sums.items()}

    def agree(self, values: dict[str, float]) -> dict[str, float]:
        """Validation scores every process computed on the same weights: their mean, the same bits everywhere."""
        from benchmark.training.distributed import reduce_mean

        return reduce_mean(values, self.world, self.device)

    def barrier(self) -> None:
        self.dist.barrier()


_PROCESSES: dict[str, Processes] = {}


def processes(device: str | None) -> Processes:
    """This program's processes (one process group for all the runs of a command: several seeds)."""
    key = device or "auto"
    if key not in _PROCESSES:
        _PROCESSES[key] = Processes(device)
    return _PROCESSES[key]


def close_processes() -> None:
    """Leave the process group (the end of a fine-tuning command)."""
    for p in _PROCESSES.values():
        p.dist.close()
    _PROCESSES.clear()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0



# -------------------------------------------------------------------------------------------------
# run folder
# -------------------------------------------------------------------------------------------------
def finished_run(out: Path, resume: bool) -> dict[str, Any] | None:
    """The recorded results of a finished run in ``out`` (with ``--resume``), else None; refuses to
    overwrite a finished or unfinished run without ``--resume``."""
    if (out / "results.json").is_file():
        if not resume:
            raise ResumeError(f"{out}: holds a finished run (results.json); choose another -o or pass --resume")
        log.info("%s: finished earlier (results.json); nothing to resume", out)
        return json.loads((out / "results.json").read_text())
    if not resume and (out / "checkpoint").exists():
        raise ResumeError(f"{out}: holds an unfinished run (checkpoint/); pass --resume to continue it")
    return None


def write_ids(out: Path, splits: dict[str, Any], write: bool = True) -> dict[str, Any]:
    """``ids/{train,validation,test}.txt`` and ``ids/train_patients.txt``; their counts and hashes
    (``write=False``: the record only, for the processes other than 0)."""
    record = {}
    for part in ("train", "validation", "test"):
        text = ids_text([i.image_id for i in splits[part]])
        if write:
            atomic_write_text(out / "ids" / f"{part}.txt", text)
        record[part] = {"file": f"ids/{part}.txt", "images": len(splits[part]),
                        "patients": len(splits["patients"][part]), "sha256": sha256_text(text),
                        "positive_images": sum(i.positive for i in splits[part])}
    if write:
        atomic_write_text(out / "ids" / "train_patients.txt", ids_text(splits["patients"]["train"]))
    return record


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(header))
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_epochs(out: Path, history: list[dict[str, Any]]) -> None:
    header = list(history[0]) if history else ["epoch"]
    write_csv(out / "epochs.csv", header, [[row.get(k) for k in header] for row in history])


def to_tensor(imgs: np.ndarray, cfg, device: str) -> torch.Tensor:
    """uint8 grey images [N, S, S] → the encoder's input: 3 equal channels normalised by ``cfg.mean/std``."""
    x = torch.from_numpy(imgs).float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def hash_config(cfg) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "source")}
    return sha256_text(json.dumps(d, sort_keys=True))


# -------------------------------------------------------------------------------------------------
# checkpoints
# -------------------------------------------------------------------------------------------------
def save_checkpoint(folder: Path, model, opt, state: dict[str, Any]) -> None:
    """Atomic folder: weights and optimiser tensors (safetensors) + JSON state; no pickles."""
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
    tensors, layout = optimizer_to_safetensors(opt)
    save_file(tensors or {"empty": torch.zeros(1)}, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "optimizer": layout}, indent=1, default=float) + "\n")
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model, opt, identity: dict[str, Any]) -> dict[str, Any]:
    if not (folder / STATE_FILE).is_file():
        raise ResumeError(f"{folder}: nothing to resume (expected {STATE_FILE} from an earlier run)")
    doc = json.loads((folder / STATE_FILE).read_text())
    if doc.get("identity") != identity:
        diff = sorted(k for k in set(identity) | set(doc.get("identity", {}))
                      if identity.get(k) != doc.get("identity", {}).get(k))
        raise ResumeError(f"{folder}: a run with other settings ({', '.join(diff)}); resume with the same ones")
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
    tensors = load_file(str(folder / OPTIM_FILE))
    layout = doc.pop("optimizer")
    optimizer_from_safetensors(opt, tensors, layout)
    return doc


def start_state(out: Path, net, opt, identity: dict[str, Any], resume: bool,
                load: Callable[..., dict[str, Any]] = load_checkpoint) -> dict[str, Any]:
    """A fresh loop state, or the checkpoint's with ``--resume`` (the weights and optimiser loaded)."""
    state: dict[str, Any] = {"identity": identity, "epoch": 0, "history": [], "best": None, "best_epoch": None,
                             "bad_epochs": 0, "stopped": None}
    if resume and (out / "checkpoint").exists():
        state = load(out / "checkpoint", net, opt, identity)
        log.info("resuming %s after epoch %d", out, state["epoch"])
    elif resume:
        log.info("%s: no checkpoint/ to resume; starting from epoch 1", out)
    return state


# -------------------------------------------------------------------------------------------------
# the epoch loop
# -------------------------------------------------------------------------------------------------
def fit(out: Path, net, opt, state: dict[str, Any], *, epochs: int, metric: str, patience: int,
        train_epoch: Callable[[int], dict[str, float]], validate: Callable[[], dict[str, float]],
        save: Callable[..., None] = save_checkpoint, describe: Callable[[dict[str, Any]], str] | None = None,
        procs: Processes | None = None) -> None:
    """Train until ``patience`` epochs without a better ``metric`` (``val_loss``: lower is better,
    any other: higher) or ``epochs`` (``train_epoch`` returns its means and ``images``, their count);
    the best epoch's weights go to ``best.safetensors`` and every epoch ends with a checkpoint
    (``save``), so an interrupted run resumes where it stopped. Under torchrun (``procs``) the
    processes agree on every score and process 0 writes the files."""
    main = procs is None or procs.main
    while state["stopped"] is None and state["epoch"] < epochs:
        ep = state["epoch"] + 1
        trained = train_epoch(ep)
        n_images = trained.pop("images", 0)  # this process's training images of the epoch
        if procs is not None:
            trained = procs.end_epoch(net, trained, n_images)
        checked = validate()
        row = {"epoch": ep, **trained, **(procs.agree(checked) if procs is not None else checked)}
        state["history"].append(row)
        score = -row[metric] if metric == "val_loss" else row[metric]
        if state["best"] is None or score > state["best"]:
            state.update(best=score, best_epoch=ep, bad_epochs=0)
            if main:
                save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                          str(out / ".best.tmp"))
                os.replace(out / ".best.tmp", out / BEST_FILE)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = ep
        if state["bad_epochs"] >= patience:
            state["stopped"] = f"early stop: {metric} did not improve for {patience} epochs"
        if main:
            log.info("epoch %d: %s", ep, describe(row) if describe else
                     ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
            save(out / "checkpoint", net, opt, state)
        if procs is not None:
            procs.barrier()  # the checkpoint and best weights are on disk before anyone reads them
    state["stopped"] = state["stopped"] or f"max_epochs ({epochs})"


def load_best(out: Path, net) -> None:
    net.load_state_dict(load_file(str(out / BEST_FILE)), strict=True)


# -------------------------------------------------------------------------------------------------
# several seeds
# -------------------------------------------------------------------------------------------------
def aggregate(runs: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Mean ± sample SD of the test ``metrics`` over seeds (SD null for one seed)."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "n": len(runs)}
    for k in metrics:
        vals = np.array([r["test"][k]["value"] for r in runs if r["test"][k]["value"] is not None], float)
        out[k] = {"mean": float(vals.mean()) if vals.size else None,
                  "sd": float(vals.std(ddof=1)) if vals.size > 1 else None, "values": vals.tolist()}
    return out


def run_seeds(run_one: Callable[..., dict[str, Any]], fmt: str, metrics: Sequence[str], seeds: list[int],
              out: str | os.PathLike, extra: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
    """One run per seed under ``out/seed<S>`` and ``out/summary.json`` with mean ± SD of ``metrics``;
    ``extra``: keys of the first run's record copied into the summary."""
    out = Path(out)
    runs = [run_one(seed=s, out=out / f"seed{s}", **kwargs) for s in seeds]
    first = runs[0]
    summary = {"format": fmt + "-summary", "format_version": 1, "date": now_iso(), "model": first["model"],
               "dataset": first["dataset"], "fraction": first["fraction"], **{k: first.get(k) for k in extra},
               "config": first["config"], "runs": [f"seed{s}/results.json" for s in seeds],
               "test": aggregate(runs, metrics)}
    if is_main_process():
        atomic_write_json(out / "summary.json", summary)
    return summary
