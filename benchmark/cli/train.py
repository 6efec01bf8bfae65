"""`afloc-bench train TARGET ...`: train AFLoc, the baselines' objectives or a classifier from scratch.

Targets are the ``training`` entries of the manifests: a task of the shared trainer
(``benchmark.training.task.TrainTask``) or an object with ``cli_main(argv)`` (a model family with
its own trainer). Nothing is imported until a target runs, so ``afloc-bench --help`` stays light.
"""

from __future__ import annotations

import argparse

HELP = "train a model from scratch (afloc, a baseline or a classifier; see `afloc-bench train TARGET --help`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", help="what to train (`afloc-bench ls training`)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options of the target (see TARGET --help)")


def resolve_target(name: str):
    """The ``cli_main(argv)`` of training target ``name``; an unknown name raises ``UnknownNameError``."""
    from benchmark.registry import training

    return training.get(name)().cli_main


def run(args: argparse.Namespace) -> int:
    from benchmark.registry import training

    if not args.target:
        print(HELP + "\n\ntargets:\n" + "\n".join(f"  {e.name:<12} {e.target}" for e in training.entries()))
        return 2
    fn = resolve_target(args.target)
    rest = list(args.rest or [])
    if getattr(args, "quiet", False) and "--quiet" not in rest and "-q" not in rest:
        rest.append("--quiet")
    return int(fn(rest) or 0)
