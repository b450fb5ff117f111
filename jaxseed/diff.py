"""First step at which two runs' per-step traces differ.

    python -m jaxseed.diff RUN_A RUN_B

Both runs must have been trained with ``--trace`` (each step's loss and a
checksum of the parameters in trace.jsonl). Exit 0 if the traces are
identical, 1 if they diverge, 2 on bad input.
"""

from __future__ import annotations

import json
import os
import sys

from jaxseed import cli, manifest
from jaxseed.errors import UserError


def read_run(workdir: str) -> tuple[list[dict], dict]:
    """(trace rows, manifest) of a run folder."""
    try:
        with open(os.path.join(workdir, "trace.jsonl")) as f:
            trace = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(workdir, "manifest.json")) as f:
            recorded = json.load(f)
        # data_dir is stored relative to each workdir: compare where it points, not how it is written.
        recorded["config"] = manifest.config_from_record(recorded["config"], workdir).to_dict()
    except FileNotFoundError as error:
        raise UserError(f"{workdir} has no {os.path.basename(error.filename)} (train it with --trace)") from None
    except (ValueError, TypeError, KeyError, UserError) as error:
        raise UserError(f"cannot read the run in {workdir}: {error}") from None
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
             for name in manifest_a.get("streams_used", manifest_a["streams"])
             if manifest_a["streams"].get(name) != manifest_b["streams"].get(name)]
    config = [f"{key} {value!r} vs {manifest_b['config'].get(key)!r}"
              for key, value in manifest_a["config"].items() if manifest_b["config"].get(key) != value]
    lines.append("  stream seeds that differ: " + (", ".join(seeds) or "none"))
    lines.append("  config that differs: " + (", ".join(config) or "none"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = cli.new_parser("python -m jaxseed.diff", __doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    try:
        (trace_a, manifest_a), (trace_b, manifest_b) = read_run(args.run_a), read_run(args.run_b)
    except UserError as error:
        print(f"jaxseed.diff: error: {error}", file=sys.stderr)
        return 2
    difference = first_difference(trace_a, trace_b)
    print("\n".join(describe(difference, manifest_a, manifest_b, len(trace_a))))
    return 0 if difference is None else 1


if __name__ == "__main__":
    sys.exit(main())
