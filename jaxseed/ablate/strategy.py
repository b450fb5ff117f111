"""``--strategy auto``: which way a group's K runs execute, from the runs per hour that
benchmarks/sweep.py measured on each backend, and how long a study is expected to take."""

from __future__ import annotations

import json
import os

from jaxseed.config import Config

STRATEGIES = ("auto", "sequential", "vmap")
# Runs per hour of each strategy per backend, measured by benchmarks/sweep.py --record.
STRATEGIES_FILE_NAME = "strategies.json"
STRATEGIES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), STRATEGIES_FILE_NAME)


def _measurement(backend: str) -> dict | None:
    """The sweep measurement STRATEGIES_FILE records for ``backend`` (``benchmarks/sweep.py --record``)."""
    try:
        with open(STRATEGIES_FILE) as f:
            return json.load(f).get(backend)
    except (OSError, ValueError):
        return None


def choose_strategy(strategy: str, backend: str) -> tuple[str, str]:
    """(strategy, why): ``auto`` picks whichever ran more runs per hour on this backend in the
    measurement recorded in STRATEGIES_FILE; on a backend with no measurement, ``sequential``, and
    the reason says so."""
    if strategy != "auto":
        return strategy, "asked for"
    measured = _measurement(backend)
    if not measured:
        return "sequential", (f"auto: no sweep measurement recorded for {backend} (run benchmarks/sweep.py --record "
                              "there); sequential")
    speeds = measured["runs_per_hour"]
    fastest = max(speeds, key=speeds.get)
    return fastest, (f"auto: {fastest} ran {speeds[fastest]:.0f} runs/h against " + ", ".join(
        f"{name} {speed:.0f}" for name, speed in speeds.items() if name != fastest)
                     + f" on {backend} ({measured['date']}, {STRATEGIES_FILE_NAME})")


def expected_hours(config: Config, strategy: str, backend: str, runs: int, num_train: int) -> float | None:
    """Hours ``runs`` runs of ``config`` on ``num_train`` training examples are expected to take: the
    measured runs/h of STRATEGIES_FILE scaled by the examples each run trains on (epochs x examples;
    the measured runs' compilation scales along, so long runs come out somewhat dearer than they are).
    None where no measurement of this model was made on this backend."""
    measured = _measurement(backend)
    if not measured or measured.get("model") != config.model or strategy not in measured["runs_per_hour"]:
        return None
    scale = config.epochs * num_train / (measured["epochs"] * measured["train_limit"])
    return runs * scale / measured["runs_per_hour"][strategy]
