"""Claim 3: under fixed seeds a fault recurs at exactly the same step, and it moves
when (and only when) the shuffle stream changes.

The fault: one corrupted training example, its label set to 10 (outside 0..9).
Its cross-entropy is NaN, so the run stops at the step whose batch holds it, and
that step is predicted exactly by the shuffle stream's permutation.

    python experiments/debugging/run.py      # writes README.md here
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import HERE, scratch, seeds, small_config, write_result  # noqa: E402

from jaxseed import data, diff, loop, streams  # noqa: E402

OUT = os.path.join(HERE, "debugging")
CORRUPT = 1234  # index of the corrupted example in the training set


def run(config, dataset, run_seeds):
    """(step at which the loss became NaN, the error's message) of one traced run."""
    workdir = scratch("debug")
    try:
        loop.train_and_evaluate(config, run_seeds, workdir, progress=False, dataset=dataset)
    except FloatingPointError as error:
        trace, _ = diff.read_run(workdir)
        return next(row["step"] for row in trace if not np.isfinite(row["loss"])), str(error)
    return None, "finished without a fault"


def predicted_step(run_seeds, num_train, batch_size):
    """The step whose batch holds CORRUPT in epoch 1, from the shuffle stream alone."""
    permutation = np.asarray(streams.epoch_permutation(streams.root_keys(run_seeds).shuffle, 0, num_train))
    return int(np.flatnonzero(permutation == CORRUPT)[0]) // batch_size


def main():
    config = small_config(trace=True)
    dataset = data.load("mnist", config.data_dir, config.train_limit)
    labels = dataset.train_labels.copy()
    labels[CORRUPT] = 10
    dataset = dataset._replace(train_labels=labels)
    cases = [("base", seeds(0)), ("base, again", seeds(0)), ("dropout=1", seeds(0, dropout=1)),
             ("augment=1", seeds(0, augment=1)), ("init=1", seeds(0, init=1)),
             ("shuffle=1", seeds(0, shuffle=1)), ("shuffle=2", seeds(0, shuffle=2))]
    lines = ["# Debugging", "", f"CNN on the first {config.train_limit} MNIST images, batch {config.batch_size}; "
             f"training example {CORRUPT} corrupted (label 10). Each run is traced and stops at the first "
             "non-finite loss.", "",
             "| run | NaN at step | predicted from the shuffle permutation |", "|---|---|---|"]
    message = None
    for name, run_seeds in cases:
        step, text = run(config, dataset, run_seeds)
        message = message or text
        lines.append(f"| {name} | {step} | {predicted_step(run_seeds, dataset.num_train, config.batch_size)} |")
    lines += ["", "The fault recurs at the same step under the same seeds and under changes to init, dropout "
              "or augmentation; only a new shuffle seed moves it, to the step its permutation predicts. "
              "What the run printed:", "", f"    {message}", "",
              "To find where two runs part ways, `python -m jaxseed.diff RUN_A RUN_B` compares their "
              "`--trace` files step by step.", ""]
    write_result(OUT, lines)


if __name__ == "__main__":
    main()
