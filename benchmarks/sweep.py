"""Runs per hour of an ablation group: K runs one after another against K vmapped replicas.

    python benchmarks/sweep.py --data-dir DIR [--seeds 4] [--epochs 1] [--train-limit 10000] [--record]

Both strategies train the same K seeds (only ``init`` varied) through the one
training loop, compile time included, as ``jaxseed.ablate`` would; the figure is
K * 3600 / wall seconds. ``--record`` stores the result for this backend in
``jaxseed/strategies.json``, which ``jaxseed.ablate --strategy auto`` reads to
pick the faster strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax

from jaxseed import ablate, loop, machine, streams
from jaxseed.config import Config


def runs_per_hour(config: Config, num_seeds: int, strategy: str) -> float:
    seeds = [streams.resolve_seeds(0, {"init": 1 + k}) for k in range(num_seeds)]
    loop.forget_compiled()  # each strategy pays its own compilation, as a fresh sweep does
    with tempfile.TemporaryDirectory(prefix="jaxseed-sweep-") as root:
        workdirs = [os.path.join(root, str(k)) for k in range(num_seeds)]
        start = time.perf_counter()
        if strategy == "vmap":
            loop.train(config, seeds, workdirs, progress=False)
        else:
            for replica_seeds, workdir in zip(seeds, workdirs):
                loop.train_and_evaluate(config, replica_seeds, workdir, progress=False)
        return 3600 * num_seeds / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="raw MNIST IDX folder (default: the synthetic set)")
    parser.add_argument("--model", default="cnn", choices=("cnn", "vae"))
    parser.add_argument("--seeds", type=int, default=4, help="runs per group, K")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--record", action="store_true", help=f"store the result in {ablate.STRATEGIES_FILE}")
    args = parser.parse_args(argv)
    data = {"data_dir": os.path.abspath(args.data_dir)} if args.data_dir else {"data": "synthetic"}
    config = Config(model=args.model, epochs=args.epochs, train_limit=args.train_limit, **data)
    machine.require_flags(config)  # the thread pool and XLA flags of every run, before JAX starts
    backend = jax.default_backend()
    speeds = {strategy: runs_per_hour(config, args.seeds, strategy) for strategy in ("sequential", "vmap")}
    print(f"{backend} ({', '.join(sorted({d.device_kind for d in jax.devices()}))}), {jax.device_count()} devices, "
          f"{args.model}, {args.seeds} seeds x {args.epochs} epochs on {args.train_limit} images:")
    for strategy, speed in speeds.items():
        print(f"  {strategy:10s} {speed:8.0f} runs/h  ({speed / speeds['sequential']:.2f}x sequential)")
    if args.record:
        try:
            with open(ablate.STRATEGIES_FILE) as f:
                recorded = json.load(f)
        except FileNotFoundError:
            recorded = {}
        recorded[backend] = {"runs_per_hour": speeds, "device_kinds": sorted({d.device_kind for d in jax.devices()}),
                             "devices": jax.device_count(), "model": args.model, "seeds": args.seeds,
                             "epochs": args.epochs, "train_limit": args.train_limit,
                             "date": time.strftime("%Y-%m-%d"),
                             "command": " ".join(["python benchmarks/sweep.py",
                                                  *(["--data-dir DIR"] * bool(args.data_dir)),
                                                  f"--model {args.model} --seeds {args.seeds} --epochs {args.epochs} "
                                                  f"--train-limit {args.train_limit} --record"])}
        with open(ablate.STRATEGIES_FILE, "w") as f:
            json.dump(recorded, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"recorded in {ablate.STRATEGIES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
