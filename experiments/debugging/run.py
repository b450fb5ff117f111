"""Claim 3: under fixed seeds a fault recurs at exactly the same step, and it moves
when (and only when) the shuffle stream changes.

The fault: one corrupted training example, its label set to 10 (outside MNIST's 0..9;
the model keeps its 10 classes). Its cross-entropy is NaN, so the run stops at the
step whose batch holds it, and that step is predicted exactly by the shuffle
stream's permutation.

    python experiments/debugging/run.py [--data-dir DIR] [--tiny] [--out DIR]   # writes README.md here
"""

import os
import sys
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from common import Verdict, judge, scratch, seeds, small_config, write_result  # noqa: E402

from jaxseed import data, diff, loop, streams  # noqa: E402
from jaxseed.config import Config  # noqa: E402
from jaxseed.step import steps_per_epoch  # noqa: E402

CORRUPT = 1234  # index of the corrupted example in the training set
TINY_CORRUPT = 42  # within --tiny's 256 examples, where shuffle=1 moves the fault (from step 2 to 5)
BAD_LABEL = data.NUM_CLASSES  # one past MNIST's classes
CASES = [("base", seeds(0)), ("base, again", seeds(0)), ("dropout=1", seeds(0, dropout=1)),
         ("augment=1", seeds(0, augment=1)), ("init=1", seeds(0, init=1)),
         ("shuffle=1", seeds(0, shuffle=1)), ("shuffle=2", seeds(0, shuffle=2))]
TINY_CASES = ("base", "base, again", "init=1", "shuffle=1")


class Case(NamedTuple):
    name: str
    seeds: dict
    step: int | None  # where the traced loss first became non-finite (None: it never did)
    predicted: int | None  # where the shuffle permutation puts the corrupted example
    message: str  # what the run raised


class Result(NamedTuple):
    config: Config
    corrupt: int
    cases: list[Case]
    verdict: Verdict


def corrupted(dataset: data.Dataset, index: int) -> data.Dataset:
    """``dataset`` with training example ``index`` labelled BAD_LABEL."""
    labels = dataset.train["y"].copy()
    labels[index] = BAD_LABEL
    return dataset._replace(train={**dataset.train, "y": labels})


def fault(config: Config, dataset: data.Dataset, run_seeds: dict, workdir: str) -> tuple[int | None, str]:
    """(step at which the traced loss became non-finite, the error's message) of one run."""
    try:
        loop.train_and_evaluate(config, run_seeds, workdir, progress=False, dataset=dataset)
    except FloatingPointError as error:
        trace, _ = diff.read_run(workdir)
        return next((row["step"] for row in trace if not np.isfinite(row["loss"])), None), str(error)
    return None, "finished without a fault"


@streams.pinned_generator  # the draws exactly as the training loop makes them
def predicted_step(config: Config, run_seeds: dict, num_train: int, index: int) -> int | None:
    """The first step whose batch holds example ``index``, from the shuffle stream alone
    (None: the dropped last partial batch holds it in every epoch)."""
    shuffle, num_steps = streams.root_keys(run_seeds).shuffle, steps_per_epoch(config, num_train)
    for epoch in range(config.epochs):
        order = np.asarray(streams.epoch_order(shuffle, epoch, num_train))
        position = int(np.flatnonzero(order == index)[0])
        if position < num_steps * config.batch_size:
            return epoch * num_steps + position // config.batch_size
    return None


def judge_faults(cases: list[Case]) -> Verdict:
    """Every run faulted; those with the base run's shuffle seed at its step; each where its permutation says."""
    base = cases[0]
    same_order = [case for case in cases if case.seeds["shuffle"] == base.seeds["shuffle"]]
    moved = [case for case in cases if case.seeds["shuffle"] != base.seeds["shuffle"]]
    unfaulted = [case.name for case in cases if case.step is None]
    astray = [f"{case.name} at {case.step}, predicted {case.predicted}" for case in cases
              if case.step != case.predicted]
    steps = ", ".join(f"{case.step} ({case.name})" for case in same_order)
    if astray:
        prediction = f"{len(astray)} run(s) did not stop where their permutation predicts: {'; '.join(astray)}"
    else:
        prediction = "every run stopped at the step its shuffle permutation predicts" + (
            f", those with a new shuffle seed at {', '.join(f'{case.step} ({case.name})' for case in moved)}"
            if moved else "")
    return judge(
        "under fixed seeds a fault recurs at exactly the same step, seeds other than shuffle's do not move it, "
        "and a new shuffle seed moves it to the step its permutation predicts",
        [(not unfaulted, f"{len(cases) - len(unfaulted)} of {len(cases)} runs stopped at a NaN loss"
                         + (f" ({', '.join(unfaulted)} finished without one)" if unfaulted else "")),
         (base.step is not None and len({case.step for case in same_order}) == 1,
          f"the {len(same_order)} runs with the base run's shuffle seed stopped at steps {steps}"),
         (not astray, prediction)])


def measure(args) -> Result:
    """Train each case on the corrupted set, traced, and judge where the faults fell."""
    common.start_jax()
    config = small_config(args, trace=True)
    index, names = (TINY_CORRUPT, TINY_CASES) if args.tiny else (CORRUPT, [name for name, _ in CASES])
    dataset = corrupted(data.load("mnist", config.data_dir, config.train_limit), index)
    cases = []
    with scratch("debug") as folder:
        for number, (name, run_seeds) in enumerate(case for case in CASES if case[0] in names):
            step, message = fault(config, dataset, run_seeds, os.path.join(folder, str(number)))
            cases.append(Case(name, run_seeds, step, predicted_step(config, run_seeds, dataset.num_train, index),
                              message))
    return Result(config, index, cases, judge_faults(cases))


def report(result: Result) -> list[str]:
    config = result.config
    return ["# Debugging", "", f"CNN on the first {config.train_limit} MNIST images, batch {config.batch_size}, "
            f"{common.epochs(config)}; training example {result.corrupt} corrupted (label {BAD_LABEL}, outside the "
            f"model's {data.NUM_CLASSES} classes). Each run is traced and stops at the first non-finite loss.", "",
            "| run | NaN at step | predicted from the shuffle permutation |", "|---|---|---|",
            *(f"| {case.name} | {case.step} | {case.predicted} |" for case in result.cases), "",
            result.verdict.conclusion, "", "What the base run printed:", "", f"    {result.cases[0].message}", "",
            "To find where two runs part ways, `python -m jaxseed.diff RUN_A RUN_B` compares their "
            "`--trace` files step by step.", ""]


def experiment(args) -> Result:
    """Measure, and write the README into ``args.out``."""
    result = measure(args)
    write_result(args.out, report(result))
    return result


def parser():
    return common.parser(__file__, __doc__)


def main(argv=None) -> int:
    return common.main(parser(), experiment, argv)


if __name__ == "__main__":
    sys.exit(main())
