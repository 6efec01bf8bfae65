"""Scoring chunks of maps on several cores: an ordered thread map with bounded memory.

Why threads: the metric code spends its time in NumPy loops that release the GIL, its scratch
buffers are per thread (``benchmark.metrics._scratch``) and every chunk is scored on its own, so
the results are bit-identical to one thread's whatever the order in which chunks finish.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity set where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


_share: int | None = None


def set_core_share(n: int | None) -> None:
    """This process's share of the cores (one job of several running side by side), or None."""
    global _share
    _share = None if n is None else max(1, int(n))


def core_share() -> int:
    """Threads this process should score on: its share of the cores, else every usable core."""
    return _share if _share is not None else usable_cores()


def ordered_map(fn: Callable[[Any], T], items: Iterable[Any], threads: int, window: int | None = None) -> Iterator[T]:
    """``map(fn, items)`` on ``threads`` threads, results in input order; at most ``window``
    (default twice the threads) items are in flight, so memory does not grow with the input.
    An exception in ``fn`` is raised here, at its item's turn."""
    if threads <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    window = max(threads, window or 2 * threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="afloc-score") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
