"""Training AFLoc from scratch: ``afloc-bench train afloc --dataset mimic_cxr --data-root PATH``.

Recipe (``configs/paper.yaml``, official ``config.yaml`` + Methods): Adam (lr 2e-5, betas
(0.5, 0.999), weight decay 1e-6, L2 as torch's Adam), lr × 0.9 after every epoch, batch 128,
total-norm gradient clip 0.25, float16 autocast with a GradScaler on CUDA, 5 epochs, validation
loss after every epoch, the checkpoint with the lowest validation loss kept as ``best/``.

Several processes (``torchrun --nproc_per_node N -m benchmark.cli.main train afloc ...`` or
``torchrun ... $(which afloc-bench) train afloc ...``): gloo on CPU, NCCL on GPU. The global
batch stays ``batch_size``; each rank takes ``batch_size / N`` of it (see ``benchmark.training.data`` for the
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

import contextlib
import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from benchmark.io.checkpoints import CheckpointError, optimizer_from_safetensors, optimizer_to_safetensors
from benchmark.progress import Progress
from benchmark.training.captions import report_sentences
from benchmark.training.config import TrainConfig
from benchmark.training.data import (
    FRAME_SIZE,
    GroupLoader,
    Pair,
    PretrainingData,
    dataset_pairs,
    epoch_batches,
    select_pairs,
)
from benchmark.training.distributed import Distributed, average_gradients, broadcast_buffers, reduce_mean
from benchmark.training.task import get_task
from benchmark.training.text_pretrain import TextPretrainConfig, pretrain_text_encoder

log = logging.getLogger("benchmark.training.trainer")
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
METRIC_BASE = ("time", "epoch", "step", "split", "loss")
METRIC_TAIL = ("lr", "samples_per_s")
# AFLoc's columns (other objectives log their own loss parts between METRIC_BASE and METRIC_TAIL)
METRIC_FIELDS = METRIC_BASE + ("global_loss", "sentence_loss", "word_loss") + METRIC_TAIL


def frame_decode(image_flag: int) -> str:
    """The read of a training image for the official ``data.image.flag``: gray (0) or colour (1)."""
    return "cv2-bgr" if image_flag else "cv2-gray"


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


# ------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False, resume: bool = False,
                 train_pairs=None, val_pairs=None, tokenizer=None):

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
        if cfg.prepared and self.task.image_fn is not None:
            raise ValueError(f"the {cfg.task} objective reads image files with its own transform, not the "
                             f"letterboxed frames of a prepared set; train it without --prepared")
        if cfg.prepared and cfg.select_labels:
            raise ValueError("select_labels filters the dataset's pairs; a prepared set is read whole: train "
                             "without --prepared")
        if cfg.prepared and train_pairs is not None:
            raise ValueError("give training pairs or a prepared set (prepared), not both")
        self.prepared = None

    # -- setup ------------------------------------------------------------------------------
    def _build_model(self):
        return self.task.build(self.cfg, self._tokenizer)

    def _pairs(self, split: str | None):
        if split is None:
            return [], {}
        given = self._train_pairs if split == self.cfg.train_split else self._val_pairs
        if given is not None:
            return list(given), {"source": "pairs", "n_samples": len(given)}
        if self.prepared is not None and split == self.cfg.train_split:
            return self.prepared.pairs(), self.prepared.info()
        try:
            return dataset_pairs(self.cfg.dataset, split, self.cfg.data_root, **self.cfg.dataset_options)
        except Exception as exc:
            from benchmark.dataset import DataError

            if isinstance(exc, DataError) and "no row has split" in str(exc) and split != self.cfg.train_split:
                log.warning("no %s split (%s); training without validation", split, exc)
                return [], {"error": str(exc)}
            raise

    def _open_prepared(self):
        """The prepared folder of ``cfg.prepared``, checked against this run's dataset, split and frame size."""
        from benchmark.dataset import DataError
        from benchmark.training.prepared import load_prepared

        cfg = self.cfg
        prep = load_prepared(cfg.prepared, image_size=FRAME_SIZE)
        m = prep.meta
        want = (cfg.dataset, cfg.train_split, dict(cfg.dataset_options or {}))
        have = (m["dataset"], m["split"], dict(m.get("dataset_options") or {}))
        if want != have:
            raise DataError(prep.folder, f"a prepared {have[0]}/{have[1]} set (options {have[2]}), but this run "
                                         f"trains on {want[0]}/{want[1]} (options {want[2]}); drop --dataset or "
                                         f"prepare the set it names")
        decode = str(m.get("decode", "cv2-gray"))
        if decode != frame_decode(cfg.image_flag):
            raise DataError(prep.folder, f"frames read with {decode}, but this run's image_flag {cfg.image_flag} "
                                         f"reads {frame_decode(cfg.image_flag)}; prepare with --image-flag "
                                         f"{cfg.image_flag}")
        return prep

    def setup(self) -> None:

        cfg = self.cfg
        if self.resume:
            self._check_resumable(self.out / "last")
        if cfg.prepared:  # before anything is built: a wrong folder is a one-line error
            self.prepared = self._open_prepared()
        self.dist = Distributed(cfg.device)
        self.device = self.dist.device
        n_groups = self.dist.world * cfg.forward_chunks
        if cfg.batch_size % n_groups:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by "
                             f"world_size x forward_chunks = {n_groups}")
        self.model, self.tokenizer = self._build_model()
        self.model.to(self.device)
        if self.dist.world > 1:  # same initial weights everywhere (DDP semantics)
            import torch.distributed as dist

            for t in self.model.state_dict().values():
                dist.broadcast(t, 0)

        tr_pairs, self.train_info = self._pairs(cfg.train_split)
        va_pairs, self.val_info = self._pairs(cfg.val_split)
        if cfg.select_labels:  # e.g. the normal images only (objectives trained on normal images)
            for what, pairs, info in (("training", tr_pairs, self.train_info), ("validation", va_pairs, self.val_info)):
                kept, counts = select_pairs(pairs, cfg.select_labels)
                info.update(counts)
                pairs[:] = kept
                if self.dist.main:
                    log.info("select_labels %s: %d %s pairs kept, %d dropped (%d without labels)", cfg.select_labels,
                             len(kept), what, counts["n_not_selected"], counts["n_without_labels"])
        kw = dict(seed=cfg.seed, captions_per_image=cfg.captions_per_image, compat=cfg.compat,
                  image_cache=cfg.image_cache, image_fn=self.task.image_fn, frame_input=self.task.frame_input,
                  label_fn=self.task.label_fn, captions=getattr(self.task, "uses_captions", True),
                  decode=frame_decode(cfg.image_flag))
        if self.prepared is not None:  # training frames from the table; validation still reads its files
            kw_train = {**kw, "image_cache": None, "frames": self.prepared.frames}
        else:
            kw_train = kw
        self.train_data = PretrainingData(tr_pairs, self.tokenizer, augment=cfg.augment, **kw_train)
        self.val_data = PretrainingData(va_pairs, self.tokenizer, **kw)
        if len(self.train_data) < cfg.batch_size:
            raise ValueError(f"{len(self.train_data)} usable training pairs; fewer than one batch of {cfg.batch_size}")
        optim = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = optim(param_groups(self.model, cfg.lr, cfg.lr_by_prefix), lr=cfg.lr,
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
        return reduce_mean(values, self.dist.world, self.device)

    def _sync_grads(self) -> None:
        average_gradients(self.model.parameters(), self.dist.world)

    def _sync_buffers(self) -> None:
        broadcast_buffers(self.model, self.dist.world)

    def train_step(self, groups: list[dict]) -> dict[str, float]:

        self.model.train()
        self.task.global_step = self.state["global_step"]  # the step about to run (schedules inside a loss)
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


        if len(self.val_data) < self.cfg.batch_size:
            if len(self.val_data) and not getattr(self, "_val_warned", False):
                log.warning("validation: %d pairs, fewer than a batch of %d: no validation loss (val_loss n/a)",
                            len(self.val_data), self.cfg.batch_size)
                self._val_warned = True
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


        cfg, st = self.cfg, self.state
        t_start = time.time()
        deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None
        stop = False
        show = self.dist.main and not self.quiet
        while st["epoch"] < cfg.epochs and not stop:
            epoch = st["epoch"]
            batches = epoch_batches(len(self.train_data), cfg.batch_size, epoch, cfg.seed)
            skip = st["step_in_epoch"]
            bar = Progress(len(batches), f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}", unit="batch", enabled=show,
                           initial=skip)
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
                                           progress=self.dist.main and not self.quiet)
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

        final = self.out / which
        tmp = self.out / f".{which}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        extra = {"training": {"epoch": self.state["epoch"], "global_step": self.state["global_step"],
                              "best_val_loss": self.state["best_val_loss"], "ema_decay": self.cfg.ema_decay}}
        if self.cfg.image_flag:  # the adapter reads evaluation images as the model was trained
            extra["image_flag"] = self.cfg.image_flag
        with self._averaged():  # with ema_decay the folder's model is the average (what gets evaluated)
            self.task.save(self.model, tmp, extra)
        tensors: dict[str, torch.Tensor] = {}
        if self.ema is not None:  # the optimiser's own weights, for resume
            for k, v in self.model.state_dict().items():
                tensors[f"raw.{k}"] = v.detach().cpu().contiguous()
        opt_tensors, layout = optimizer_to_safetensors(self.opt)
        tensors.update(opt_tensors)
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

        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(folder, f"nothing to resume (expected {STATE_FILE} from an earlier run)")
        done = json.loads((folder / STATE_FILE).read_text()).get("train_config", {}).get("task", "afloc")
        if done != self.cfg.task:
            raise CheckpointError(folder, f"a run of task {done!r}, not {self.cfg.task!r}")

    def _load_state(self, folder: Path) -> None:


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
        optimizer_from_safetensors(self.opt, tensors, doc["optimizer"])
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


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False, resume: bool = False,
          **kwargs) -> dict[str, Any]:
    """Run a training (library entry point; ``kwargs`` go to ``Trainer``)."""
    t = Trainer(cfg, out_dir, quiet=quiet, resume=resume, **kwargs)
    try:
        t.setup()
        return t.train()
    finally:
        t.close()


