"""Train a model with every random draw from a named stream.

    python -m jaxseed.train --seed 42
    python -m jaxseed.train --seed 42 --stream dropout=7   # only dropout varied
    python -m jaxseed.train --objective my_model.py:OBJECTIVE --data npz:my_data.npz

The command line only: the training loop is ``loop.py``, the step ``step.py``,
devices and processes ``mesh.py``, the run folder ``rundir.py``.
"""

from __future__ import annotations

import signal
import sys

import jax

from jaxseed import cli, entry, loop
from jaxseed.errors import UserError

PROG = "python -m jaxseed.train"


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser(PROG).parse_args(argv)
    stop_signal = []
    previous = {signum: signal.signal(signum, lambda signum, frame: stop_signal.append(signal.Signals(signum).name))
                for signum in (signal.SIGINT, signal.SIGTERM)}  # finish the current call, save, then stop

    def train() -> int:
        if args.resume and not args.workdir:
            raise UserError("--resume needs the --workdir of the run to continue")
        if args.resume and args.overwrite:
            raise UserError("--resume continues the run in --workdir, --overwrite replaces it: give one of them")
        if args.resume:
            (config, objective, seeds), workdir = cli.resolve_resume(args, args.workdir), args.workdir
        else:
            config, objective, seed, seeds = cli.resolve(args)
            workdir = args.workdir or cli.default_workdir(config, seed)
        entry.start_jax(config, compilation_cache=True,
                        processes=(args.coordinator_address, args.num_processes, args.process_id))
        if jax.process_count() > 1 and not args.workdir:
            raise UserError("a run over several processes needs --workdir (the same folder for every process)")
        try:
            info = loop.train_and_evaluate(config, seeds, workdir, progress=not args.quiet, resume=args.resume,
                                           overwrite=args.overwrite, should_stop=lambda: bool(stop_signal),
                                           objective=objective, log=cli.log_from_args(args))
        except loop.StoppedAtStep as stopped:
            raise entry.Interrupted(
                f"stopped by {stop_signal[0] if stop_signal else 'another process'} after step {stopped.args[0]}, "
                f"checkpoint saved; resume with: {PROG} --resume --workdir {workdir}") from None
        scores = {k: v for k, v in {**info["final"], **info}.items() if k.startswith("test_")}
        ordered = sorted(scores.items(), key=lambda kv: kv[0] != "test_loss")
        print(" ".join(f"{name} {value:.4f}" for name, value in ordered)
              + f" after {info['final']['epoch']} epochs; workdir {workdir}")
        return 0

    try:
        return entry.run("jaxseed.train", train)
    finally:  # called from Python (a notebook, a test), the caller's handlers come back
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
