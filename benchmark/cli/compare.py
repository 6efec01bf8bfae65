"""`afloc-bench compare`: paired bootstrap comparison of two runs."""

from __future__ import annotations

import argparse

HELP = "paired bootstrap comparison of two runs (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench compare` is declared but not implemented in this version")
