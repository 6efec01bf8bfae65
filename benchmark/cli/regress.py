"""`afloc-bench regress`: fail when a run drifts from a paper table or a golden run."""

from __future__ import annotations

import argparse

HELP = "fail when a run drifts from a paper table or a golden run (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench regress` is declared but not implemented in this version")
