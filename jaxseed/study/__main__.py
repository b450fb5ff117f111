"""Study any training function: ``train(seeds) -> dict | jaxseed.Result``.

    python -m jaxseed.study examples/own_loop.py:study_run --streams init,shuffle,dropout --seeds 5
    python -m jaxseed.study my_package.train:run --streams init,dropout --seeds 10 --shard 0/4 --workdir W
    python -m jaxseed.study examples/own_loop.py:run --compare examples/own_loop.py:run_wider --seeds 10
"""

from __future__ import annotations

import math
import sys

from jaxseed import cli, entry, streams, userimport
from jaxseed.errors import UserError
from jaxseed.study import engine, report

PROG = "python -m jaxseed.study"


def parser():
    found = cli.new_parser(PROG, "Vary one key stream at a time in any training function and report the spread "
                                 "each causes.")
    found.add_argument("function", metavar="FILE.py:FUNCTION",
                       help="the training function, path/to/file.py:NAME or package.module:NAME: it takes a "
                            "jaxseed.Seeds and returns a dict of metrics or a jaxseed.Result")
    found.add_argument("--streams", help="comma-separated streams to vary (built-in or your own); needed unless "
                                         "--compare")
    found.add_argument("--compare", metavar="FILE.py:FUNCTION",
                       help="compare FUNCTION (B) with the first (A) under the same randomness instead: run k of each "
                            "takes every stream's seed base + 1 + k; the report gives the paired difference, P(B > A) "
                            "and the seeds each design needs")
    found.add_argument("--seeds", type=cli.int_at_least(2), default=5, help="runs per group, K (default 5)")
    found.add_argument("--base-seed", type=str, default="0",
                       help=f"seed of every stream not varied, an integer in [0, {streams.MAX_SEED}] (default 0)")
    found.add_argument("--workdir", help="output folder; the same one again completes an unfinished study "
                                         "(default: a new folder under ./runs/)")
    found.add_argument("--shard", type=cli.shard, default=(0, 1), metavar="I/N",
                       help="run only share I (0 ... N-1) of the plan's runs, so that N processes or a Slurm job "
                            "array on one shared --workdir finish one study together (default 0/1)")
    found.add_argument("--report", action="store_true",
                       help="train nothing: write the report of the runs --workdir holds that have finished")
    found.add_argument("--records", metavar="FILE",
                       help="a records.npz of this study (written beside every report): its runs are not trained "
                            "again, so a study continues on another machine or in a later session")
    found.add_argument("--detect", type=cli.number("> 0", lambda value: 0 < value < math.inf), metavar="DELTA",
                       help="a difference in the mean of the first metric: the report states the seeds per "
                            "configuration a two-sided 5%% t test needs to detect it with 80%% power")
    found.add_argument("--correlation", type=cli.number("in [-1, 1)", lambda value: -1 <= value < 1), metavar="R",
                       help="correlation of two configurations' results on the same seeds: the report adds the "
                            "paired design")
    found.add_argument("--quiet", action="store_true", help="no progress bar")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def run() -> int:
        if args.report and not args.workdir:
            raise UserError("--report needs the --workdir of the study")
        if bool(args.compare) == bool(args.streams):
            raise UserError("give --streams (a study of one function) or --compare (two functions), not both"
                            if args.compare else "--streams is needed: the streams to vary, e.g. init,shuffle")
        if args.compare and (args.detect or args.correlation is not None):
            raise UserError("--detect and --correlation size a study's comparison; --compare measures one")
        train = userimport.load(args.function, "training function")
        if args.compare:
            planned = engine.plan_comparison(train, userimport.load(args.compare, "training function"), args.seeds,
                                             args.base_seed, args.workdir)
            options = {"render": report.render_comparison}
        else:
            planned = engine.plan_study(train, tuple(s.strip() for s in args.streams.split(",")), args.seeds,
                                        args.base_seed, args.workdir)
            options = {"detect": args.detect, "correlation": args.correlation}
        with engine.open_study(planned) as folder:
            try:
                markdown = engine.run(planned, folder, args.shard, args.report, args.records, args.quiet, **options)
            except KeyboardInterrupt:
                again = "the same command" if args.workdir else f"it with --workdir {planned.workdir}"
                raise entry.Interrupted(f"interrupted; finished runs are kept: rerun {again} to complete the "
                                        "study") from None
        if markdown is None:
            print(f"no group of {planned.workdir} has two finished runs yet: no report (the other shards' runs "
                  "complete it; then --report)")
        else:
            print(markdown + f"\nreport in {planned.workdir}: ablation.md, ablation.csv, ablation.json, "
                             f"{'' if args.compare else 'ablation.png, '}records.npz")
        return 0

    return entry.run("jaxseed.study", run)


if __name__ == "__main__":
    sys.exit(main())
