"""Pairs side by side on a CPU: ``--jobs N`` processes, each running whole (dataset, model) pairs.

Why processes: one process keeps two cores only about 65 % busy on the demo (Python between
small convolutions, image reading, the bootstrap, cache writes); pairs side by side fill them.
Each job runs torch on one thread: a CPU model's outputs change in their last bits with the
intra-op thread count, so the demo's numbers are the same bits on a machine of any core count.
A job is a forked copy of the run (datasets loaded, demo data in place); each pair's records are
what one process writes for it, and the run's record is assembled in the order of the plan,
whichever job finished first.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing as mp
import os
import pickle
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmark.parallel import usable_cores

log = logging.getLogger("afloc_bench.runner")

POLL_S = 0.5  # how often the run checks that its jobs are alive while it waits


def fork_available() -> bool:
    """Jobs are forked copies of the run (Linux): nothing is re-imported or re-read."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def job_layout(jobs: int | None, threads: int | None, device: str, n_pairs: int, sharded: bool = False
               ) -> tuple[int, int | None]:
    """``(jobs, torch intra-op threads)`` of a run.

    On a CPU, torch runs on ``threads`` (default one: a CPU model's outputs change in their last
    bits with the thread count, and with one they are the same on a machine of any size) and
    ``jobs`` (default: the usable cores, at most one per pair) run pairs side by side. Several jobs
    need one thread each: a forked copy of a process that has run torch's OpenMP threads hangs when
    it starts more than one. On a GPU, in a shard, or where processes cannot be forked: one job, on
    ``threads`` if given (on a GPU, None leaves torch's setting)."""
    cores = usable_cores()
    if device != "cpu" or sharded or not fork_available():
        if jobs not in (None, 1):
            why = "a GPU run" if device != "cpu" else ("a shard" if sharded else "this platform (no fork)")
            log.warning("--jobs %d ignored: pairs run one at a time on %s", jobs, why)
        return 1, threads if device != "cpu" or threads is not None else 1
    n = max(1, min(jobs if jobs is not None else cores, max(1, n_pairs)))
    if n > 1 and threads not in (None, 1):  # --threads N without --jobs: one job on N threads
        return 1, threads
    return n, threads if threads is not None else 1


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` (None: unchanged) for the block, then restored."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def joined_units(n: int, keys: Sequence[Sequence[Any]]) -> list[list[int]]:
    """Items ``0..n-1`` grouped so that items sharing any key are in one unit (in order within it);
    units ordered by their first item."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Any, int] = {}
    for i, ks in enumerate(keys):
        for key in ks:
            j = first.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    units: dict[int, list[int]] = {}
    for i in range(n):
        units.setdefault(find(i), []).append(i)
    return [units[r] for r in sorted(units)]


class JobFailed(RuntimeError):
    """A job process died without reporting (killed, for example by the system when out of memory)."""


def run_jobs(work: Callable[[int], dict[str, Any]], units: Sequence[Sequence[int]], jobs: int,
             on_done: Callable[[int, int, dict[str, Any]], None]) -> None:
    """Run ``work(k)`` for every index of ``units`` in ``jobs`` forked processes.

    A unit's indices run in one job, in order (a model whose record counts across its pairs stays
    in one process). ``on_done(k, job, result)`` is called in this process as results arrive. The
    first error stops every job and is raised here (the job's own exception where it pickles)."""
    ctx = mp.get_context("fork")
    tasks: Any = ctx.Queue()
    results: Any = ctx.Queue()
    logs: Any = ctx.Queue()
    for u in range(len(units)):
        tasks.put(u)
    for _ in range(jobs):
        tasks.put(None)
    procs = [ctx.Process(target=_job_main, args=(j, jobs, work, list(units), tasks, results, logs),
                         name=f"afloc-job-{j}", daemon=False) for j in range(jobs)]
    for p in procs:
        p.start()
    relay = threading.Thread(target=_relay_logs, args=(logs,), name="afloc-job-logs", daemon=True)
    relay.start()
    expected = sum(len(u) for u in units)
    finished: set[int] = set()
    received = 0
    try:
        while received < expected:
            try:
                kind, job, k, payload = results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [(j, p.exitcode) for j, p in enumerate(procs) if p.exitcode is not None and j not in finished]
                if dead:
                    j, code = dead[0]
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    hint = " (perhaps out of memory: try fewer --jobs)" if code in (-9, 137) else ""
                    raise JobFailed(f"job {j} of {jobs} stopped without finishing its pairs ({how}){hint}") from None
                continue
            if kind == "error":
                raise pickle.loads(payload)
            if kind == "exit":
                finished.add(job)
                continue
            received += 1
            on_done(k, job, payload)
    finally:
        for p in procs:
            if p.is_alive() and received < expected:
                p.terminate()
        for p in procs:
            p.join(timeout=30)
        logs.put(None)
        relay.join(timeout=5)
        for q in (tasks, results, logs):
            q.close()
            q.cancel_join_thread()


def _job_main(job: int, jobs: int, work: Callable[[int], dict[str, Any]], units: list[Sequence[int]],
              tasks: Any, results: Any, logs: Any) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):  # the run's console and run.log handlers stay with the run
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(logs))
    import torch

    from benchmark.parallel import set_core_share
    from benchmark.progress import use_bars

    torch.set_num_threads(1)
    set_core_share(max(1, usable_cores() // jobs))
    use_bars(False)  # jobs share the terminal: their progress goes through the run's log
    k = None
    try:
        while True:
            u = tasks.get()
            if u is None:
                break
            for k in units[u]:
                results.put(("done", job, k, work(k)))
        results.put(("exit", job, None, None))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the run, which raises it
        results.put(("error", job, k, _pickled(exc)))
    finally:
        results.close()
        results.join_thread()
        logs.close()
        logs.join_thread()
        os._exit(0)  # no atexit handlers of the run (its copies belong to the parent)


def _relay_logs(logs: Any) -> None:
    while True:
        try:
            record = logs.get()
        except (EOFError, OSError):
            return
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


def _pickled(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that does not travel is sent as its text
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return pickle.dumps(RuntimeError(text))
