"""What one run of a study returns, and the checks the engine makes of it (a user's function
may return anything)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxseed.errors import UserError

# Per-example outputs the report reads, each with a leading axis of the N test examples.
PER_EXAMPLE = {
    "correct": "bool[N]: whether the run gets example i right",
    "loss": "float[N]: the run's loss on example i",
    "probabilities": "float[N, C]: a classifier's class probabilities (the study needs its labels)",
}


class Result(NamedTuple):
    """A run's outcome: ``Result(metrics={"test_accuracy": 0.99}, per_example={"correct": c},
    fingerprint=h)``.

    Attributes:
      metrics: scalar name -> finite number; the same names every run (the report's tables).
      per_example: optional, any of ``correct`` bool[N], ``loss`` float[N] and ``probabilities``
        float[N, C]; the same N every run (the report's per-example instability).
      fingerprint: optional, a string that equals for bit-identical runs (e.g. a hash of the final
        parameters: ``jaxseed.fingerprint(params)``); the ``none`` group's bitwise check.
    """

    metrics: Mapping[str, float]
    per_example: Mapping[str, Any] = {}
    fingerprint: str | None = None


def checked(value: Any, run: str) -> Result:
    """``value`` (a Result, or a dict of metrics) as a Result of numpy arrays; UserError naming
    ``run`` and what is wrong."""
    if isinstance(value, Mapping):
        value = Result(metrics=value)
    if not isinstance(value, Result):
        raise UserError(f"run {run} returned a {type(value).__name__}; return a dict of metrics or a jaxseed.Result")
    if not isinstance(value.metrics, Mapping) or not value.metrics:
        raise UserError(f"run {run} returned no metrics; return at least one, e.g. {{'test_loss': 0.3}}")
    metrics = {}
    for name, number in value.metrics.items():
        try:
            metrics[str(name)] = float(number)
        except (TypeError, ValueError):
            raise UserError(f"run {run}: metric {name!r} is not a number ({type(number).__name__})") from None
        if not math.isfinite(metrics[name]):
            raise UserError(f"run {run}: metric {name!r} is {metrics[name]}, not finite")
        if type(number) is int:  # a count stays a count in the records
            metrics[name] = number
    per_example = {}
    for name, array in dict(value.per_example or {}).items():
        if name not in PER_EXAMPLE:
            raise UserError(f"run {run}: per_example {name!r} is none of {', '.join(PER_EXAMPLE)}")
        array = np.asarray(array)
        if name == "correct" and (array.dtype != bool or array.ndim != 1):
            raise UserError(f"run {run}: per_example 'correct' must be {PER_EXAMPLE['correct']}, got "
                            f"{array.dtype}{list(array.shape)}")
        if name != "correct" and (array.dtype.kind != "f" or array.ndim != (1 if name == "loss" else 2)
                                  or not np.isfinite(array).all()):
            raise UserError(f"run {run}: per_example {name!r} must be finite {PER_EXAMPLE[name]}, got "
                            f"{array.dtype}{list(array.shape)}")
        per_example[name] = array.astype(np.float32) if name != "correct" else array
    if value.fingerprint is not None and not isinstance(value.fingerprint, str):
        raise UserError(f"run {run}: fingerprint must be a string, got {type(value.fingerprint).__name__}")
    return Result(metrics, per_example, value.fingerprint)


def same_kind(result: Result, first: Result, run: str, first_run: str) -> None:
    """UserError unless ``result`` holds the metrics, per-example outputs and shapes ``first`` does:
    a group's spread compares like with like."""
    if list(result.metrics) != list(first.metrics):
        raise UserError(f"run {run} returned the metrics {', '.join(result.metrics)}, run {first_run} "
                        f"{', '.join(first.metrics)}: return the same names every run")
    shapes = {name: np.shape(a) for name, a in result.per_example.items()}
    expected = {name: np.shape(a) for name, a in first.per_example.items()}
    if shapes != expected:
        raise UserError(f"run {run} returned per-example outputs of shapes {shapes}, run {first_run} {expected}: "
                        "the same test examples every run")
    if (result.fingerprint is None) != (first.fingerprint is None):
        raise UserError(f"run {run} and run {first_run} differ in whether they return a fingerprint")
