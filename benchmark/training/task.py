"""What the shared trainer (``benchmark.training.trainer.Trainer``) asks of a model family: a *training task*.

The trainer owns everything that does not depend on the model: the data plan (seeded batches,
sampled captions), devices and processes (DDP by hand, gloo/NCCL), the optimiser and schedule,
mixed precision, gradient clipping, validation, checkpoints, resume and the metrics log. A task
owns the rest:

* ``build(cfg, tokenizer)`` → ``(model, tokenizer)``; the tokenizer is a callable from a list of
  captions to a dict of tensors that includes ``attention_mask``;
* the image input: ``image_fn`` (path → image tensor), or ``frame_input`` (letterboxed 224
  uint8 frame → tensor; the trainer reads, letterboxes and optionally caches the frames, and may
  augment them); ``label_fn`` (list of per-pair label dicts → tensor) when the objective needs
  labels (added to the batch as ``labels``);
* ``loss_terms(model, batch, autocast)`` → dict of scalar tensors with the total under ``loss``;
* ``metric_columns`` / ``metric_row(terms)``: the loss parts written to ``metrics.csv``;
* ``save(model, folder, extra)`` / ``load_weights(model, folder)``: the checkpoint folder that the
  family's adapter loads with ``--ckpt NAME=FOLDER`` (weights in ``model.safetensors``);
* ``global_terms(...)`` only for families with ``global_negatives = True`` (cross-rank negatives).

Tasks are registered by name in the manifests' ``training`` section (``"module:Class"``,
imported on use), and a training config names its task (``task: gloria``); ``afloc-bench train
NAME`` runs it and ``build_demo`` makes the demo weights (``benchmark.training.demo_weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def get_task(name: str) -> TrainTask:
    """The training task registered as ``name`` (a ``training`` entry of a manifest)."""
    from benchmark.registry import training

    cls = training.get(name)
    if not (isinstance(cls, type) and issubclass(cls, TrainTask)):
        raise ValueError(f"training target {name!r} is not a task of the shared trainer")
    return cls()


def pair_sum(terms: dict[str, float], prefix: str) -> float | None:
    """``prefix0 + prefix1`` (the two directions of a contrastive loss), None when absent."""
    if f"{prefix}0" not in terms:
        return None
    return terms[f"{prefix}0"] + terms[f"{prefix}1"]


class TrainTask:
    """Base: the defaults are AFLoc's data path; subclasses define the model side."""

    name = ""
    global_negatives = False
    metric_columns: tuple[str, ...] = ()
    image_fn: Callable[[str], Any] | None = None  # path -> model input, or:
    frame_input: Callable[[Any], Any] | None = None  # letterboxed 224 uint8 frame -> model input (cached if asked)
    label_fn: Callable[[Sequence[dict | None]], Any] | None = None

    def config_path(self, spec: str) -> Path:
        """``paper``/``demo``/... → the YAML shipped beside the task: ``<task package>/configs/<spec>.yaml``."""
        from importlib import resources

        package = type(self).__module__.rpartition(".")[0]
        return Path(str(resources.files(package) / "configs" / f"{spec}.yaml"))

    def build(self, cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:
        raise NotImplementedError

    def model_config(self, model: Any) -> dict[str, Any]:
        cfg = getattr(model, "cfg", None)
        return cfg.to_dict() if hasattr(cfg, "to_dict") else {}

    def loss_terms(self, model: Any, batch: dict[str, Any], autocast: Any) -> dict[str, Any]:
        raise NotImplementedError

    def text_bert(self, model: Any) -> Any:
        """The BERT inside ``model`` that ``text_pretrain`` trains."""
        raise ValueError(f"the {self.name} objective does not support text_pretrain")

    def global_terms(self, model: Any, batches: list[dict[str, Any]], autocast: Any, dist_on: bool) -> dict[str, Any]:
        raise ValueError(f"the {self.name} objective has no cross-rank negatives (negatives: global); "
                         "use negatives: local")

    def metric_row(self, terms: dict[str, float]) -> dict[str, float | None]:
        return {c: terms.get(c) for c in self.metric_columns}

    def save(self, model: Any, folder: Path, extra: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- the shared trainer's command line and demo weights -------------------------------
    def cli_main(self, argv: Sequence[str]) -> int:
        """``afloc-bench train NAME ARGS``."""
        from benchmark.training.cli import cli_main

        return cli_main(argv, task=self.name)

    def build_demo(self, work: Path, quiet: bool = True, config: str = "demo") -> Path:
        """Train the recipe ``config`` (``demo``, or e.g. AFLoc's ``pathology_demo``) into ``work``; the
        folder to install as the demo weights."""
        import shutil

        from benchmark.training.config import load_train_config
        from benchmark.training.demo_weights import fixed_threads
        from benchmark.training.trainer import train

        run = work / "run"
        with fixed_threads():
            train(load_train_config(config, self.name), run, quiet=quiet)
        staged = run / "best"
        for f in ("metrics.csv", "train_config.json"):
            if (run / f).is_file():
                shutil.copy2(run / f, staged / f)
        return staged

    @staticmethod
    def demo_complete(folder: Path) -> bool:
        return (folder / "model.safetensors").is_file() and (folder / "train_config.json").is_file()

    def load_weights(self, model: Any, folder: Path) -> None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, nested mappings merged key by key (config overrides)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
