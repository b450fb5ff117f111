"""One prepared check of an accelerator: run it whenever a GPU (or TPU) machine is at hand.

    python benchmarks/device_check.py --data-dir DIR        # under 8 minutes on one GPU
    python benchmarks/device_check.py --tiny                # seconds on a CPU (the test suite)

Prints one table (markdown) for the README, with the date and the device:
  1. the CNN, ``--seed 42``, 10 epochs, wall time from the command to its end
     (imports, data, compile included) and training images/s; the same for the
     ResNet-8 of examples/resnet_cifar10.py, 2 epochs, on CIFAR-10 from
     ``--cifar10-dir`` or, without it, on random images of CIFAR-10's shape (speed only);
  2. a sweep of N seeds (only ``init`` varied, 2 epochs) as the vmapped replicas
     of one program against the same seeds one run after another: runs per
     hour of each, their ratio, and whether every replica drew what its run drew;
  3. two same-seed runs without and two with ``--deterministic``: whether each
     pair's param_hash is equal.
Every run is its own ``python -m jaxseed.train`` process (``--deterministic``
must be set before JAX starts), except the sweep, which times ``loop.train``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def train(workdir: str, flags: list[str]) -> tuple[dict, float]:
    """(manifest, wall seconds) of one ``python -m jaxseed.train`` run."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxseed.train", "--quiet", "--workdir", workdir, *flags], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "manifest.json")) as f:
        return json.load(f), seconds


RESNET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                      "resnet_cifar10.py") + ":OBJECTIVE"


def cifar10_shaped(folder: str, num_train: int, num_test: int) -> str:
    """An .npz of random uint8 images of CIFAR-10's shape and random labels, for timing only
    (a machine without the network has no CIFAR-10; the speed does not depend on the pixels)."""
    import numpy as np

    generator = np.random.default_rng(0)
    path = os.path.join(folder, "cifar10-shaped.npz")
    np.savez(path, x_train=generator.integers(0, 256, (num_train, 32, 32, 3), np.uint8),
             y_train=generator.integers(0, 10, num_train), x_test=generator.integers(0, 256, (num_test, 32, 32, 3),
                                                                                    np.uint8),
             y_test=generator.integers(0, 10, num_test))
    return path


def training_speed(workdir: str, info: dict) -> float:
    """Training images per second over the run's epochs (evaluation excluded)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = rows[-1]["step"]
    return steps * info["config"]["batch_size"] / sum(row["training_seconds"] for row in rows)


def sweep(config_flags: list[str], num_seeds: int, root: str) -> dict:
    """Runs per hour of N seeds as replicas of one program and one by one, in this process."""
    from jaxseed import cli, loop, streams

    config = cli.config_from_args(cli.train_parser().parse_args(config_flags))
    seeds = [streams.resolve_seeds(0, {"init": 1 + k}) for k in range(num_seeds)]
    start = time.perf_counter()
    together = loop.train(config, seeds, [os.path.join(root, f"vmap-{k}") for k in range(num_seeds)], progress=False)
    vmapped = time.perf_counter() - start
    start = time.perf_counter()
    alone = [loop.train_and_evaluate(config, replica_seeds, os.path.join(root, f"alone-{k}"), progress=False)
             for k, replica_seeds in enumerate(seeds)]
    sequential = time.perf_counter() - start
    return {"vmap_runs_per_hour": 3600 * num_seeds / vmapped, "sequential_runs_per_hour": 3600 * num_seeds / sequential,
            "same_draws": all(a["fingerprints"] == b["fingerprints"] for a, b in zip(together, alone)),
            "mesh": together[0]["execution"]["mesh"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="raw MNIST IDX folder (default: download into the cache)")
    parser.add_argument("--seeds", type=int, default=32, help="seeds of the sweep (default 32)")
    parser.add_argument("--cifar10-dir", help="CIFAR-10's binary files, for the ResNet (default: random images of "
                                              "its shape, which time it but cannot score it)")
    parser.add_argument("--tiny", action="store_true", help="a synthetic set and one epoch: checks the script runs")
    args = parser.parse_args(argv)
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if args.tiny:
        data, cnn_epochs, sweep_epochs = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64"], 1, 1
        args.seeds = min(args.seeds, 2)
        resnet_size, resnet_flags = (256, 64), ["--batch-size", "64", "--epochs", "1"]
    else:
        cnn_epochs, sweep_epochs = 10, 2
        resnet_size, resnet_flags = (50000, 10000), ["--epochs", "2"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxseed-device-check-") as root:
        info, seconds = train(os.path.join(root, "cnn"), ["--seed", "42", "--epochs", str(cnn_epochs), *data])
        speed = training_speed(os.path.join(root, "cnn"), info)
        device = ", ".join(info["device_kinds"])
        rows.append((f"CNN --seed 42, {cnn_epochs} epochs (command to end, compile included)", f"{seconds:.1f} s",
                     f"{speed:.0f} images/s", f"test accuracy {info['final']['test_accuracy']:.4f}"))
        cifar10 = (["--data", "cifar10", "--data-dir", args.cifar10_dir] if args.cifar10_dir
                   else ["--data", "npz:" + cifar10_shaped(root, *resnet_size)])
        resnet, resnet_seconds = train(os.path.join(root, "resnet"), ["--objective", RESNET, *cifar10, "--augment",
                                                                      "crop_flip", *resnet_flags])
        rows.append((f"ResNet-8 example on {'CIFAR-10' if args.cifar10_dir else 'random CIFAR-10-shaped images'}, "
                     f"{resnet['final']['epoch']} epochs (command to end)", f"{resnet_seconds:.1f} s",
                     f"{training_speed(os.path.join(root, 'resnet'), resnet):.0f} images/s",
                     f"test accuracy {resnet['final']['test_accuracy']:.4f}" if args.cifar10_dir
                     else "no accuracy: random images"))
        result = sweep(["--epochs", str(sweep_epochs), *data], args.seeds, root)
        rows.append((f"{args.seeds} seeds x {sweep_epochs} epochs, vmapped replicas (mesh {result['mesh']})",
                     f"{result['vmap_runs_per_hour']:.0f} runs/h",
                     f"{result['vmap_runs_per_hour'] / result['sequential_runs_per_hour']:.1f}x one by one",
                     f"same draws as one by one: {result['same_draws']}"))
        rows.append((f"the same {args.seeds} seeds one by one", f"{result['sequential_runs_per_hour']:.0f} runs/h",
                     "1.0x", ""))
        for deterministic in (False, True):
            flags = ["--seed", "0", "--epochs", str(sweep_epochs), *data, *(["--deterministic"] * deterministic)]
            (a, seconds_a), (b, _) = (train(os.path.join(root, f"det{deterministic}{i}"), flags) for i in range(2))
            rows.append((f"two same-seed runs{' with --deterministic' if deterministic else ''}, {sweep_epochs} "
                         "epochs", f"{seconds_a:.1f} s each", f"param_hash equal: {a['param_hash'] == b['param_hash']}",
                         a["xla_flags"] or "no XLA flags"))
    print(f"device check, {time.strftime('%Y-%m-%d')}: {info['backend']} ({device}), jax {info['versions']['jax']}")
    print("\n| check | time | figure | note |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
