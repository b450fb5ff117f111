"""An ablation's records: every finished run (manifest, metrics, per-example test outputs) in one
compressed ``records.npz`` beside its report, and their restoring into a study folder as full
run folders, so that a study continues on another machine or in a later session."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
import zlib

import numpy as np

from jaxseed import machine, npyfile, rundir
from jaxseed.ablate.sweep import PROG, Sweep, arithmetic_difference, plan_difference, run_dir
from jaxseed.errors import UserError, one_line

RECORDS = "records.npz"


def write_records(study: rundir.RunFolder, sweep: Sweep, header: dict, names: list[str], num_test: int,
                  classes: int | None) -> None:
    """Every finished run of the study in one compressed file, ``records.npz``: its manifest and
    metrics, and its per-example test outputs (what the report reads) at float16, a small part
    of the runs' folders. Committed beside a report, it lets another machine or session continue
    the study where this one stopped (``--records``); ``header``: the study's (``sweep.json``'s, or
    the records' it was restored from). A run stored without per-example losses (an older jaxseed's)
    has NaN in their place."""
    manifests, metrics, losses, probabilities = [], [], [], []
    for name in names:
        path = os.path.join(sweep.workdir, "runs", name)
        manifests.append(json.dumps(rundir.read_manifest(path)))
        metrics.append(json.dumps(rundir.read_metrics(path)))
        try:
            losses.append(rundir.load_array(path, "test_losses.npy", np.float32, (num_test,)))
        except FileNotFoundError:
            losses.append(np.full(num_test, np.nan, np.float32))
        if classes is not None:
            probabilities.append(rundir.load_array(path, "test_probabilities.npy", np.float32, (num_test, classes)))
    arrays = {"header": np.array(json.dumps(header)), "names": np.array(names, dtype=str),
              "manifests": np.array(manifests, dtype=str), "metrics": np.array(metrics, dtype=str),
              "losses": np.array(losses, np.float16).reshape(len(names), num_test)}
    if classes is not None:
        arrays["probabilities"] = np.array(probabilities, np.float16).reshape(len(names), num_test, classes)
    study.save_arrays(RECORDS, arrays)


# A records file of 10,000 runs of CIFAR-10's test set stays below this.
MAX_RECORDS_BYTES = 4 << 30


def _machine_difference(recorded: list[dict], portable: bool) -> str | None:
    """The first recorded run whose XLA CPU thread pool (unless ``machine.pool_free``) or CPU (unless
    ``portable``) is not this process's."""
    here, pool = machine.cpu(), machine.thread_pool()
    for run in recorded:
        cpu = run.get("cpu") if isinstance(run.get("cpu"), dict) else {"model": run.get("cpu")}
        if not machine.pool_free(portable, run.get("xla_flags")) and run.get("thread_pool") != pool:
            return f"XLA CPU thread pool: {run.get('thread_pool')!r} there, {pool!r} here"
        if not portable and not machine.same_cpu(cpu, here):
            return f"CPU: {cpu.get('model')!r} there, {here['model']!r} here, and the study is not --portable"
    return None


def restore_records(path: str, sweep: Sweep, num_test: int, classes: int | None,
                    data_hash: str) -> tuple[list[str], dict]:
    """Write the runs of a records file (``write_records``) that the study folder has not finished
    into it, as finished runs; returns their names and the header the report carries (the records'
    where they hold every planned run: they are the study). The file is input: it must hold this
    study (configuration less paths, plan), runs of this data (its hash), computed as this process
    computes unless it holds every run (``arithmetic_difference``, ``_machine_difference``), arrays of
    the data's shapes, and manifests that name the planned seeds (checked again when the report
    reads them, as any run's)."""
    planned = {os.path.basename(run_dir(sweep.workdir, name, k)) for name, runs in sweep.groups.items()
               for k in range(len(runs))}
    keys = ("header", "names", "manifests", "metrics", "losses", *(("probabilities",) if classes is not None else ()))
    try:
        with np.load(path, allow_pickle=False) as stored:
            # Every array's size from its .npy header, before any is read: the file is input.
            shapes = npyfile.npz_headers(stored.zip, keys)
            runs = shapes["names"][0][0] if len(shapes["names"][0]) == 1 else -1
            expected = {"losses": ((runs, num_test), np.float16),
                        "probabilities": ((runs, num_test, classes), np.float16)}
            if (not 0 <= runs <= len(planned) or any(shapes[key] != expected[key] for key in expected if key in keys)
                    or any(shapes[key][0] != (runs,) or shapes[key][1].kind != "U" for key in keys[1:4])
                    or shapes["header"][0] != () or shapes["header"][1].kind != "U"
                    or sum(np.prod(shape) * dtype.itemsize for shape, dtype in shapes.values()) > MAX_RECORDS_BYTES):
                raise ValueError("its arrays are not of this sweep's shapes (runs, test examples, classes)")
            header = json.loads(str(stored["header"]))
            names, manifests, metrics = (stored[key].tolist() for key in ("names", "manifests", "metrics"))
            losses = stored["losses"]
            probabilities = stored["probabilities"] if classes is not None else None
    except KeyError as missing:
        raise UserError(f"cannot read the records {path}: it has no {missing.args[0]}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(f"cannot read the records {path}: {one_line(error)}") from None
    differs = plan_difference(header, sweep.header, sweep.objective.drawn_streams(sweep.config)) if isinstance(
        header, dict) else "not a study's header"
    if differs:
        raise UserError(f"{path} holds the runs of another study ({differs}); continue it with its own command, "
                        "or drop --records")
    if not set(names) <= planned:
        raise UserError(f"{path} names runs this sweep did not plan")
    try:
        recorded, rows = [json.loads(text) for text in manifests], [json.loads(text) for text in metrics]
    except json.JSONDecodeError as error:
        raise UserError(f"cannot read the records {path}: {error}") from None
    if not all(isinstance(m, dict) for m in recorded) or not all(isinstance(r, list) for r in rows):
        raise UserError(f"cannot read the records {path}: not manifests and metrics")
    other_data = sorted({str(m.get("data_hash")) for m in recorded} - {data_hash})
    if other_data:
        raise UserError(f"{path} holds runs trained on other data (data_hash {other_data[0][:16]}…, here "
                        f"{data_hash[:16]}…): name the study's data with --data-dir or --data")
    # Runs computed otherwise (another CPU or thread pool without --portable, other flags or versions)
    # beside this machine's would make a group's spread part machine, and the determinism control fail
    # for a reason it does not name; a study whose every run is recorded only recomputes its report.
    differs = arithmetic_difference(header, sweep.header, environment=True) or _machine_difference(
        recorded, sweep.config.portable)
    complete = set(names) == planned
    if differs and not complete:
        raise UserError(f"{path} holds runs computed otherwise ({differs}), whose bits differ from this process's: "
                        "continue the study where they ran, or drop --records")
    if differs:
        print(f"{PROG}: the records hold every planned run, computed otherwise ({differs}): the report is "
              "recomputed from them, and no run could be added here", file=sys.stderr)
    restored = []
    for i, name in enumerate(names):
        folder = os.path.join(sweep.workdir, "runs", name)
        with contextlib.suppress(FileNotFoundError):
            if rundir.read_manifest(folder).get("status") == "finished":
                continue
        with rundir.RunFolder.claim(folder, "run", resume=True) as run:
            run.write_lines("metrics.jsonl", rows[i])
            if not np.isnan(losses[i]).all():
                run.save_array("test_losses.npy", losses[i].astype(np.float32))
            if probabilities is not None:
                run.save_array("test_probabilities.npy", probabilities[i].astype(np.float32))
            run.write_json("manifest.json", recorded[i])  # last: a run counts once its manifest says finished
        restored.append(name)
    return restored, header if complete else sweep.header
