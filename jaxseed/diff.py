"""First step at which two runs' per-step traces differ.

    python -m jaxseed.diff RUN_A RUN_B

Both runs must have been trained with ``--trace`` (each step's loss and a
checksum of the parameters in trace.jsonl). Exit 0 if the traces are
identical, 1 if they diverge, 2 on bad input.
"""

from __future__ import annotations

import os
import sys

from jaxseed import cli, entry, rundir
from jaxseed.config import NPZ, npz_path
from jaxseed.errors import UserError

PROG = "python -m jaxseed.diff"


def read_run(workdir: str) -> tuple[list[dict], dict]:
    """(trace rows, manifest) of a run folder, each checked to be what jaxseed writes."""
    try:
        trace = rundir.read_trace(workdir)
        recorded = rundir.read_manifest(workdir)
    except FileNotFoundError as error:
        raise UserError(f"{workdir} has no {os.path.basename(error.filename)}") from None
    if not trace:
        raise UserError(f"{workdir} has no trace.jsonl (train it with --trace)")
    # data_dir is stored relative to each workdir: compare where it points, not how it is written
    # (only compared, never read, so it may point anywhere).
    config = dict(recorded["config"])
    if isinstance(config.get("data_dir"), str):
        config["data_dir"] = os.path.normpath(os.path.join(os.path.abspath(workdir), config["data_dir"]))
    if npz_path(config.get("data")):  # likewise an npz file
        config["data"] = NPZ + os.path.normpath(os.path.join(os.path.abspath(workdir), npz_path(config["data"])))
    recorded["config"] = config
    used = recorded.get("streams_used")
    recorded["streams_used"] = ([name for name in used if isinstance(name, str)] if isinstance(used, list)
                                else list(recorded["streams"]))
    return trace, recorded


def first_difference(trace_a: list[dict], trace_b: list[dict]) -> dict | None:
    """The first step whose loss or parameter checksum differs, or None.

    Steps are matched by number; a step present in only one trace counts as a
    difference at the end of the shorter one.
    """
    by_step_b = {row["step"]: row for row in trace_b}
    for row in trace_a:
        other = by_step_b.get(row["step"])
        if other is None or (row["loss"], row["param_checksum"]) != (other["loss"], other["param_checksum"]):
            return {"step": row["step"], "epoch": row["epoch"], "a": row, "b": other}
    if len(trace_b) > len(trace_a):
        extra = trace_b[len(trace_a)]
        return {"step": extra["step"], "epoch": extra["epoch"], "a": None, "b": extra}
    return None


def describe(difference: dict | None, manifest_a: dict, manifest_b: dict, steps: int) -> list[str]:
    if difference is None:
        return [f"identical: {steps} steps with equal loss and parameter checksum"]
    a, b = difference["a"], difference["b"]
    lines = [f"first difference at step {difference['step']} (epoch {difference['epoch']})"]
    for name, row in (("A", a), ("B", b)):
        lines.append(f"  {name}: " + (f"loss {row['loss']!r}, param_checksum {row['param_checksum']}"
                                      if row else "no such step"))
    seeds = [f"{name} {manifest_a['streams'].get(name)} vs {manifest_b['streams'].get(name)}"
             for name in manifest_a["streams_used"]
             if manifest_a["streams"].get(name) != manifest_b["streams"].get(name)]
    config = [f"{key} {value!r} vs {manifest_b['config'].get(key)!r}"
              for key, value in manifest_a["config"].items() if manifest_b["config"].get(key) != value]
    lines.append("  stream seeds that differ: " + (", ".join(seeds) or "none"))
    lines.append("  config that differs: " + (", ".join(config) or "none"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = cli.new_parser(PROG, __doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)

    def compare() -> int:
        (trace_a, manifest_a), (trace_b, manifest_b) = read_run(args.run_a), read_run(args.run_b)
        difference = first_difference(trace_a, trace_b)
        print("\n".join(describe(difference, manifest_a, manifest_b, len(trace_a))))
        return 0 if difference is None else 1

    return entry.run("jaxseed.diff", compare)


if __name__ == "__main__":
    sys.exit(main())
