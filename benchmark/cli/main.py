"""Entry point of ``afloc-bench``: builds the parser from the command modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from benchmark import __version__
from benchmark.registry import RegistryError

# subcommand -> module under benchmark.cli
COMMANDS = {
    "ls": "ls",
    "run": "run",
    "demo-data": "demo_data",
    "validate": "validate",
    "score": "score",
    "compare": "compare",
    "train": "train",
    "build": "build",
    "regress": "regress",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afloc-bench",
        description="Reproducible benchmark of annotation-free pathology localization (AFLoc and baselines).",
        epilog="Run `afloc-bench COMMAND --help` for the flags of each command.",
    )
    parser.add_argument("--version", action="version", version=f"afloc-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod_name in COMMANDS.items():
        mod = importlib.import_module(f"{__package__}.{mod_name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args._module.run(args) or 0)
    except RegistryError as exc:
        print(f"afloc-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
