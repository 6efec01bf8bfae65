"""The shared trainer: one data plan, DDP under torchrun, resumable checkpoints and a metrics log
for every model family. A family plugs in as a ``TrainTask`` (``benchmark.training.task``);
``benchmark.training.trainer.train`` runs a ``TrainConfig`` (``benchmark.training.config``)."""
