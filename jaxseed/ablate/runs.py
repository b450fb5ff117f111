"""An ablation's runs: jaxseed's loop trains each planned run into its own run folder, on the
study engine's resume loop (``engine.train_missing``), and the report is the engine's."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from jaxseed import data, loop, machine, manifest, objective, rundir, track
from jaxseed.ablate.records import restore_records, write_records
from jaxseed.ablate.strategy import STRATEGIES_FILE_NAME, expected_hours
from jaxseed.ablate.sweep import PROG, Sweep, run_dir
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.study import engine, plan, report
from jaxseed.study.report import SPREAD
from jaxseed.study.result import Result, checked


def load_result(path: str, seeds: dict, drawn: tuple[str, ...], num_test: int,
                classes: int | None) -> Result | None:
    """A finished run's result: its final metrics, param_hash as its fingerprint, and per example a
    classifier's class probabilities (float[num_test, classes]) or any other objective's test loss
    (float[num_test], where the run stored it); None if it has not finished. Its seeds must be the
    planned ones on the ``drawn`` streams (the others draw nothing). Read as input: a study folder
    may come from anyone."""
    try:
        recorded = rundir.read_manifest(path)
    except FileNotFoundError:
        return None
    if recorded.get("status") != "finished":
        return None
    if any(recorded["streams"].get(name) != seeds[name] for name in drawn):
        raise UserError(f"{path} holds a run of other seeds than this sweep planned; choose another --workdir")
    final, param_hash = recorded.get("final"), recorded.get("param_hash")
    if not isinstance(final, dict) or not isinstance(param_hash, str):
        raise UserError(f"{path}/manifest.json lacks the final metrics or param_hash of a finished run")
    per_example = {}
    if classes is not None:
        per_example["probabilities"] = rundir.load_array(path, "test_probabilities.npy", np.float32,
                                                         (num_test, classes))
    else:
        with contextlib.suppress(FileNotFoundError):  # runs of a jaxseed before they stored them have none
            per_example["loss"] = rundir.load_array(path, "test_losses.npy", np.float32, (num_test,))
    return checked(Result(final, per_example, param_hash), path)

def run_group(config: Config, found: objective.Objective, group_seeds: list[dict], paths: list[str], strategy: str,
              checkpoint_dir: str | None, own_program: bool = False, log: track.Log | None = None) -> None:
    """Train the runs at ``paths`` (each run's folder is claimed by its run): under vmap as the
    replicas of one program (checkpointed in ``checkpoint_dir``), else one run after another.
    With ``own_program``, nothing compiled before is reused (each ``none`` run). ``log``: trackers
    to log each run to as well, tagged with its ``tags``."""
    if own_program:
        loop.forget_compiled()
    if strategy == "vmap":
        loop.train(config, group_seeds, paths, checkpoint_dir=checkpoint_dir, progress=False, resume=True,
                   objective=found, log=log)
        shutil.rmtree(checkpoint_dir)  # the group's results are stored: its shared checkpoints are spent
    else:
        for r, (path, seeds) in enumerate(zip(paths, group_seeds)):
            loop.train_and_evaluate(config, seeds, path, progress=False, resume=True,  # resume: after a kill
                                    objective=found, log=log and log._replace(tags=log.tags[r:r + 1]))

def run_sweep(sweep: Sweep, study: rundir.RunFolder, quiet: bool, shard: tuple[int, int] = (0, 1),
              report_only: bool = False, detect: float | None = None, correlation: float | None = None,
              records: str | None = None, log: track.Log | None = None) -> str | None:
    """Restore the runs ``records`` holds that the study lacks, train every missing run of ``shard``
    (none with ``report_only``), then write the records and the report of every run finished so far, by
    any shard; returns the report's markdown (None while no group has two runs). ``detect`` and
    ``correlation`` size a comparison in the report (``write_report``); ``log`` names trackers
    that get each run too, tagged with its study and group."""
    config = sweep.config
    # The report compares the runs' outputs on each test example (a classifier's, with its labels, and its
    # images where x holds images: uint8, grey or colour).
    dataset = data.load(config.data, config.data_dir, config.train_limit)
    x = dataset.test["x"]
    pictured = x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3)
    labels, images = (dataset.labels(), x if pictured else None) if sweep.objective.classifier else (None, None)
    classes = objective.data_spec(dataset, config.data).num_classes if sweep.objective.classifier else None
    drawn = sweep.objective.drawn_streams(config)

    loaded: dict[tuple[str, int], Result] = {}

    def finished(name: str, k: int) -> bool:
        if (name, k) not in loaded:
            found = load_result(run_dir(sweep.workdir, name, k), sweep.groups[name][k], drawn,
                                dataset.num_test, classes)
            if found is not None:
                loaded[name, k] = found
        return (name, k) in loaded

    def train_program(name: str, together: list[int]) -> None:
        checkpoints = (study.folder(os.path.join("runs", f"{name}-{'-'.join(map(str, together))}-checkpoints"))
                       if sweep.strategy == "vmap" else None)  # sequential runs keep their own
        tags = tuple({"study": os.path.basename(os.path.abspath(sweep.workdir)), "group": name} for _ in together)
        run_group(config, sweep.objective, [sweep.groups[name][k] for k in together],
                  [run_dir(sweep.workdir, name, k) for k in together], sweep.strategy, checkpoints,
                  own_program=name == "none", log=log and log._replace(tags=tags))

    def record_finished() -> None:
        """Write every finished run to the records: a study stopped for good still leaves them."""
        write_records(study, sweep, header, [os.path.basename(run_dir(sweep.workdir, name, k))
                                             for name, runs in sweep.groups.items() for k in range(len(runs))
                                             if finished(name, k)], dataset.num_test, classes)

    study.folder("runs")
    header = sweep.header
    if records:
        restored, header = restore_records(records, sweep, dataset.num_test, classes,
                                           manifest.arrays_hash(dataset.arrays()))
        if not quiet:
            print(f"restored {len(restored)} finished runs from {records}", file=sys.stderr)
    mine = ({name: [] for name in sweep.groups} if report_only
            else plan.shard_runs(sweep.groups, shard, sweep.strategy == "vmap"))
    if not quiet and not report_only:
        print(f"strategy {sweep.strategy}: {sweep.header['strategy_reason']}", file=sys.stderr)
    runs = sum(not finished(name, k) for name, group in mine.items() for k in group)
    hours = expected_hours(config, sweep.strategy, sweep.header["backend"], runs,
                           config.num_kept(dataset.num_train) or dataset.num_train)
    if hours is not None and hours >= 1:  # said even when --quiet: a command of hours should not start unseen
        per_core = ("; shards of --cpu-threads 1 at once, one per core, give the same bits sooner (on 2 cores 1.4x: "
                    "docs/studies.md)" if machine.pool_free(config.portable, machine.xla_flags()) and shard[1] == 1
                    and sweep.header["backend"] == "cpu" and machine.usable_cores() > 1 and config.cpu_threads != 1
                    else "")
        print(f"{PROG}: {runs} runs to train, expected to take up to ~{hours:.1f} h here (scaled from "
              f"{STRATEGIES_FILE_NAME}); --shard I/N splits them over processes or hosts{per_core}, and a stopped "
              "study resumes", file=sys.stderr)
    start = time.perf_counter()
    total = sum(map(len, mine.values()))
    with tqdm(total=total, initial=total - runs, unit="run", desc=f"ablation ({sweep.strategy})",
              disable=quiet or report_only) as bar:
        engine.train_missing(mine, sweep.strategy == "vmap", finished, train_program, record_finished, bar)
    record_finished()
    done = {name: [k for k in range(len(group)) if finished(name, k)] for name, group in sweep.groups.items()}
    done = {name: runs for name, runs in done.items() if len(runs) >= 2}  # a spread needs two runs
    if not done:
        return None
    header = {**header, "seconds_this_invocation": time.perf_counter() - start,
              "runs_finished": len(loaded), "runs_planned": sum(map(len, sweep.groups.values()))}
    found = report.render({name: [loaded[name, k] for k in runs] for name, runs in done.items()},
                          {name: [sweep.groups[name][k] for k in runs] for name, runs in done.items()}, header,
                          SPREAD, labels=labels, test_images=images, detect=detect, correlation=correlation,
                          fingerprint="param_hash", reruns="each its own program")
    report.save(study, found)
    return found.markdown
