"""Study any training function: ``train(seeds) -> dict | jaxseed.Result``.

    python -m jaxseed.study examples/own_loop.py:run --streams init,shuffle,dropout --seeds 5
    python -m jaxseed.study my_package.train:run --streams init,dropout --seeds 10 --shard 0/4 --workdir W
    python -m jaxseed.study examples/own_loop.py:run --compare examples/own_loop.py:run_three_epochs --seeds 10
"""

from __future__ import annotations

import sys

from jaxseed import cli, entry, userimport
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
    cli.add_study_flags(found)
    cli.add_log_flags(found)
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
        with engine.open_study(planned, existing=args.report) as folder:
            try:
                markdown = engine.run(planned, folder, args.shard, args.report, args.records, args.quiet,
                                      log=cli.log_from_args(args), **options)
            except KeyboardInterrupt:
                raise entry.Interrupted(cli.study_interrupted(args.workdir, planned.workdir)) from None
        cli.study_outcome(markdown, planned.workdir, "ablation.md, ablation.csv, ablation.json, "
                                                     f"{'' if args.compare else 'ablation.png, '}records.npz")
        return 0

    return entry.run("jaxseed.study", run)


if __name__ == "__main__":
    sys.exit(main())
