"""`afloc-bench demo-data`: generate the embedded synthetic demo datasets in their official formats."""

from __future__ import annotations

import argparse

HELP = "generate the embedded synthetic demo datasets in their official formats (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench demo-data` is declared but not implemented in this version")
