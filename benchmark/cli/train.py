"""`afloc-bench train TARGET ...`: train AFLoc, the baselines' objectives or a classifier from scratch.

Each target is one line in ``TRAIN_TARGETS``: ``"module:function"`` (or ``"module:function#task"``,
called with ``task=...``), a function taking the remaining command-line arguments and returning
an exit code. Nothing is imported until a target runs, so ``afloc-bench --help`` stays light.
"""

from __future__ import annotations

import argparse
import functools
import importlib

HELP = "train a model from scratch (afloc, a baseline or a classifier; see `afloc-bench train TARGET --help`)"

TRAIN_TARGETS: dict[str, str] = {
    "afloc": "benchmark.training.cli:cli_main",
    "gloria": "benchmark.training.cli:cli_main#gloria",
    "convirt": "benchmark.training.cli:cli_main#convirt",
    "biovil": "benchmark.training.cli:cli_main#biovil",
    "medklip": "benchmark.training.cli:cli_main#medklip",
    "classifier": "baselines.saliency.train:cli_main",
}

DESCRIPTION = HELP + "\n\ntargets:\n" + "\n".join(f"  {k:<10} {v}" for k, v in TRAIN_TARGETS.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", help="what to train: " + ", ".join(sorted(TRAIN_TARGETS)))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options of the target (see TARGET --help)")


def resolve_target(name: str):
    if name not in TRAIN_TARGETS:
        import difflib

        close = difflib.get_close_matches(name, list(TRAIN_TARGETS), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"unknown training target {name!r} (known: {', '.join(sorted(TRAIN_TARGETS))}){hint}")
    module, func = TRAIN_TARGETS[name].split(":")
    func, _, task = func.partition("#")
    fn = getattr(importlib.import_module(module), func)
    return functools.partial(fn, task=task) if task else fn


def run(args: argparse.Namespace) -> int:
    import sys

    if not args.target:
        print(DESCRIPTION)
        return 2
    try:
        fn = resolve_target(args.target)
    except KeyError as exc:
        print(f"afloc-bench train: error: {exc.args[0]}", file=sys.stderr)
        return 2
    rest = list(args.rest or [])
    if getattr(args, "quiet", False) and "--quiet" not in rest and "-q" not in rest:
        rest.append("--quiet")
    return int(fn(rest) or 0)
