"""What jaxseed's fixed XLA CPU thread pool and its YNNPACK setting cost, in CLI training images/s.

    python benchmarks/cpu_threads.py [--data-dir DIR] [--steps 200] [--rounds 3] [--threads 2 8]

For the CNN and the VAE, ``python -m jaxseed.train`` (default config otherwise) in its own
process, in interleaved rounds, under:
- jaxlib's defaults: the pool follows the usable cores (``--cpu-threads 0``) and every YNNPACK
  fusion is on (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-invalid`` removes a type that
  is not in jaxlib's default list, so the list stays as jaxlib has it): runs before issue 29;
- ``--portable``'s YNNPACK setting (no reduce fusions; every run's from issue 29 to issue 33), the
  pool following the cores (``--cpu-threads 0``);
- jaxseed's YNNPACK setting (dot fusions only), the pool following the cores, then each pool of
  ``--threads`` (the default ``--cpu-threads`` among them);
- every YNNPACK fusion off (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``), default pool.
Each figure is the median over the rounds of epoch 2's images/s (``throughput.cli_speed``), with
its ratio to jaxlib's defaults; the usable cores and the CPU are printed with them.
"""

from __future__ import annotations

import argparse
import statistics

from throughput import cli_speed

from jaxseed import machine
from jaxseed.config import Config

YNN_DEFAULT = {"XLA_FLAGS": f"{machine.YNN_FUSION_TYPE}=-invalid"}
NO_YNN_REDUCE = {"XLA_FLAGS": machine.PORTABLE_YNN_FUSIONS}
NO_YNN = {"XLA_FLAGS": f"{machine.YNN_FUSION_TYPE}="}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="raw MNIST IDX folder (default: the synthetic set)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, Config().cpu_threads], help="pools to time")
    args = parser.parse_args(argv)
    data_flags = ["--data-dir", args.data_dir] if args.data_dir else ["--data", "synthetic"]
    modes = {"jaxlib's defaults (pool = cores, every YNNPACK fusion)": (["--cpu-threads", "0"], YNN_DEFAULT),
             "no YNNPACK reduce fusions (--portable's), pool = cores": (["--cpu-threads", "0"], NO_YNN_REDUCE),
             "YNNPACK dot fusions only, pool = cores": (["--cpu-threads", "0"], {}),
             **{f"YNNPACK dot fusions only, --cpu-threads {n}": (["--cpu-threads", str(n)], {}) for n in args.threads},
             "no YNNPACK fusion at all, default --cpu-threads": ([], NO_YNN)}
    config = Config()
    num_train = 60_000 if args.data_dir else 10_000
    speeds = {(model, mode): [] for model in ("cnn", "vae") for mode in modes}
    for _ in range(args.rounds):
        for model, mode in speeds:
            flags, env = modes[mode]
            # The VAE's final evaluation draws 100 latent samples per image by default: not timed here.
            settings = ["--importance-samples", "1"] if model == "vae" else []
            speeds[model, mode].append(cli_speed([*data_flags, "--model", model, *settings, *flags],
                                                 config, args.steps, num_train, env))
    cpu = machine.cpu()
    print(f"CPU: {cpu['model']}, {cpu['cores']} usable cores; median of {args.rounds} interleaved rounds, "
          f"{args.steps} steps of {config.batch_size} an epoch")
    print("| model | XLA CPU | training images/s | vs jaxlib's defaults |\n|---|---|---|---|")
    for model in ("cnn", "vae"):
        base = statistics.median(speeds[model, next(iter(modes))])
        for mode in modes:
            median = statistics.median(speeds[model, mode])
            print(f"| {model} | {mode} | {median:.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
