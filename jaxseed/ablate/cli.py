"""``python -m jaxseed.ablate``: its flags, and the command."""

from __future__ import annotations

import math

from jaxseed import cli, entry, objective, streams
from jaxseed.ablate.runs import run_sweep
from jaxseed.ablate.strategy import STRATEGIES
from jaxseed.ablate.sweep import PROG, open_sweep, plan_sweep, recorded_sweep
from jaxseed.errors import UserError


def ablate_parser():
    parser = cli.new_parser(PROG,
                            "Vary one key stream at a time and report the spread each causes.")
    parser.add_argument("--seeds", type=cli.int_at_least(2), default=5, help="runs per group, K (default 5)")
    parser.add_argument("--streams", help="comma-separated streams to vary (default: every stream the run draws from)")
    parser.add_argument("--base-seed", type=str, default="0",
                        help=f"seed of every stream not varied, an integer in [0, {streams.MAX_SEED}] (default 0)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="how a group's K runs execute: vmap (the K runs as replicas of one program, "
                             "split over the devices' seed axis), sequential, or auto (the faster on this backend "
                             "in the measurement recorded by benchmarks/sweep.py; the default)")
    parser.add_argument("--workdir", help="output folder; the same one again completes an unfinished sweep "
                                          "(default: a new folder under ./runs/)")
    parser.add_argument("--shard", type=cli.shard, default=(0, 1), metavar="I/N",
                        help="run only share I (0 ... N-1) of the plan's runs, so that N processes, hosts or a "
                             "Slurm job array on one shared --workdir finish one study together (default 0/1)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the report of the runs --workdir holds that have finished")
    parser.add_argument("--detect", type=cli.number("> 0", lambda value: 0 < value < math.inf), metavar="DELTA",
                        help="a difference in the mean of the report's first metric (test accuracy of a classifier, "
                             "else test loss): the report states the seeds per configuration a two-sided 5%% t test "
                             "needs to detect it with 80%% power")
    parser.add_argument("--correlation", type=cli.number("in [-1, 1)", lambda value: -1 <= value < 1), metavar="R",
                        help="correlation of two configurations' results on the same seeds, as "
                             "experiments/fair_comparison measures it: the report adds the paired design (default: "
                             "unpaired only)")
    parser.add_argument("--records", metavar="FILE",
                        help="a records.npz of this study (the compact file every study writes beside its report): "
                             "the finished runs it holds are restored into --workdir and not trained again, so a "
                             "study continues on another machine or in a later session; their per-example "
                             "outputs are float16")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_log_flags(parser)
    cli.add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = ablate_parser().parse_args(argv)

    def ablate() -> int:
        if args.report:
            if not args.workdir:
                raise UserError("--report needs the --workdir of the study")
            sweep = recorded_sweep(args.workdir, args)
        else:
            config = cli.config_from_args(args)
            chosen = tuple(s.strip() for s in args.streams.split(",")) if args.streams else None
            sweep = plan_sweep(config, objective.resolve(config.model), args.seeds, chosen, args.base_seed,
                               args.strategy, args.workdir)
        with open_sweep(sweep) as study:
            try:
                markdown = run_sweep(sweep, study, args.quiet, args.shard, report_only=args.report,
                                     detect=args.detect, correlation=args.correlation, records=args.records,
                                     log=cli.log_from_args(args))
            except KeyboardInterrupt:
                again = "the same command" if args.workdir else f"it with --workdir {sweep.workdir}"
                raise entry.Interrupted(f"interrupted; finished runs are kept: rerun {again} to complete the "
                                        "sweep") from None
        if markdown is None:
            print(f"no group of {sweep.workdir} has two finished runs yet: no report (the other shards' runs "
                  "complete it; then --report)")
        else:
            pictures = ", unstable.png" if sweep.objective.classifier else ""
            print(markdown + f"\nreport in {sweep.workdir}: ablation.md, ablation.csv, ablation.json, ablation.png"
                             f"{pictures}, records.npz")
        return 0

    return entry.run("jaxseed.ablate", ablate)

