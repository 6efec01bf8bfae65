"""Progress of long steps: a tqdm bar on a terminal, and a log line every half minute elsewhere.

Why both: on a terminal a bar is what people read; in CI logs, ``nohup`` and Slurm output a bar is
either invisible or thousands of carriage returns, and a long step that prints nothing for minutes
looks hung. Off entirely with ``--quiet`` (logging quieter than INFO).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("afloc_bench.progress")
INTERVAL_S = float(os.environ.get("AFLOC_BENCH_PROGRESS_EVERY", "30"))
_bars = True  # off in processes that share a terminal with others (run --jobs): log lines only


def use_bars(on: bool) -> None:
    """Whether this process may draw tqdm bars on a terminal (else it logs a line now and then)."""
    global _bars
    _bars = bool(on)


class Progress:
    """``with Progress(total, "gloria × demo_rsna", unit="img") as bar: bar.update(k)``."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", enabled: bool = True,
                 initial: int = 0, interval: float | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled = enabled and log.isEnabledFor(logging.INFO)
        self.interval = INTERVAL_S if interval is None else interval
        self._bar = None
        self._t0 = self._last = time.monotonic()
        if self.enabled and _bars and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            log.info("%s", self._line())

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        of = f"/{self.total}" if self.total is not None else ""
        return f"{self.desc}: {self.n}{of} {self.unit} ({elapsed:.0f} s)"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and time.monotonic() - self._t0 >= self.interval:
            log.info("%s, done", self._line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any], desc: str, total: int | None = None, *, unit: str = "it",
             enabled: bool = True) -> Iterator[Any]:
    """Iterate with a ``Progress``."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
