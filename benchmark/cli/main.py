"""Entry point of ``afloc-bench``: builds the parser from the command modules, and the one error path.

Every user-facing failure is one line naming the file or flag and what was expected: exit code 2
for bad input (data, checkpoints, configuration, names, flags) and 3 for the environment (disk
full, a folder that cannot be written, a missing library). ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from benchmark import __version__

EXIT_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 2, 3, 130

# subcommand -> module under benchmark.cli
COMMANDS = {
    "ls": "ls",
    "run": "run",
    "merge": "merge",
    "demo-data": "demo_data",
    "validate": "validate",
    "score": "score",
    "export-gt": "export_gt",
    "compare": "compare",
    "train": "train",
    "finetune": "finetune",
    "prepare": "prepare",
    "build": "build",
    "regress": "regress",
    "report": "report",
}


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """-v/-q/--debug, accepted before and after the subcommand (``run ... -q``)."""
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings and errors; no progress")
    parser.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``afloc-bench`` parser. With ``command`` (a key of ``COMMANDS``) only that command's module
    is imported and given its flags, the others are bare names: enough to parse its command line,
    and ``ls`` or ``score --help`` do not pay for importing every command module."""
    parser = argparse.ArgumentParser(
        prog="afloc-bench",
        description="Reproducible benchmark of annotation-free pathology localization (AFLoc and baselines).",
        epilog="Run `afloc-bench COMMAND --help` for the flags of each command.",
    )
    parser.add_argument("--version", action="version", version=f"afloc-bench {__version__}")
    _global_flags(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod_name in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        mod = importlib.import_module(f"{__package__}.{mod_name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        if name != "train":  # train passes everything after its target on to the target
            _global_flags(p, argparse.SUPPRESS)
        p.set_defaults(_module=mod)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a user-facing failure, or None for an unexpected one (a bug: traceback)."""
    import yaml

    from benchmark.dataset import DataError
    from benchmark.registry import RegistryError

    if isinstance(exc, (DataError, RegistryError, ValueError, yaml.YAMLError)):
        return EXIT_INPUT
    if isinstance(exc, FileNotFoundError):
        return EXIT_INPUT
    if isinstance(exc, (OSError, ImportError)):
        return EXIT_ENVIRONMENT
    return None


def describe(exc: BaseException) -> str:
    """One line: the file and what went wrong."""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.args[-1] if exc.args else ""):
        why = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(exc.errno,
                                                                                          exc.strerror or str(exc))
        return f"{exc.filename}: {why}"
    text = str(exc) or type(exc).__name__
    if "yaml" in type(exc).__module__:  # YAML errors print a multi-line context: keep its position
        return " ".join(text.split())
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _command_in(argv: list[str]) -> str | None:
    """The command a command line names before anything but global flags, or None (then the full
    parser is built: top-level help, version, errors)."""
    for arg in argv:
        if arg in ("-q", "--quiet", "--debug", "--verbose") or (len(arg) > 1 and arg.strip("-v") == "" and
                                                                 arg.startswith("-v")):
            continue
        return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command_in(sys.argv[1:] if argv is None else list(argv)))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_INPUT
    configure_logging(args.verbose or 0, bool(args.quiet))
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into exit codes
        code = exit_code(exc)
        if code is None or args.debug:
            raise
        print(f"afloc-bench {args.command}: error: {describe(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
