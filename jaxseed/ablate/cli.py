"""``python -m jaxseed.ablate``: its flags, and the command."""

from __future__ import annotations

from jaxseed import cli, entry, objective
from jaxseed.ablate.runs import run_sweep
from jaxseed.ablate.strategy import STRATEGIES
from jaxseed.ablate.sweep import PROG, open_sweep, plan_sweep, recorded_sweep
from jaxseed.errors import UserError


def ablate_parser():
    parser = cli.new_parser(PROG,
                            "Vary one key stream at a time and report the spread each causes.")
    cli.add_study_flags(parser)
    parser.add_argument("--streams", help="comma-separated streams to vary (default: every stream the run draws from)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="how a group's K runs execute: vmap (the K runs as replicas of one program, "
                             "split over the devices' seed axis), sequential, or auto (the faster on this backend "
                             "in the measurement recorded by benchmarks/sweep.py; the default)")
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
                raise entry.Interrupted(cli.study_interrupted(args.workdir, sweep.workdir)) from None
        pictures = ", unstable.png" if sweep.objective.classifier else ""
        cli.study_outcome(markdown, sweep.workdir, f"ablation.md, ablation.csv, ablation.json, ablation.png{pictures}, "
                                                   "records.npz")
        return 0

    return entry.run("jaxseed.ablate", ablate)

