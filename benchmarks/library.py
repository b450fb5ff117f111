"""The library's costs beside what a user would write by hand, side by side in one process.

    python benchmarks/library.py [--batch 128] [--calls 2000] [--runs 40] [--rounds 3]

1. Per-example keys: ``jaxseed.example_keys(root, epoch, index)`` against the hand-written
   ``vmap(fold_in(fold_in(root, epoch), i))`` it is defined as, both jitted, key[B] per call.
2. The study engine's overhead per run: ``jaxseed.study`` of a training function that returns at
   once (metrics and a per-example output of 10,000 test examples) against calling it alone as
   often; the difference per run is what storing, resuming and reporting cost.
Medians of interleaved rounds.
"""

import argparse
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

import jaxseed
from jaxseed import machine

TEST_EXAMPLES = 10_000


def hand_written(root, epoch, index):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, epoch), i))(index)


def seconds_per_call(function, root, index, calls: int) -> float:
    jax.block_until_ready(function(root, 0, index))  # compiled before timing
    start = time.perf_counter()
    for epoch in range(calls):
        keys = function(root, epoch, index)
    jax.block_until_ready(keys)
    return (time.perf_counter() - start) / calls


def instant(seeds: jaxseed.Seeds) -> jaxseed.Result:
    """A run that costs nothing: what the engine adds is all there is."""
    correct = np.arange(TEST_EXAMPLES) % (2 + seeds["init"] % 3) == 0
    return jaxseed.Result({"test_accuracy": float(correct.mean())}, {"correct": correct}, str(seeds["init"]))


def engine_seconds_per_run(runs_per_group: int) -> tuple[float, float]:
    """(seconds per run through jaxseed.study, seconds per call alone) over the same runs."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        jaxseed.study(instant, streams=("init",), seeds=runs_per_group, workdir=workdir)
        studied = (time.perf_counter() - start) / (3 * runs_per_group)  # init, all and none
    start = time.perf_counter()
    for k in range(3 * runs_per_group):
        instant(jaxseed.Seeds(k))
    return studied, (time.perf_counter() - start) / (3 * runs_per_group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=40, help="runs per group of the timed study")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root, index = jaxseed.Seeds(0).key("dropout"), jax.numpy.arange(args.batch)
    library, by_hand = jax.jit(jaxseed.example_keys), jax.jit(hand_written)
    np.testing.assert_array_equal(jax.random.key_data(library(root, 3, index)),
                                  jax.random.key_data(by_hand(root, 3, index)))  # the same keys, bit for bit
    keys = {"library": [], "hand": []}
    engine = {"study": [], "alone": []}
    for _ in range(args.rounds):
        keys["library"].append(seconds_per_call(library, root, index, args.calls))
        keys["hand"].append(seconds_per_call(by_hand, root, index, args.calls))
        studied, alone = engine_seconds_per_run(args.runs)
        engine["study"].append(studied)
        engine["alone"].append(alone)
    keys, engine = ({name: statistics.median(values) for name, values in d.items()} for d in (keys, engine))
    print(f"CPU: {machine.cpu()['model']}; jax {jax.__version__}, {platform.python_version()}; "
          f"medians of {args.rounds} interleaved rounds")
    print("| what | figure |\n|---|---|")
    print(f"| `example_keys`, key[{args.batch}] per jitted call | {keys['library'] * 1e6:.1f} µs |")
    print(f"| hand-written `vmap(fold_in(fold_in(root, epoch), i))` | {keys['hand'] * 1e6:.1f} µs |")
    print(f"| library / hand-written | {keys['library'] / keys['hand']:.2f}× |")
    print(f"| a run through `jaxseed.study` ({3 * args.runs} runs, {TEST_EXAMPLES:,} per-example outputs) | "
          f"{engine['study'] * 1e3:.1f} ms |")
    print(f"| the same function called alone | {engine['alone'] * 1e3:.2f} ms |")
    print(f"| the engine's overhead per run | {(engine['study'] - engine['alone']) * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
