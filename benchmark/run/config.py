"""What defines a run (``RunConfig``: YAML keys and command-line flags) and the device it runs on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


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
    precision: str = "fp32"  # fp32 | bf16 | fp16: the encoders' autocast dtype (benchmark.run.numerics)
    channels_last: bool = False
    batch_size: int = 16
    num_workers: int | None = None
    jobs: int | None = None  # CPU: pairs run side by side in this many processes (default: the usable cores)
    threads: int | None = None  # CPU: torch intra-op threads of one job (default 1: same bits on any machine)
    limit: int | None = None
    output: str | None = None
    skip_existing: bool = False
    cache: bool = True
    cache_dir: str | None = None
    prompt_set: str = "simple"
    split: str | None = None
    save_heatmaps: int = 8
    quiet: bool = False
    shard: str | None = None  # "i/N": this process scores every N-th image from the i-th (``merge`` joins them)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
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

    def override(self, **flags: Any) -> RunConfig:
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
        self.save_heatmaps = int(self.save_heatmaps)
        if self.save_heatmaps < 0:
            raise ValueError("--save-heatmaps must be >= 0 (samples per pair whose maps are kept)")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ValueError("--num-workers must be >= 0")
        for flag in ("jobs", "threads"):
            value = getattr(self, flag)
            if value is not None:
                if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
                    raise ValueError(f"--{flag} must be a positive whole number, got {value!r}")
                setattr(self, flag, int(value))
        if self.jobs not in (None, 1) and self.threads not in (None, 1):
            raise ValueError(f"--threads {self.threads} needs --jobs 1: pairs that run side by side run on one "
                             "thread each")
        from benchmark.run.numerics import check_precision

        self.precision = check_precision(self.precision)
        self.channels_last = bool(self.channels_last)
        if self.shard is not None:
            self.shard = str(self.shard).strip()
            self.shard_position()

    def shard_position(self) -> tuple[int, int] | None:
        """``(i, N)`` of ``--shard i/N``, or None for a whole run."""
        if self.shard is None:
            return None
        i, sep, n = self.shard.partition("/")
        if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ValueError(f"--shard expects i/N with 0 <= i < N (e.g. 0/4), got {self.shard!r}")
        return int(i), int(n)

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
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
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


def default_output_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / stamp
