"""`afloc-bench merge`: join the shard folders of a run (``run --shard i/N``) into one run folder."""

from __future__ import annotations

import argparse

HELP = "join the shards of a run (run --shard i/N) into one run record"
DESCRIPTION = """\
Join the folders written by `afloc-bench run --shard i/N` (i = 0..N-1, same settings) into one
run folder. Each pair's per-sample records are put back in dataset order, tuned and summarised
(bootstrap included) as one process does: results.json holds the numbers of an unsharded run.

example (a Slurm array of 4 tasks, then one merge):
  afloc-bench run --models all --datasets chest --shard $SLURM_ARRAY_TASK_ID/4 -o runs/x/shard-$SLURM_ARRAY_TASK_ID
  afloc-bench merge runs/x/shard-* -o runs/x/merged
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="the shard folders of one run (each written by run --shard i/N)")
    parser.add_argument("-o", "--output", required=True, help="run folder to write")


def run(args: argparse.Namespace) -> int:
    from benchmark.run.shards import merge
    from benchmark.tables import summary_table

    state = merge(args.shards, args.output)
    print(summary_table(state))
    print(f"\nrun record: {args.output}/results.json")
    return 0
