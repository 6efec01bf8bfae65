"""How a run's networks compute: precision (``--precision``) and memory format (``--channels-last``).

fp32 is the default and the only setting the parity figures hold for. ``bf16``/``fp16`` run the
image and text encoders under ``torch.autocast`` at that dtype; their outputs are cast back to
float32 before the similarity maps and scores are computed, so the heads and everything the
metrics read stay float32. ``channels_last`` converts the adapter's torch modules and each image
batch to that memory format (faster convolutions on GPUs, especially with bf16/fp16). Both
change the last bits of the outputs, so they are part of every cache key and pair fingerprint
when they differ from the default. So is a CPU's intra-op thread count other than one
(``--threads``; ``benchmark.run.jobs``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(value: str) -> str:
    value = str(value).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Numerics:
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "cpu"
    threads: int | None = None  # torch's intra-op threads on a CPU (None: as torch set them)

    @property
    def cpu_threads(self) -> int | None:
        """The intra-op thread count when it is part of the outputs' identity: on a CPU, other than 1."""
        return self.threads if self.device == "cpu" and self.threads not in (None, 1) else None

    @property
    def default(self) -> bool:
        return self.precision == "fp32" and not self.channels_last and self.cpu_threads is None

    @property
    def identity(self) -> str:
        """Suffix of a model's output identity in cache keys ('' for the default numerics)."""
        parts = ([] if self.precision == "fp32" else [self.precision]) + (["channels_last"] if self.channels_last
                                                                         else [])
        if self.cpu_threads is not None:
            parts.append(f"threads={self.cpu_threads}")
        return "" if not parts else "|" + ",".join(parts)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"precision": self.precision, "channels_last": self.channels_last}
        if self.cpu_threads is not None:
            rec["threads"] = self.cpu_threads
        return rec

    def autocast(self):
        """Context of the encoders' forward passes."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def to_float32(self, x: Any) -> Any:
        """Half-precision tensors inside ``x`` (tensors, dicts, lists, tuples) back to float32
        (float64 and integer tensors stay as they are)."""
        if self.precision == "fp32":
            return x
        import torch

        if isinstance(x, torch.Tensor):
            return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        if isinstance(x, dict):
            return {k: self.to_float32(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self.to_float32(v) for v in x)
        return x

    def prepare_adapter(self, adapter: Any) -> int:
        """Convert the adapter's torch modules (its attributes, and theirs one level down) to
        channels_last; returns how many modules were converted."""
        if not self.channels_last:
            return 0
        import torch

        seen: set[int] = set()

        def modules(obj: Any, depth: int):
            for v in list(vars(obj).values()) if hasattr(obj, "__dict__") else []:
                if isinstance(v, torch.nn.Module):
                    if id(v) not in seen:
                        seen.add(id(v))
                        yield v
                elif depth > 0 and hasattr(v, "__dict__") and not isinstance(v, type):
                    yield from modules(v, depth - 1)

        found = list(modules(adapter, 1))
        for m in found:
            m.to(memory_format=torch.channels_last)
        return len(found)

    def batch_to_device(self, batch: Any, device: str) -> Any:
        """An image batch (a tensor) onto the run's device: pinned memory is copied without
        blocking, a 4-d batch takes the channels_last layout when asked."""
        import torch

        if not isinstance(batch, torch.Tensor):
            return batch
        batch = batch.to(device, non_blocking=device.startswith("cuda"))
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
