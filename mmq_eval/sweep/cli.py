"""``mmq-eval sweep``: expand a spec and evaluate every configuration, resumably."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mmq_eval.errors import MMQConfigError
from mmq_eval.outputs import check_output_dir, check_output_file

DESCRIPTION = """\
Expand a sweep spec into quantization configurations and evaluate each one, loading the
model once. Example spec:

  model: {name: mmq_blip2, pretrained: "mmq:shapes-blip2", batch_size: 16}
  tasks: [mmq_shapes_cap, mmq_shapes_vqa]
  fixed: {group_size: 128}                # quantization args of every configuration
  grid:                                   # crossed in the order written
    method: [rtn, gptq]
    vit_bits: [16, 4]
    llm_bits: [16, 4, 2]
  method_args: {gptq: {damp: 0.01}}       # only for that method's configurations
  exclude: [{method: rtn, llm_bits: 2}]   # drop matching points (a list matches any item)
  configs: [{method: awq, llm_bits: 4}]   # explicit extra configurations

Configurations that quantize identically (16 bits everywhere under any method) run once.
The spec is fully validated before anything is loaded or evaluated.
"""

EPILOG = """\
Every finished configuration is appended as one JSON line to OUT/results.jsonl (or
OUT/results.shardIofN.jsonl); rerunning the same command skips finished configurations, so a
killed sweep resumes where it stopped. Sweeps may share OUT: each claims a configuration in
OUT/claims/ before evaluating it, leaves one that another live sweep has claimed to that sweep
and waits for its result; the claim of a process that died is taken over. --launcher slurm
submits --shards array tasks through submitit, all writing to OUT; without --wait it returns
after submission. A preempted array task is requeued, and one reaching --timeout-min is
requeued up to --max-requeues times; either way it resumes from OUT (a configuration cut off
half-way is evaluated again, finished ones are not).
"""


def register(subparsers) -> None:
    """Add the ``sweep`` subcommand."""
    p = subparsers.add_parser("sweep", help="run a quantization sweep from a YAML spec",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="sweep spec YAML (see above)")
    p.add_argument("--from-seed", metavar="DIR", help="use the seed repo's config folder as the configurations "
                   "(SPEC, if given, supplies model/tasks/fixed)")
    p.add_argument("--out", metavar="DIR", help="results folder (default: results/<spec name>)")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="run only shard I of N (local launcher)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N documents per task")
    p.add_argument("--dry-run", action="store_true", help="validate and list the configurations, evaluate nothing")
    p.add_argument("--write-spec", metavar="PATH", help="write the (imported) spec as YAML and exit")
    s = p.add_argument_group("slurm launcher")
    s.add_argument("--shards", type=int, default=1, help="number of array tasks")
    s.add_argument("--slurm-partition")
    s.add_argument("--timeout-min", type=int, default=24 * 60)
    s.add_argument("--gpus-per-node", type=int, default=1)
    s.add_argument("--cpus-per-task", type=int, default=8)
    s.add_argument("--mem-gb", type=int, default=64)
    s.add_argument("--array-parallelism", type=int, default=64)
    s.add_argument("--max-requeues", type=int, default=3, metavar="N",
                   help="requeue a task that reaches --timeout-min at most N times, resuming from OUT "
                   "(preempted tasks are always requeued; default: %(default)s)")
    s.add_argument("--wait", action="store_true", help="block until every array task has finished")
    p.set_defaults(func=handle)


def _spec(args) -> tuple[dict, str]:
    from mmq_eval.sweep.spec import load_spec

    if not args.spec and not args.from_seed:
        raise MMQConfigError("give a sweep spec YAML or --from-seed DIR")
    spec = load_spec(args.spec) if args.spec else None
    if args.from_seed:
        from mmq_eval.sweep.seed_import import spec_from_seed

        spec = spec_from_seed(args.from_seed, spec)
    return spec, Path(args.spec or args.from_seed).stem


def _slurm(args, sweep, out: Path) -> int:
    from mmq_eval.sweep.launchers import submit_array

    params = {"timeout_min": args.timeout_min, "gpus_per_node": args.gpus_per_node,
              "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb,
              "slurm_array_parallelism": args.array_parallelism}
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    try:
        jobs = submit_array(sweep, out, args.shards, "slurm", max_requeues=args.max_requeues, **params)
    except (RuntimeError, OSError) as err:  # no sbatch/srun here, or sbatch refused the job
        print(f"error: SLURM submission failed: {err}", file=sys.stderr)
        return 2
    print(f"submitted {len(jobs)} array tasks: {jobs[0].job_id.split('_')[0]} (logs: {out / 'submitit'})")
    if args.wait:
        for job in jobs:
            print(job.result())
    return 0


def handle(args) -> int:
    """Validate, then run locally or submit; 2 on a bad spec or argument."""
    from mmq_eval.sweep.spec import build_sweep, parse_shard

    try:
        spec, stem = _spec(args)
        if args.write_spec:
            check_output_file(args.write_spec, "--write-spec").write_text(yaml.safe_dump(spec, sort_keys=False))
            print(f"wrote {args.write_spec}")
            return 0
        shard = parse_shard(args.shard)
        if args.launcher == "slurm" and shard != (0, 1):
            raise MMQConfigError("--shard is for the local launcher; with slurm use --shards N")
        if args.shards < 1:
            raise MMQConfigError("--shards must be >= 1")
        if args.max_requeues < 0:
            raise MMQConfigError("--max-requeues must be >= 0")
        out = None if args.dry_run else check_output_dir(args.out or Path("results") / stem, "--out")
        sweep = build_sweep(spec, limit=args.limit)
    except MMQConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cfg in sweep.configs:
            print(json.dumps({"config_id": cfg.config_id, **cfg.features}))
        print(f"{len(sweep.configs)} configurations", file=sys.stderr)
        return 0
    if args.launcher == "slurm":
        return _slurm(args, sweep, out)
    from mmq_eval.sweep.runner import run_sweep

    summary = run_sweep(sweep, out, shard)
    others = f", {summary.by_others} evaluated by another sweep" if summary.by_others else ""
    print(f"shard {shard[0]}/{shard[1]}: {summary.ran} evaluated, {summary.skipped} already done{others}, "
          f"{summary.total} in shard -> {summary.results_file}")
    return 0
