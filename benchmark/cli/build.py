"""`afloc-bench build`: tables from runs beside the paper's numbers."""

from __future__ import annotations

import argparse

HELP = "tables from runs beside the paper's numbers (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench build` is declared but not implemented in this version")
