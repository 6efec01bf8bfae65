"""Training AFLoc from scratch: ``afloc-bench train afloc --dataset mimic_cxr --data-root PATH``.

Recipe (``configs/paper.yaml``, official ``config.yaml`` + Methods): Adam (lr 2e-5, betas
(0.5, 0.999), weight decay 1e-6, L2 as torch's Adam), lr × 0.9 after every epoch, batch 128,
total-norm gradient clip 0.25, float16 autocast with a GradScaler on CUDA, 5 epochs, validation
loss after every epoch, the checkpoint with the lowest validation loss kept as ``best/``.

Several processes (``torchrun --nproc_per_node N -m benchmark.cli.main train afloc ...`` or
``torchrun ... $(which afloc-bench) train afloc ...``): gloo on CPU, NCCL on GPU. The global
batch stays ``batch_size``; each rank takes ``batch_size / N`` of it (see ``afloc.data`` for the
grouping). Gradients are averaged over ranks after the backward pass (what DDP does; done by
hand so that a rank may run several forward chunks per step), BatchNorm statistics are per rank
and rank 0's running statistics are broadcast after each step (DDP's ``broadcast_buffers``).

Contrastive negatives across ranks (``negatives``):
  * ``local`` (default): each rank's loss uses its own sub-batch only. This is what the official
    two-GPU DataParallel run did (each replica saw 64 pairs), and N ranks give exactly the losses
    of one process with ``forward_chunks = N``.
  * ``global``: features are all-gathered with gradients, so every rank scores its pairs against
    the whole global batch; N ranks then give the loss of one process with ``forward_chunks = N``
    and ``negatives = global`` (a single 128-way contrastive problem, per-rank BatchNorm).

Outputs in ``-o DIR``: ``train_config.json``, ``metrics.csv`` (and TensorBoard events when
installed), ``last/`` (resumable: weights, optimizer, scheduler, scaler and RNG state) and
``best/``, each a checkpoint folder loadable with ``--ckpt afloc=DIR/best``. With ``ema_decay``
both folders hold the averaged weights (validated and selected as such) and ``last/`` also keeps
the optimiser's own weights for resume.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger("afloc.train")
CONFIG_DIR = Path(__file__).parent / "configs"
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
METRIC_BASE = ("time", "epoch", "step", "split", "loss")
METRIC_TAIL = ("lr", "samples_per_s")
# AFLoc's columns (other objectives log their own loss parts between METRIC_BASE and METRIC_TAIL)
METRIC_FIELDS = METRIC_BASE + ("global_loss", "sentence_loss", "word_loss") + METRIC_TAIL


@dataclass
class TrainConfig:
    task: str = "afloc"  # the objective and model family (afloc.train_task.TRAIN_TASKS)
    preset: str = "paper"  # paper | demo | tiny: the model architecture (afloc.config)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's ModelConfig
    text_encoder: str | None = None  # local BERT folder (weights + tokenizer), e.g. Bio_ClinicalBERT
    vocab: str | None = None  # WordPiece vocabulary for randomly initialised text encoders
    pretrained_vision: str | None = "imagenet"
    dataset: str = "mimic_cxr"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = "validate"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-5
    # learning rates for parameters whose name starts with a prefix ({"text_encoder.": 1e-4});
    # the longest matching prefix wins, every other parameter gets ``lr``
    lr_by_prefix: dict[str, float] = field(default_factory=dict)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-6
    lr_gamma: float = 0.9
    grad_clip: float | None = 0.25
    amp: str = "auto"  # auto (CUDA only) | on | off
    forward_chunks: int = 1
    negatives: str = "local"  # local | global
    captions_per_image: int = 5
    compat: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    val_batches: int | None = None
    log_every: int = 10
    save_every_steps: int | None = None
    # random shift/zoom/rotation of training images ({"translate": 0.1, "scale": [0.9, 1.1],
    # "degrees": 5}); off in the paper recipe (the official training has no augmentation)
    augment: dict[str, Any] = field(default_factory=dict)
    image_cache: str | None = None  # a folder of letterboxed frames, or "memory" (with num_workers 0)
    # best/ = the epoch with the lowest validation loss (paper recipe); False: best/ = the last
    # epoch (the demo: its single validation batch of 32 pairs rises while localization improves)
    select_best: bool = True
    # exponential moving average of the weights (0.99: about the last 100 steps), updated after
    # every optimiser step; validation and the saved model use the average (None: off, as in the
    # paper recipe). It smooths the end point of short, noisy from-scratch runs
    ema_decay: float | None = None
    # masked-LM pretraining of the text encoder on the training reports before the contrastive
    # steps ({"steps": 800, "batch_size": 64, "lr": 1e-3}; afloc.text_pretrain): the demo's stand-in
    # for starting from a pretrained BERT (None: off, as in the paper recipe, which loads one)
    text_pretrain: dict[str, Any] | None = None

    @classmethod
    def from_mapping(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown training options {unknown}")
        d = dict(d)
        if "betas" in d and d["betas"] is not None:
            d["betas"] = tuple(float(b) for b in d["betas"])
        if d.get("text_pretrain") is not None:  # checked, and recorded with every option it runs with
            from afloc.text_pretrain import TextPretrainConfig

            d["text_pretrain"] = dataclasses.asdict(
                TextPretrainConfig.from_mapping(d["text_pretrain"], f"{source}: text_pretrain"))
        if d.get("ema_decay") is not None:
            ema = float(d["ema_decay"])
            if not 0.0 < ema < 1.0:
                raise ValueError(f"{source}: ema_decay must be in (0, 1) or null, got {d['ema_decay']!r}")
            d["ema_decay"] = ema
        if d.get("lr_by_prefix"):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                d["lr_by_prefix"] = {str(k): float(v) for k, v in dict(d["lr_by_prefix"]).items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: lr_by_prefix must map name prefixes to numbers, "
                                 f"got {d['lr_by_prefix']!r}") from e
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def param_groups(model: Any, lr: float, lr_by_prefix: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer groups: one per learning rate, ``lr``'s group first (the one ``metrics.csv``
    logs), parameters in model order, so a run without prefixes has the single group it always
    had. A prefix that names no parameter is an error."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    prefixes = sorted(lr_by_prefix, key=len, reverse=True)
    unused = [q for q in prefixes if not any(n.startswith(q) for n, _ in named)]
    if unused:
        raise ValueError(f"lr_by_prefix: no trainable parameter name starts with {unused}")
    groups: dict[float, list[Any]] = {float(lr): []}
    for n, p in named:
        rate = next((float(lr_by_prefix[q]) for q in prefixes if n.startswith(q)), float(lr))
        groups.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": rate} for rate, ps in groups.items() if ps]


def load_train_config(spec: str | None, task: str = "afloc") -> TrainConfig:
    """``paper`` / ``demo`` (the task's shipped YAML) or the path of a YAML file."""
    import yaml

    from afloc.train_task import get_task

    spec = spec or "paper"
    path = get_task(task).config_path(spec) if not spec.endswith((".yaml", ".yml")) else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training config not found (use paper, demo or a YAML file)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of training options")
    data.setdefault("task", task)
    if data["task"] != task:
        raise ValueError(f"{path}: a config of task {data['task']!r}, not {task!r}")
    return TrainConfig.from_mapping(data, str(path))


# ------------------------------------------------------------------------------------------------
class Distributed:
    """torchrun environment (or a single process)."""

    def __init__(self, device_pref: str = "auto"):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        from benchmark.runner import choose_device

        choose_device(device_pref)  # the same names and GPU check as `run`, before anything is built
        cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda") or device_pref.startswith("cuda")
        if device_pref.startswith("cuda:"):
            self.device = device_pref
        elif cuda:
            self.device = f"cuda:{self.local_rank}" if self.world > 1 else "cuda"
        else:
            self.device = "cpu"
        self.initialized_here = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if self.device.startswith("cuda"):
                    torch.cuda.set_device(self.device)
                dist.init_process_group("nccl" if self.device.startswith("cuda") else "gloo")
                self.initialized_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _gather_cat(x, dist_on: bool):
    """All-gather along dim 0 with gradients (see ``_GatherWithGrad``)."""
    return _GatherWithGrad.apply(x) if dist_on else x


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's tensor. Backward: the gathered gradient summed over
    ranks, this rank's slice. (torch.distributed.nn's all_gather passes non-contiguous gradients to
    gloo's all-to-all, which scrambles them; this version makes them contiguous first.)"""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def _gather_nograd(x, dist_on: bool):
    if not dist_on:
        return x
    import torch
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


# ------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False, resume: bool = False,
                 train_pairs=None, val_pairs=None, tokenizer=None):
        from afloc.train_task import get_task

        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.out = Path(out_dir)
        self.quiet = quiet
        self.resume = resume
        self._train_pairs, self._val_pairs, self._tokenizer = train_pairs, val_pairs, tokenizer
        if cfg.negatives not in ("local", "global"):
            raise ValueError(f"negatives must be 'local' or 'global', not {cfg.negatives!r}")
        if cfg.negatives == "global" and not self.task.global_negatives:
            raise ValueError(f"the {cfg.task} objective has no cross-rank negatives; use negatives: local")

    # -- setup ------------------------------------------------------------------------------
    def _build_model(self):
        return self.task.build(self.cfg, self._tokenizer)

    def _pairs(self, split: str | None):
        if split is None:
            return [], {}
        given = self._train_pairs if split == self.cfg.train_split else self._val_pairs
        if given is not None:
            return list(given), {"source": "pairs", "n_samples": len(given)}
        from afloc.data import pairs_from_dataset

        if self.cfg.dataset.startswith("demo"):
            from benchmark.dataset import demo_root, is_demo
            from benchmark.demo import ensure

            if self.cfg.data_root and is_demo(self.cfg.dataset):
                raise ValueError(f"{self.cfg.dataset} reads the generated demo collection ({demo_root()}, set by "
                                 f"AFLOC_BENCH_DEMO), not data_root {self.cfg.data_root!r}; for a real dataset in "
                                 f"its official layout use e.g. --dataset mimic_cxr --data-root PATH")
            ensure(demo_root())
        try:
            return pairs_from_dataset(self.cfg.dataset, split, self.cfg.data_root, **self.cfg.dataset_options)
        except Exception as exc:
            from benchmark.dataset import DataError

            if isinstance(exc, DataError) and "no row has split" in str(exc) and split != self.cfg.train_split:
                log.warning("no %s split (%s); training without validation", split, exc)
                return [], {"error": str(exc)}
            raise

    def setup(self) -> None:
        import torch

        cfg = self.cfg
        if self.resume:
            self._check_resumable(self.out / "last")
        self.dist = Distributed(cfg.device)
        self.device = self.dist.device
        n_groups = self.dist.world * cfg.forward_chunks
        if cfg.batch_size % n_groups:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size x forward_chunks = {n_groups}")
        self.model, self.tokenizer = self._build_model()
        self.model.to(self.device)
        if self.dist.world > 1:  # same initial weights everywhere (DDP semantics)
            import torch.distributed as dist

            for t in self.model.state_dict().values():
                dist.broadcast(t, 0)
        from afloc.data import PretrainingData

        tr_pairs, self.train_info = self._pairs(cfg.train_split)
        va_pairs, self.val_info = self._pairs(cfg.val_split)
        kw = dict(seed=cfg.seed, captions_per_image=cfg.captions_per_image, compat=cfg.compat,
                  image_cache=cfg.image_cache, image_fn=self.task.image_fn, label_fn=self.task.label_fn)
        self.train_data = PretrainingData(tr_pairs, self.tokenizer, augment=cfg.augment, **kw)
        self.val_data = PretrainingData(va_pairs, self.tokenizer, **kw)
        if len(self.train_data) < cfg.batch_size:
            raise ValueError(f"{len(self.train_data)} usable training pairs; fewer than one batch of {cfg.batch_size}")
        self.opt = torch.optim.Adam(param_groups(self.model, cfg.lr, cfg.lr_by_prefix), lr=cfg.lr,
                                    betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=1, gamma=cfg.lr_gamma)
        self.amp = (cfg.amp == "on") or (cfg.amp == "auto" and self.device.startswith("cuda"))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.startswith("cuda"))
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val_loss": None, "best_epoch": None,
                      "history": [], "finished": False}
        if cfg.text_pretrain and not self.resume:  # a resumed run has it in its weights already
            self._pretrain_text(tr_pairs)
        self.ema = self._state_copy() if cfg.ema_decay else None
        if self.resume:
            self._load_state(self.out / "last")
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            from benchmark.records import environment

            doc = {"train": cfg.to_dict(), "model": self.task.model_config(self.model), "world_size": self.dist.world,
                   "environment": environment(self.device),  # threads and SIMD paths decide the weights' last bits
                   "train_data": {**self.train_info, "n_pairs": len(self.train_data),
                                  "n_skipped": len(self.train_data.skipped)},
                   "val_data": {**self.val_info, "n_pairs": len(self.val_data),
                                "n_skipped": len(self.val_data.skipped)}}
            (self.out / "train_config.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
            for what, d in (("training", self.train_data), ("validation", self.val_data)):
                if d.skipped:
                    log.warning("%d %s pairs skipped (report without a usable sentence), e.g. %s",
                                len(d.skipped), what, d.skipped[0]["path"])
        self._tb = None
        if self.dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

    # -- one optimisation (or evaluation) step ------------------------------------------------
    def _forward_terms(self, groups: list[dict], train: bool):
        import torch

        model, dev = self.model, self.device
        chunks = len(groups)
        autocast = torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp) \
            if dev.startswith("cuda") else torch.autocast(device_type="cpu", enabled=False)
        on_device = [{k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in g.items()}
                     for g in groups]
        sums: dict[str, float] = {}
        if self.cfg.negatives == "global":
            terms = self.task.global_terms(model, on_device, autocast, self.dist.world > 1)
            if train:
                self.scaler.scale(terms["loss"]).backward()
            return {k: float(v.detach()) for k, v in terms.items()}
        for g in on_device:
            terms = self.task.loss_terms(model, g, autocast)
            if train:
                self.scaler.scale(terms["loss"] / chunks).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / chunks
        return sums

    def _reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.dist.world == 1:
            return values
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        t /= self.dist.world
        return dict(zip(keys, t.tolist()))

    def _sync_grads(self) -> None:
        if self.dist.world == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        for dtype in {g.dtype for g in grads}:
            bucket = [g for g in grads if g.dtype == dtype]
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= self.dist.world
            for g, s in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(s)

    def _sync_buffers(self) -> None:
        if self.dist.world == 1:
            return
        import torch.distributed as dist

        for b in self.model.buffers():
            dist.broadcast(b, 0)

    def train_step(self, groups: list[dict]) -> dict[str, float]:
        import torch

        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        terms = self._forward_terms(groups, train=True)
        self._sync_grads()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self._sync_buffers()
        if self.ema is not None:
            self._ema_update()
        return self._reduce_mean(terms)

    # -- weight averaging (ema_decay) ---------------------------------------------------------
    def _state_copy(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _ema_update(self) -> None:
        """avg ← d·avg + (1 − d)·w for floating weights and buffers; counters are copied."""
        import torch

        d = float(self.cfg.ema_decay)
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                avg = self.ema[k]
                if avg.is_floating_point():
                    avg.mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    avg.copy_(v)

    @contextlib.contextmanager
    def _averaged(self):
        """Context: the model holds the averaged weights inside, its own weights again after."""
        if self.ema is None:
            yield
            return
        raw = self._state_copy()
        self.model.load_state_dict(self.ema, strict=True)
        try:
            yield
        finally:
            self.model.load_state_dict(raw, strict=True)

    def evaluate(self) -> dict[str, float] | None:
        import torch

        from afloc.data import epoch_batches

        if len(self.val_data) < self.cfg.batch_size:
            return None
        self.model.eval()
        batches = epoch_batches(len(self.val_data), self.cfg.batch_size, 0, self.cfg.seed, shuffle=False)
        if self.cfg.val_batches:
            batches = batches[: self.cfg.val_batches]
        totals: dict[str, float] = {}
        with torch.no_grad(), self._averaged():
            for groups in self._rank_groups(self.val_data, batches, epoch=-1):
                terms = self._forward_terms(groups, train=False)
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + v / len(batches)
        return self._reduce_mean(totals)

    def _rank_groups(self, data, batches, epoch: int, skip: int = 0):
        """Yield, per global batch, this rank's collated groups (DataLoader workers prefetch)."""
        import torch

        from afloc.data import GroupLoader

        cfg, w, r = self.cfg, self.dist.world, self.dist.rank
        mine = range(r * cfg.forward_chunks, (r + 1) * cfg.forward_chunks)
        workers = cfg.num_workers if cfg.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
        loader = torch.utils.data.DataLoader(GroupLoader(data, batches[skip:], epoch, w * cfg.forward_chunks, mine),
                                             batch_size=None, shuffle=False, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0),
                                             persistent_workers=False, prefetch_factor=2 if workers else None)
        buf = []
        for item in loader:
            buf.append(item)
            if len(buf) == cfg.forward_chunks:
                yield buf
                buf = []

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from afloc.data import epoch_batches

        cfg, st = self.cfg, self.state
        t_start = time.time()
        deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None
        stop = False
        show = self.dist.main and not self.quiet and sys.stderr.isatty()
        while st["epoch"] < cfg.epochs and not stop:
            epoch = st["epoch"]
            batches = epoch_batches(len(self.train_data), cfg.batch_size, epoch, cfg.seed)
            skip = st["step_in_epoch"]
            bar = tqdm(total=len(batches), initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                       unit="batch", leave=False)
            t0, n0 = time.time(), 0
            for groups in self._rank_groups(self.train_data, batches, epoch, skip):
                terms = self.train_step(groups)
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                n0 += cfg.batch_size
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.3f}")
                if st["global_step"] % max(1, cfg.log_every) == 0 or st["step_in_epoch"] == len(batches):
                    rate = n0 / max(1e-9, time.time() - t0)
                    self._log("train", terms, rate)
                    t0, n0 = time.time(), 0
                if cfg.save_every_steps and st["global_step"] % cfg.save_every_steps == 0:
                    self._save("last")
                if (cfg.max_steps and st["global_step"] >= cfg.max_steps) or (deadline and time.time() > deadline):
                    stop = True
                    break
            bar.close()
            if st["step_in_epoch"] >= len(batches):  # epoch complete
                self.sched.step()
                st["epoch"] += 1
                st["step_in_epoch"] = 0
                val = self.evaluate()
                rec = {"epoch": st["epoch"], "global_step": st["global_step"],
                       "val_loss": None if val is None else val["loss"]}
                st["history"].append(rec)
                improved = False
                if val is not None:
                    self._log("val", val, None)
                    if st["best_val_loss"] is None or val["loss"] < st["best_val_loss"]:
                        st["best_val_loss"], st["best_epoch"] = val["loss"], st["epoch"]
                        improved = True
                by_val = val is not None and cfg.select_best
                if improved or not by_val:  # without selection best/ follows the last epoch
                    self._save("best")
                if self.dist.main and not self.quiet:
                    vl = "n/a" if val is None else f"{val['loss']:.4f}"
                    log.info("epoch %d/%d done: step %d, val_loss %s", st["epoch"], cfg.epochs, st["global_step"], vl)
        st["finished"] = st["epoch"] >= cfg.epochs
        st["elapsed_s"] = st.get("elapsed_s", 0.0) + time.time() - t_start
        self._save("last")
        if not (self.out / "best").exists() and self.dist.main:
            self._save("best")
        if self._tb is not None:
            self._tb.close()
        self.dist.barrier()
        return dict(st)

    # -- records ----------------------------------------------------------------------------------
    def _pretrain_text(self, pairs) -> None:
        """Masked-LM steps on the training reports (main process; the result is broadcast)."""
        from afloc.data import Pair
        from afloc.text import report_sentences
        from afloc.text_pretrain import TextPretrainConfig, pretrain_text_encoder

        cfg = self.cfg
        mlm = TextPretrainConfig.from_mapping(cfg.text_pretrain)
        bert = self.task.text_bert(self.model)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            reports = [p.report if isinstance(p, Pair) else p[1] for p in pairs]
            texts = [". ".join(report_sentences(r, cfg.captions_per_image, False)) for r in reports]
            texts = [t for t in texts if t]  # reports without a usable sentence (counted below)

            def on_log(step: int, loss: float, lr: float) -> None:
                self._append_metrics({"time": f"{time.time():.3f}", "epoch": 0, "step": step,
                                      "split": "text_pretrain", "loss": loss, "lr": lr, "samples_per_s": None})

            t0 = time.time()
            losses = pretrain_text_encoder(bert, self.tokenizer, texts, mlm, seed=cfg.seed, device=self.device,
                                           on_log=on_log, log_every=max(1, cfg.log_every),
                                           progress=not self.quiet and sys.stderr.isatty())
            log.info("masked-LM pretraining: %d steps on %d reports (%d without a usable sentence left out), "
                     "loss %.3f -> %.3f (%.0f s)", mlm.steps, len(texts), len(reports) - len(texts), losses[0],
                     losses[-1], time.time() - t0)
        if self.dist.world > 1:
            import torch.distributed as dist

            for t in bert.state_dict().values():
                dist.broadcast(t, 0)

    def _log(self, split: str, terms: dict[str, float], rate: float | None) -> None:
        if not self.dist.main:
            return
        row = {"time": f"{time.time():.3f}", "epoch": self.state["epoch"], "step": self.state["global_step"],
               "split": split, "loss": terms.get("loss"), **self.task.metric_row(terms),
               "lr": self.opt.param_groups[0]["lr"], "samples_per_s": None if rate is None else round(rate, 3)}
        self._append_metrics(row)
        if self._tb is not None:
            for k in ("loss",) + tuple(self.task.metric_columns):
                if row[k] is not None:
                    self._tb.add_scalar(f"{split}/{k}", row[k], self.state["global_step"])

    def _append_metrics(self, row: dict[str, Any]) -> None:
        fields = METRIC_BASE + tuple(self.task.metric_columns) + METRIC_TAIL
        path = self.out / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow(row)

    def _save(self, which: str) -> None:
        """Atomic checkpoint folder: model + config + tokenizer (+ optimizer and trainer state)."""
        if not self.dist.main:
            return
        import torch
        from safetensors.torch import save_file

        final = self.out / which
        tmp = self.out / f".{which}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        extra = {"training": {"epoch": self.state["epoch"], "global_step": self.state["global_step"],
                              "best_val_loss": self.state["best_val_loss"], "ema_decay": self.cfg.ema_decay}}
        with self._averaged():  # with ema_decay the folder's model is the average (what gets evaluated)
            self.task.save(self.model, tmp, extra)
        tensors: dict[str, torch.Tensor] = {}
        if self.ema is not None:  # the optimiser's own weights, for resume
            for k, v in self.model.state_dict().items():
                tensors[f"raw.{k}"] = v.detach().cpu().contiguous()
        opt_sd = self.opt.state_dict()
        layout: dict[str, Any] = {"param_groups": opt_sd["param_groups"], "state": {}}
        for pid, pstate in opt_sd["state"].items():
            layout["state"][str(pid)] = {}
            for k, v in pstate.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                    layout["state"][str(pid)][k] = {"tensor": f"opt.{pid}.{k}"}
                else:
                    layout["state"][str(pid)][k] = {"value": v}
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / OPTIM_FILE))
        doc = {"trainer": self.state, "optimizer": layout, "scheduler": self.sched.state_dict(),
               "scaler": self.scaler.state_dict(), "train_config": self.cfg.to_dict(), "world_size": self.dist.world}
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        old = self.out / f".{which}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def _check_resumable(self, folder: Path) -> None:
        """Before anything is built: the folder holds a run of this task."""
        from afloc.checkpoint import CheckpointError

        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(folder, f"nothing to resume (expected {STATE_FILE} from an earlier run)")
        done = json.loads((folder / STATE_FILE).read_text()).get("train_config", {}).get("task", "afloc")
        if done != self.cfg.task:
            raise CheckpointError(folder, f"a run of task {done!r}, not {self.cfg.task!r}")

    def _load_state(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        from afloc.checkpoint import CheckpointError

        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(folder, f"nothing to resume (expected {STATE_FILE} from an earlier run)")
        doc = json.loads((folder / STATE_FILE).read_text())
        self.task.load_weights(self.model, folder)
        self.model.to(self.device)
        tensors = load_file(str(folder / OPTIM_FILE))
        raw = {k[len("raw."):]: v for k, v in tensors.items() if k.startswith("raw.")}
        if self.ema is not None:
            if not raw:
                raise CheckpointError(folder, "a run without ema_decay; resume it without ema_decay")
            self.ema = self._state_copy()  # the saved average
            self.model.load_state_dict(raw, strict=True)
        elif raw:
            raise CheckpointError(folder, f"a run with ema_decay {doc.get('train_config', {}).get('ema_decay')}; "
                                          "resume it with the same ema_decay")
        layout = doc["optimizer"]
        state = {}
        for pid, pstate in layout["state"].items():
            state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in pstate.items()}
        self.opt.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
        self.sched.load_state_dict(doc["scheduler"])
        if doc.get("scaler"):
            self.scaler.load_state_dict(doc["scaler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available():
            cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
        self.state = doc["trainer"]
        if doc.get("world_size", 1) != self.dist.world:
            log.warning("resuming a run of %s process(es) with %s", doc.get("world_size"), self.dist.world)

    def close(self) -> None:
        if getattr(self, "dist", None) is not None:  # setup may have failed before it started processes
            self.dist.close()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------------
def build_parser(task: str = "afloc") -> argparse.ArgumentParser:
    what = "AFLoc" if task == "afloc" else f"the {task} baseline"
    p = argparse.ArgumentParser(
        prog=f"afloc-bench train {task}",
        description=f"Train {what} from scratch (paper recipe by default; --dataset demo_mimic trains the demo "
                    "model) on the shared trainer.",
        epilog="examples:\n"
               "  afloc-bench train afloc --dataset mimic_cxr --data-root /data/mimic-cxr-jpg "
               "--text-encoder /models/Bio_ClinicalBERT -o runs/afloc\n"
               "  afloc-bench train afloc --dataset demo_mimic\n"
               "  torchrun --nproc_per_node 2 $(which afloc-bench) train afloc --dataset demo_mimic -o runs/ddp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, help="registered training dataset (mimic_cxr, demo_mimic)")
    p.add_argument("--data-root", default=None, help="dataset root folder (or template with {dataset})")
    p.add_argument("--config", default=None, help="paper (default), demo (default for demo_mimic) or a YAML file")
    p.add_argument("-o", "--output", default=None, help="run folder (default results/runs/train-afloc-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last/ checkpoint")
    p.add_argument("--text-encoder", default=None, help="local BERT folder with weights and tokenizer (Bio_ClinicalBERT)")
    p.add_argument("--vocab", default=None, help="vocab.txt for a randomly initialised text encoder")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: cores-1, max 4)")
    p.add_argument("--forward-chunks", type=int, default=None, help="contrastive sub-batches per step and process")
    p.add_argument("--negatives", choices=("local", "global"), default=None, help="DDP negatives (default local)")
    p.add_argument("--image-cache", default=None,
                   help="folder caching letterboxed 224 images between epochs, or 'memory' (with --num-workers 0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training option (YAML value), e.g. --set grad_clip=null --set model.loss.temp3=10")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, task: str = "afloc") -> TrainConfig:
    import yaml

    spec = args.config or ("demo" if (args.dataset or "").startswith("demo") else "paper")
    cfg = load_train_config(spec, task)
    d = cfg.to_dict()
    for flag, key in (("dataset", "dataset"), ("data_root", "data_root"), ("text_encoder", "text_encoder"),
                      ("vocab", "vocab"), ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("max_steps", "max_steps"), ("max_minutes", "max_minutes"), ("device", "device"),
                      ("num_workers", "num_workers"), ("forward_chunks", "forward_chunks"),
                      ("negatives", "negatives"), ("image_cache", "image_cache"), ("seed", "seed")):
        v = getattr(args, flag)
        if v is not None:
            d[key] = v
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        parts = key.split(".")
        tgt = d
        for part in parts[:-1]:
            tgt = tgt.setdefault(part, {})
        tgt[parts[-1]] = value
    return TrainConfig.from_mapping(d, "command line")


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False, resume: bool = False,
          **kwargs) -> dict[str, Any]:
    """Run a training (library entry point; ``kwargs`` go to ``Trainer``)."""
    t = Trainer(cfg, out_dir, quiet=quiet, resume=resume, **kwargs)
    try:
        t.setup()
        return t.train()
    finally:
        t.close()


def cli_main(argv: Sequence[str], task: str = "afloc") -> int:
    """``afloc-bench train TASK ...`` (afloc, gloria, convirt, biovil, medklip)."""
    args = build_parser(task).parse_args(list(argv))
    prog = f"afloc-bench train {task}"
    try:
        cfg = config_from_args(args, task)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output or Path("results/runs") / time.strftime(f"train-{task}-%Y%m%d-%H%M%S"))
    if out.exists() and (out / "last").exists() and not args.resume:
        print(f"{prog}: error: {out} already holds a run; use --resume or another -o", file=sys.stderr)
        return 2
    from afloc.checkpoint import CheckpointError
    from benchmark.dataset import DataError

    try:
        state = train(cfg, out, quiet=args.quiet, resume=args.resume)
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        best = state.get("best_val_loss")
        print(f"trained {state['global_step']} steps, {state['epoch']} epoch(s) in {state.get('elapsed_s', 0):.0f} s; "
              f"best val_loss {best if best is None else round(best, 4)}; checkpoints in {out}/best and {out}/last")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli_main(sys.argv[1:]))
