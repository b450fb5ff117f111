"""Ablate the key streams: how much does each random source move the result?

    python -m jaxseed.ablate --model cnn --seeds 10
    python -m jaxseed.ablate --model vae --seeds 5 --streams latent,init
    python -m jaxseed.ablate --objective my_model.py:OBJECTIVE --data npz:my_data.npz --seeds 5

Groups of K runs each:
  * one per chosen stream: only that stream's seed varies, the others stay at the base seed;
  * ``all``: every stream varies together;
  * ``none``: K reruns of the base configuration, each its own program (compiled and
    executed separately). Its spread must be exactly zero: it is the determinism
    control, and the report says so loudly when it is not.

Each run's result is stored as it finishes; rerunning the same command completes
only the missing runs. Writes ablation.json (every run, and the summary),
ablation.csv, ablation.md and ablation.png, for a classifier unstable.png (the
test images its runs disagree on), and records.npz: the finished runs, compact, from
which ``--records`` continues the study in another folder, machine or session.
The statistics are jaxseed.stats.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import zipfile
import zlib
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from jaxseed import cli, data, entry, loop, machine, manifest, npyfile, objective, rundir, streams, track
from jaxseed.config import Config
from jaxseed.errors import UserError, one_line
from jaxseed.study import engine, plan, report
from jaxseed.study.report import SPREAD
from jaxseed.study.result import Result, checked

STRATEGIES = ("auto", "sequential", "vmap")
# Runs per hour of each strategy per backend, measured by benchmarks/sweep.py --record.
STRATEGIES_FILE_NAME = "strategies.json"
STRATEGIES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), STRATEGIES_FILE_NAME)
PROG = "python -m jaxseed.ablate"


# ---------------------------------------------------------------- the plan


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


# ---------------------------------------------------------------- running


class Sweep(NamedTuple):
    """What one ablation trains, how, and where."""

    config: Config
    objective: objective.Objective
    groups: dict  # group -> seeds of each run
    strategy: str  # resolved: sequential or vmap
    workdir: str
    header: dict  # what sweep.json records


def run_dir(workdir: str, group: str, index: int) -> str:
    return os.path.join(workdir, "runs", plan.run_name(group, index))


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


def plan_sweep(config: Config, found: objective.Objective, num_seeds: int, chosen: tuple[str, ...] | None = None,
               base_seed: int | str = 0, strategy: str = "auto", workdir: str | None = None) -> Sweep:
    """The sweep of ``found``: K = ``num_seeds`` runs per group, varying the ``chosen`` streams
    (default: every stream it uses); UserError on bad input. Touches no file."""
    # No persistent compilation cache here: the `none` group's runs must each compile their own program.
    entry.start_jax(config, compilation_cache=False)  # before jax.default_backend() starts JAX
    used = found.run_streams
    base_seed = streams.check_seed(base_seed, "--base-seed")
    # By default every stream this config draws from (varying one it does not draw would change no bit).
    groups = plan.plan_groups(base_seed, num_seeds, chosen or found.drawn_streams(config), used)
    strategy, strategy_reason = choose_strategy(strategy, jax.default_backend())
    workdir = workdir or os.path.join("runs", f"ablation-{cli.run_name(config)}-{time.strftime('%Y%m%d-%H%M%S')}")
    # JSON objects have no order: the groups' order, which decides what each shard runs, is kept beside them.
    header = {"config": manifest.config_record(config, workdir), "groups_planned": groups,
              "group_order": list(groups), "strategy": strategy,
              "strategy_reason": strategy_reason,
              "base_seed": base_seed, **manifest.environment()}
    return Sweep(config, found, groups, strategy, workdir, header)


def recorded_sweep(workdir: str, args) -> Sweep:
    """The sweep ``workdir`` holds, for ``--report``; the data and a user's objective are named by
    the flags where the record alone may not choose them (``manifest.config_from_record``)."""
    given = cli.config_changes(args)
    extra = sorted(set(given) - set(cli.RELOCATED))
    if extra:
        raise UserError("--report takes the study's settings from its sweep.json; drop "
                        + ", ".join("--" + name.replace("_", "-") for name in extra))
    try:
        recorded = rundir.read_json(workdir, "sweep.json")
    except FileNotFoundError:
        raise UserError(f"{workdir} holds no study (no sweep.json)") from None
    relocated = {name: value for name, value in given.items() if name in cli.RELOCATED}
    config = manifest.config_from_record(recorded.get("config"), workdir, **relocated)
    found = objective.resolve(config.model)
    groups = recorded.get("groups_planned")
    if not isinstance(groups, dict) or "none" not in groups or not all(isinstance(g, list) for g in groups.values()):
        raise UserError(f"{workdir}/sweep.json holds no plan of groups")
    order = recorded.get("group_order")
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(groups):  # a study of an older jaxseed
        order = sorted(groups, key=lambda name: (name in ("all", "none"), name == "none"))  # varied, all, none
    names = streams.seed_names(found.run_streams)
    groups = {str(name): [manifest.seeds_from_record(seeds, workdir, names) for seeds in groups[name]]
              for name in order}
    return Sweep(config, found, groups, str(recorded.get("strategy")), workdir, recorded)


def _on(groups, drawn: tuple[str, ...]):
    """A plan's seeds of the ``drawn`` streams only: the others draw nothing (and a plan recorded
    before a stream existed has no seed for it)."""
    if not isinstance(groups, dict):
        return groups
    return {name: [{stream: seeds.get(stream) for stream in drawn} if isinstance(seeds, dict) else seeds
                   for seeds in group] if isinstance(group, list) else group for name, group in groups.items()}


# What determines a study's results, beside its plan. Paths are not among them (the data's hash is):
# a study moves between folders and machines. The settings of how it computes (ARITHMETIC) must also
# match for runs to be added beside recorded ones; a study whose every run is recorded recomputes
# its report from them whatever they are.
PATHS = ("data_dir", "data")
ARITHMETIC = ("portable", "cpu_threads", "deterministic", "loop", "steps_per_call", "eval_batch_size", "devices",
              "mesh")
ENVIRONMENT = ("strategy", "backend", "versions", "xla_flags")


def _question(header: dict) -> dict:
    """A study's configuration, less paths and ARITHMETIC (a field recorded before it existed: its default)."""
    config = header.get("config") if isinstance(header.get("config"), dict) else {}
    defaults = Config().to_dict()
    return {name: config.get(name, defaults[name]) for name in defaults if name not in (*PATHS, *ARITHMETIC)}


def _first(pairs) -> str | None:
    return next((f"{name}: {there!r} there, {here!r} here" for name, there, here in pairs if there != here), None)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def plan_difference(recorded: dict, header: dict, drawn: tuple[str, ...]) -> str | None:
    """The first difference between a recorded study's question (configuration less paths and
    ARITHMETIC, plan of groups) and this one's, said as "WHAT: A there, B here"; None if the same."""
    here = _question(header)
    return _first([*((_flag(name), value, here[name]) for name, value in _question(recorded).items()),
                   ("the plan of groups and seeds", _on(recorded.get("groups_planned"), drawn),
                    _on(header["groups_planned"], drawn)),
                   ("the order of groups", recorded.get("group_order", header["group_order"]), header["group_order"])])


def arithmetic_difference(recorded: dict, header: dict, environment: bool) -> str | None:
    """The first difference in how two studies compute: their ARITHMETIC settings, and with
    ``environment`` the ENVIRONMENT they recorded."""
    config = recorded.get("config") if isinstance(recorded.get("config"), dict) else {}
    return _first([*((_flag(name), config.get(name), header["config"][name]) for name in ARITHMETIC),
                   *((name, recorded.get(name), header.get(name)) for name in ENVIRONMENT if environment)])


def open_sweep(sweep: Sweep) -> rundir.RunFolder:
    """Claim the sweep's folder (shared with the other shards of one study): start it, or check that
    the one there is this sweep, run the same way."""
    study = rundir.RunFolder.claim(sweep.workdir, "study", resume=True)
    try:
        if study.create_json("sweep.json", sweep.header):  # of shards starting together, one writes it
            return study
        recorded = rundir.read_json(sweep.workdir, "sweep.json")
        differs = (plan_difference(recorded, sweep.header, sweep.objective.drawn_streams(sweep.config))
                   or arithmetic_difference(recorded, sweep.header, environment=False))
        if differs:
            raise UserError(f"{sweep.workdir} holds a different sweep ({differs}); choose another --workdir")
        # Runs of one group made by other programs would not be comparable (vmap sums in another order).
        ran = (recorded.get("strategy"), recorded.get("backend"))
        if ran != (sweep.strategy, sweep.header["backend"]):
            raise UserError(f"the sweep in {sweep.workdir} ran with strategy {ran[0]} on backend {ran[1]}, this one "
                            f"would use {sweep.strategy} on {sweep.header['backend']}; finish it with --strategy "
                            f"{ran[0]} on that backend, or choose another --workdir")
    except BaseException:
        study.release()
        raise
    return study


def run_sweep(sweep: Sweep, study: rundir.RunFolder, quiet: bool, shard: tuple[int, int] = (0, 1),
              report_only: bool = False, detect: float | None = None, correlation: float | None = None,
              records: str | None = None, log: track.Log | None = None) -> str | None:
    """Restore the runs ``records`` holds that the study lacks, train every missing run of ``shard``
    (none with ``report_only``), then write the records and the report of every run finished so far, by
    any shard; returns the report's markdown (None while no group has two runs). ``detect`` and
    ``correlation`` size a comparison in the report (``write_report``); ``log`` names trackers
    that get each run too, tagged with its study and group."""
    config = sweep.config
    # The report compares the runs' outputs on each test example (a classifier's, with its labels and images).
    dataset = data.load(config.data, config.data_dir, config.train_limit)
    labels, images = (dataset.test_labels, dataset.test_images) if sweep.objective.classifier else (None, None)
    classes = objective.data_spec(dataset, config.data).num_classes if sweep.objective.classifier else None
    drawn = sweep.objective.drawn_streams(config)

    loaded: dict[tuple[str, int], Result] = {}

    def finished(name: str, k: int) -> bool:
        if (name, k) not in loaded:
            found = load_result(run_dir(sweep.workdir, name, k), sweep.groups[name][k], drawn,
                                len(dataset.test_labels), classes)
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
                                             if finished(name, k)], len(dataset.test_labels), classes)

    study.folder("runs")
    header = sweep.header
    if records:
        restored, header = restore_records(records, sweep, len(dataset.test_labels), classes,
                                           manifest.arrays_hash(dataset))
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
        print(f"{PROG}: {runs} runs to train, expected to take up to ~{hours:.1f} h here (scaled from "
              f"{STRATEGIES_FILE_NAME}); --shard I/N splits them over processes or hosts, and a stopped study "
              "resumes", file=sys.stderr)
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


# ---------------------------------------------------------------- records

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
    """The first recorded run whose XLA CPU thread pool, or CPU (unless ``portable``), is not this process's."""
    here, pool = machine.cpu(), machine.thread_pool()
    for run in recorded:
        cpu = run.get("cpu") if isinstance(run.get("cpu"), dict) else {"model": run.get("cpu")}
        if run.get("thread_pool") != pool:
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
    # Runs computed otherwise (another CPU without --portable, another thread pool, other flags or versions)
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


# ---------------------------------------------------------------- CLI


def ablate_parser():
    parser = cli.new_parser(PROG,
                            "Vary one key stream at a time and report the spread each causes.")
    parser.add_argument("--seeds", type=cli.int_at_least(2), default=5, help="runs per group, K (default 5)")
    parser.add_argument("--streams", help="comma-separated streams to vary (default: every stream the run draws from)")
    parser.add_argument("--base-seed", type=str, default="0",
                        help=f"seed of every stream not varied, an integer in [0, {streams.MAX_SEED}] (default 0)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="how a group's K runs execute: vmap (the K runs as replicas of one program, "
                             "split over the devices' seed axis), sequential, or auto (the faster on this backend "
                             "in the measurement recorded by benchmarks/sweep.py; the default)")
    parser.add_argument("--workdir", help="output folder; the same one again completes an unfinished sweep "
                                          "(default: a new folder under ./runs/)")
    parser.add_argument("--shard", type=cli.shard, default=(0, 1), metavar="I/N",
                        help="run only share I (0 ... N-1) of the plan's runs, so that N processes, hosts or a "
                             "Slurm job array on one shared --workdir finish one study together (default 0/1)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the report of the runs --workdir holds that have finished")
    parser.add_argument("--detect", type=cli.number("> 0", lambda value: 0 < value < math.inf), metavar="DELTA",
                        help="a difference in the mean of the report's first metric (test accuracy of a classifier, "
                             "else test loss): the report states the seeds per configuration a two-sided 5%% t test "
                             "needs to detect it with 80%% power")
    parser.add_argument("--correlation", type=cli.number("in [-1, 1)", lambda value: -1 <= value < 1), metavar="R",
                        help="correlation of two configurations' results on the same seeds, as "
                             "experiments/fair_comparison measures it: the report adds the paired design (default: "
                             "unpaired only)")
    parser.add_argument("--records", metavar="FILE",
                        help="a records.npz of this study (the compact file every study writes beside its report): "
                             "the finished runs it holds are restored into --workdir and not trained again, so a "
                             "study continues on another machine or in a later session; their per-example "
                             "outputs are float16")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_log_flags(parser)
    cli.add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = ablate_parser().parse_args(argv)

    def ablate() -> int:
        if args.report:
            if not args.workdir:
                raise UserError("--report needs the --workdir of the study")
            sweep = recorded_sweep(args.workdir, args)
        else:
            config = cli.config_from_args(args)
            chosen = tuple(s.strip() for s in args.streams.split(",")) if args.streams else None
            sweep = plan_sweep(config, objective.resolve(config.model), args.seeds, chosen, args.base_seed,
                               args.strategy, args.workdir)
        with open_sweep(sweep) as study:
            try:
                markdown = run_sweep(sweep, study, args.quiet, args.shard, report_only=args.report,
                                     detect=args.detect, correlation=args.correlation, records=args.records,
                                     log=cli.log_from_args(args))
            except KeyboardInterrupt:
                again = "the same command" if args.workdir else f"it with --workdir {sweep.workdir}"
                raise entry.Interrupted(f"interrupted; finished runs are kept: rerun {again} to complete the "
                                        "sweep") from None
        if markdown is None:
            print(f"no group of {sweep.workdir} has two finished runs yet: no report (the other shards' runs "
                  "complete it; then --report)")
        else:
            pictures = ", unstable.png" if sweep.objective.classifier else ""
            print(markdown + f"\nreport in {sweep.workdir}: ablation.md, ablation.csv, ablation.json, ablation.png"
                             f"{pictures}, records.npz")
        return 0

    return entry.run("jaxseed.ablate", ablate)


if __name__ == "__main__":
    sys.exit(main())
