"""`afloc-bench validate`: check a dataset root against its card (files, counts, masks, prompts)."""

from __future__ import annotations

import argparse

HELP = "check a dataset root against its card (files, counts, masks, prompts) (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .main import NotYetAvailable

    raise NotYetAvailable("`afloc-bench validate` is declared but not implemented in this version")
