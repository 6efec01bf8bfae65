"""`afloc-bench run`: every model on every dataset through one protocol, with run records."""

from __future__ import annotations

import argparse

from benchmark.cli import n_boot_arg

HELP = "run models on datasets under a protocol and write a run record"
DESCRIPTION = """\
Run models on datasets and write a run folder (results.json, env.json, per-sample parquet).

Names resolve as: exact name, collection (e.g. chest, demo, sanity), glob ('chexlocalize*'),
or `all`. Unknown names fail before anything loads. Flags override the --config YAML, whose
keys are the long flag names (models, datasets, protocol, n_boot, seed, ckpt, data_root,
device, precision, channels_last, batch_size, limit, output, skip_existing, cache, cache_dir, prompt_set, split,
model_options).

examples:
  afloc-bench run --models all --datasets demo
  afloc-bench run --models afloc,biovil --datasets chest --ckpt afloc=weights/Pretrained_CXR.ckpt \\
      --data-root '/data/{dataset}' --protocol afloc-compat@1 -o results/runs/paper
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to run")
    g.add_argument("--models", "-m", default=None, help="models: names, collections, globs or 'all' (default: all)")
    g.add_argument("--datasets", "-d", default=None,
                   help="datasets: names, collections, globs or 'all' (default: demo)")
    g.add_argument("--protocol", "-p", default=None, help="protocol name[@version] (default: afloc-compat@1)")
    g.add_argument("--config", default=None, help="YAML file with run options; flags override it")
    g.add_argument("--split", default=None, help="dataset split to evaluate (default: each card's default, test)")
    g.add_argument("--prompt-set", default=None, help="prompt set: simple (default) or precise")
    s = parser.add_argument_group("statistics")
    s.add_argument("--n-boot", type=n_boot_arg, default=None,
                   help="bootstrap resamples (default 1000; 0 = points only, no intervals)")
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the bootstrap (default 0); a seeded model takes its own, e.g. "
                        "--model-option random.seed=1")
    w = parser.add_argument_group("weights and data")
    w.add_argument("--ckpt", action="append", default=None, metavar="MODEL=PATH",
                   help="local checkpoint for a model; repeat for several models")
    w.add_argument("--model-option", action="append", default=None, metavar="MODEL.KEY=VALUE",
                   help="adapter option, e.g. afloc.text_encoder=/models/Bio_ClinicalBERT; repeatable")
    w.add_argument("--data-root", default=None, metavar="TEMPLATE",
                   help="dataset root template, e.g. '/data/{dataset}' (default: $AFLOC_BENCH_DATA_ROOT or "
                        "~/data/{dataset}); demo sets live in the cache")
    e = parser.add_argument_group("execution")
    e.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    e.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="dtype of the encoders' forward passes (torch.autocast; default fp32, the only setting "
                        "the parity figures hold for); maps and scores are computed in float32")
    e.add_argument("--channels-last", action="store_true", default=None,
                   help="channels_last memory format for the models' convolutions (faster on GPUs)")
    e.add_argument("--batch-size", type=int, default=None, help="images per batch (default 16)")
    e.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per job (default: cores-1, max 4; "
                   "with a job per core, none: each job decodes its own images)")
    e.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="CPU: pairs run side by side in N processes (default: the usable cores)")
    e.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU: torch threads of one job (default 1, so a CPU run's numbers are the same bits on "
                        "any machine; more are faster for one big model and change the outputs' last bits)")
    e.add_argument("--limit", type=int, default=None,
                   help="only the first N samples of each dataset (smoke tests; recorded and marked in tables)")
    e.add_argument("-o", "--output", default=None, help="run folder (default results/runs/<timestamp>)")
    e.add_argument("--skip-existing", action="store_true", default=None,
                   help="reuse (dataset, model) pairs already finished in the run folder with the same settings")
    e.add_argument("--save-heatmaps", type=int, default=None, metavar="N",
                   help="keep the native maps of the first N samples of each pair for report overlays (default 8)")
    e.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="do not read or write the heatmap/score cache")
    e.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/afloc-bench/arrays)")
    e.add_argument("--shard", default=None, metavar="I/N",
                   help="score the I-th of N shares of each dataset's images (0-based) and summarise nothing; "
                        "`afloc-bench merge` joins the N shard folders (under torchrun: one shard per rank, "
                        "joined by rank 0)")


def _model_options(items: list[str] | None) -> dict | None:
    if not items:
        return None
    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--model-option expects MODEL.KEY=VALUE, got {item!r}")
        lhs, value = item.split("=", 1)
        model, key = lhs.split(".", 1)
        out.setdefault(model, {})[key] = value
    return out


def config_from_args(args: argparse.Namespace):
    from benchmark.run.config import RunConfig, load_config_file, parse_assignments

    cfg = RunConfig.from_mapping(load_config_file(args.config), args.config) if args.config else RunConfig()
    ckpt = parse_assignments(args.ckpt, "--ckpt") if args.ckpt else None
    if ckpt is not None:
        ckpt = {**cfg.ckpt, **ckpt}
    opts = _model_options(args.model_option)
    if opts is not None:
        merged = {k: dict(v) for k, v in cfg.model_options.items()}
        for m, kv in opts.items():
            merged.setdefault(m, {}).update(kv)
        opts = merged
    return cfg.override(models=args.models, datasets=args.datasets, protocol=args.protocol, n_boot=args.n_boot,
                        seed=args.seed, ckpt=ckpt, model_options=opts, data_root=args.data_root,
                        device=args.device, precision=args.precision, channels_last=args.channels_last,
                        batch_size=args.batch_size, num_workers=args.num_workers, jobs=args.jobs, threads=args.threads,
                        limit=args.limit, output=args.output, skip_existing=args.skip_existing, cache=args.cache,
                        cache_dir=args.cache_dir, prompt_set=args.prompt_set, split=args.split,
                        quiet=True if args.quiet else None, shard=args.shard, save_heatmaps=args.save_heatmaps)


def run(args: argparse.Namespace) -> int:
    from benchmark.run.distributed import launched_ranks, run_ranks
    from benchmark.run.engine import Runner
    from benchmark.tables import summary_table

    cfg = config_from_args(args)
    if launched_ranks() and cfg.shard is None:  # torchrun: one shard per rank, joined by rank 0
        state, out = run_ranks(cfg)
        if state is None:
            return 0
    else:
        runner = Runner(cfg)  # resolves every name before anything heavy loads
        state, out = runner.run(), runner.out  # failures are one line from benchmark.cli.main
    if cfg.shard is not None:
        print(f"shard {cfg.shard} written to {out}; join the shards with: afloc-bench merge SHARD_FOLDER... -o RUN")
        return 0
    print(summary_table(state))
    print(f"\nrun record: {out / 'results.json'}")
    return 0
