"""`afloc-bench report`: HTML report with tables and figures for a run."""

from __future__ import annotations

import argparse

HELP = "HTML report with tables and figures for a run (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench report` is declared but not implemented in this version")
