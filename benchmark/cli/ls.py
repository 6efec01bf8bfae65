"""`afloc-bench ls`: list registered models, datasets, metrics, protocols or collections."""

from __future__ import annotations

import argparse

HELP = "list models, datasets, metrics, protocols, training targets or collections (one line each)"
WHAT = ("models", "datasets", "metrics", "protocols", "training", "collections")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHAT, help="what to list")
    parser.add_argument("pattern", nargs="?", default=None,
                        help="optional name, collection or glob to filter by (e.g. 'demo', 'chexlocalize*')")


def run(args: argparse.Namespace) -> int:
    from benchmark.registry import REGISTRIES, collections_for

    if args.what == "collections":
        for c in collections_for():
            members = c.members()
            shown = ", ".join(members) if members else "(empty)"
            print(f"{c.name} [{c.kind}]: {c.description}: {shown}")
        return 0
    reg = REGISTRIES[args.what]
    names = reg.resolve(args.pattern) if args.pattern else reg.names()
    for name in names:
        print(reg.entry(name).summary())
    return 0
