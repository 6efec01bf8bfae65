"""`afloc-bench run`: run models on datasets under a protocol."""

from __future__ import annotations

import argparse

HELP = "run models on datasets (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench run` is declared but not implemented in this version")
