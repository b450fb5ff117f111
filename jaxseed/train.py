"""Train a model on MNIST with every random draw from a named stream.

    python -m jaxseed.train --seed 42
    python -m jaxseed.train --seed 42 --stream dropout=7   # only dropout varied

The command line only: the training loop is ``loop.py``, the step ``step.py``,
devices and processes ``mesh.py``, what a run writes ``outputs.py``.
"""

from __future__ import annotations

import os
import signal
import sys

import jax

from jaxseed import cli, loop, machine, mesh
from jaxseed.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser().parse_args(argv)
    workdir = created = None
    stop_signal = []
    for signum in (signal.SIGINT, signal.SIGTERM):  # finish the current call, save, then stop
        signal.signal(signum, lambda signum, frame: stop_signal.append(signal.Signals(signum).name))
    try:
        if args.resume:
            if not args.workdir:
                raise UserError("--resume needs the --workdir of the run to continue")
            config, seeds = cli.resolve_resume(args, args.workdir)
        else:
            config, seed, seeds = cli.resolve(args)
        machine.require_flags(config)  # before anything starts JAX
        machine.use_compilation_cache()
        mesh.start_processes(args.coordinator_address, args.num_processes, args.process_id)
        if jax.process_count() > 1 and not args.workdir:
            raise UserError("a run over several processes needs --workdir (the same folder for every process)")
        workdir, refused = args.workdir, None
        if not args.resume and mesh.is_writer():  # process 0 checks and creates the folder
            try:
                workdir, created = cli.prepare_workdir(args.workdir, config, seed, overwrite=args.overwrite)
            except UserError as error:
                refused = error
        if mesh.any_process(refused is not None):  # every process stops, none waits for the others
            raise refused or UserError(f"process 0 could not start the run in {workdir}")
        info = loop.train_and_evaluate(config, seeds, workdir, progress=not args.quiet, resume=args.resume,
                                       should_stop=lambda: bool(stop_signal))
    except loop.Interrupted as stopped:
        print(f"jaxseed.train: stopped by {stop_signal[0] if stop_signal else 'another process'} after step "
              f"{stopped.args[0]}, checkpoint saved; resume with: python -m jaxseed.train --resume --workdir "
              f"{workdir}", file=sys.stderr)
        return 130
    except (UserError, FloatingPointError) as error:
        if created and not os.listdir(workdir):
            os.rmdir(workdir)  # leave no empty folder behind a run that never started
        print(f"jaxseed.train: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UserError) else 3
    scores = {k: v for k, v in {**info["final"], **info}.items() if k.startswith("test_")}
    print(" ".join(f"{name} {value:.4f}" for name, value in sorted(scores.items(), key=lambda kv: kv[0] != "test_loss"))
          + f" after {info['final']['epoch']} epochs; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
