"""What the re-implemented vision-language baselines share: option parsing, the checkpoint-or-
random-init rule, device placement and the key report of the last load.

Light on purpose (no torch at module level): the public adapter modules import it at
registry-load time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmark.adapter import Adapter, flag_option
from benchmark.io.checkpoints import need_file


class BaselineAdapter(Adapter):
    """Base of the checkpoint-backed baselines (``needs_checkpoint = True``).

    Common options (CLI: ``--model-option NAME.KEY=VALUE``):
      random_init: build the architecture with seeded random weights instead of a checkpoint
        (tests and smoke runs only; scores are meaningless).
      seed: seed of ``random_init`` (default 0).
    """

    needs_checkpoint = True
    checkpoint_name: str = ""  # the official file name
    checkpoint_url: str = ""  # where it is published

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.model: Any = None
        self.key_report: Any = None

    # -- options ------------------------------------------------------------------------
    def opt(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def opt_bool(self, key: str, default: bool = False) -> bool:
        return flag_option(self.options, key, default)

    def opt_choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = str(self.options.get(key, default))
        if v not in choices:
            raise ValueError(f"model option {key}={v!r}: expected one of {', '.join(choices)}")
        return v

    # -- loading --------------------------------------------------------------------------
    def wants_random_init(self, checkpoint: str | None) -> bool:
        """True when the model is to be built without weights; otherwise the checkpoint must exist."""

        if self.opt_bool("random_init"):
            return True
        need_file(checkpoint, f"the {self.name or type(self).__name__} checkpoint `{self.checkpoint_name}`",
                  self.checkpoint_url)
        return False

    def seed_init(self) -> None:

        torch.manual_seed(int(self.opt("seed", 0)))

    def place(self, model: Any, device: str) -> Any:
        """Move to ``device`` in eval mode (the official inference paths are compared in eval mode)."""

        self.device = str(device or "cpu")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.key_report is not None:
            d["key_report"] = self.key_report.as_dict()
        return d


def softmax_pair(pos: Any, neg: Any) -> Any:
    """P(positive) from two scores: exp(p) / (exp(p) + exp(n)), computed stably (numpy or torch)."""

    try:
        import torch

        if isinstance(pos, torch.Tensor):
            return torch.sigmoid(pos - neg)
    except ImportError:  # pragma: no cover
        pass
    return 1.0 / (1.0 + np.exp(np.asarray(neg, dtype=np.float64) - np.asarray(pos, dtype=np.float64)))
