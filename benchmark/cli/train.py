"""`afloc-bench train`: train AFLoc, a baseline objective or a classifier."""

from __future__ import annotations

import argparse

HELP = "train AFLoc, a baseline objective or a classifier (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench train` is declared but not implemented in this version")
