"""The study engine: run a training function over a plan of seeds, store each result as it
finishes, resume what a killed study left, share a study between shards, and report.

    report = jaxseed.study(train, streams=("init", "shuffle", "dropout"), seeds=5, workdir="runs/mine")

``train(seeds)`` takes a run's ``jaxseed.Seeds`` and returns its metrics (a dict) or a
``jaxseed.Result``. jaxseed.ablate is this engine applied to jaxseed's own loop
(``train_missing`` and ``report`` are shared; its runs are full run folders).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time
from typing import Any, Callable, NamedTuple

from tqdm import tqdm

from jaxseed import machine, manifest, rundir, streams, track
from jaxseed.errors import UserError, one_line
from jaxseed.study import plan, records, report
from jaxseed.study.result import Result, checked, same_kind

HEADER = "study.json"
# What determines a study's results: a folder or records file of another of these is another study.
QUESTION = ("function", "source_sha256", "streams", "base_seed", "groups_planned", "group_order")
# How its runs compute: runs made otherwise beside this machine's would make a group's spread part machine.
MACHINE = ("backend", "thread_pool", "xla_flags", "versions")


class Study(NamedTuple):
    """What one study runs, and where."""

    functions: dict[str, Callable[[streams.Seeds], Any]]  # group -> the training function its runs call
    groups: dict  # group -> the stream seeds of each run
    base_seed: int
    workdir: str
    header: dict  # what study.json records


def function_name(train: Callable) -> str:
    """``module:qualname``; a function of a file by the file's name (where it lies is no part of a study)."""
    module = inspect.getmodule(train)
    qualname = getattr(train, "__qualname__", type(train).__name__)
    path = getattr(module, "__file__", None)
    if module is None or (path and (module.__name__ == "__main__" or module.__name__.startswith("jaxseed_user_"))):
        return f"{os.path.basename(path or '?')}:{qualname}"
    return f"{module.__name__}:{qualname}"


def source_hash(train: Callable) -> str | None:
    """sha256 of the source of the module that defines ``train`` (its helpers change its results
    too); None where Python has no source (a function typed at a prompt)."""
    try:
        source = inspect.getsource(inspect.getmodule(train) or train)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def _checked_function(train: Callable) -> Callable:
    if not callable(train):
        raise UserError(f"the training function must be callable, got a {type(train).__name__}")
    try:
        inspect.signature(train).bind(streams.Seeds(0))
    except TypeError:
        raise UserError(f"{function_name(train)} must take one argument, the run's jaxseed.Seeds") from None
    except ValueError:  # a callable whose signature Python cannot read: called as it is
        pass
    return train


def _checked_count(num_seeds: int) -> int:
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 2:
        raise UserError(f"seeds must be an integer >= 2 (runs per group), got {num_seeds!r}")
    return num_seeds


def plan_study(train: Callable, stream_names: tuple[str, ...], num_seeds: int, base_seed: int = 0,
               workdir: str | None = None) -> Study:
    """The study of ``train``: K = ``num_seeds`` runs per group, varying each of ``stream_names``
    alone, all together, and none; UserError on bad input. Touches no file."""
    _checked_function(train)
    _checked_count(num_seeds)
    if isinstance(stream_names, str) or not stream_names:
        raise UserError("name the streams to vary, e.g. streams=('init', 'shuffle')")
    used = tuple(streams.check_stream_name(name) if name not in streams.STREAM_IDS else name for name in stream_names)
    if len(set(used)) < len(used):
        raise UserError(f"a stream is named twice in {', '.join(used)}")
    base_seed = streams.check_seed(base_seed, "base seed")
    groups = plan.plan_groups(base_seed, num_seeds, used, used)
    workdir = workdir or os.path.join("runs", f"study-{train.__name__}-{time.strftime('%Y%m%d-%H%M%S')}")
    header = {"function": function_name(train), "source_sha256": source_hash(train), "streams": list(used),
              "base_seed": base_seed, "groups_planned": groups, "group_order": list(groups),
              **manifest.environment()}
    return Study({group: train for group in groups}, groups, base_seed, workdir, header)


def plan_comparison(train_a: Callable, train_b: Callable, num_seeds: int, base_seed: int = 0,
                    workdir: str | None = None) -> Study:
    """The paired comparison of two functions (or one with two settings): groups ``A`` and ``B``,
    whose run k both take every stream's seed base_seed + 1 + k. Touches no file."""
    functions = {"A": _checked_function(train_a), "B": _checked_function(train_b)}
    base_seed = streams.check_seed(base_seed, "base seed")
    runs = [dict.fromkeys(streams.STREAMS, streams.check_seed(base_seed + 1 + k))
            for k in range(_checked_count(num_seeds))]
    groups = {"A": runs, "B": [dict(seeds) for seeds in runs]}
    workdir = workdir or os.path.join("runs", f"comparison-{time.strftime('%Y%m%d-%H%M%S')}")
    header = {"function": {group: function_name(f) for group, f in functions.items()},
              "source_sha256": {group: source_hash(f) for group, f in functions.items()}, "streams": [],
              "base_seed": base_seed, "groups_planned": groups, "group_order": list(groups),
              **manifest.environment()}
    return Study(functions, groups, base_seed, workdir, header)


def first_difference(recorded: dict, here: dict, fields: tuple[str, ...]) -> str | None:
    """The first of ``fields`` in which two headers differ, said as "FIELD: A there, B here"; None if none."""
    for name in fields:
        if recorded.get(name) != here.get(name):
            there, now = recorded.get(name), here.get(name)
            if name == "groups_planned":
                return "the plan of groups and seeds"
            return f"{name}: {there!r} there, {now!r} here"
    return None


def machine_difference(recorded: dict, here: dict) -> str | None:
    """How the runs of ``recorded`` were computed otherwise than this process's: MACHINE, then the CPU."""
    differs = first_difference(recorded, here, MACHINE)
    cpu = recorded.get("cpu") if isinstance(recorded.get("cpu"), dict) else {}
    if not differs and not machine.same_cpu(cpu, here["cpu"]):
        differs = f"CPU: {cpu.get('model')!r} there, {here['cpu']['model']!r} here"
    return differs


def open_study(study: Study, existing: bool = False) -> rundir.RunFolder:
    """Claim the study's folder (shared with its other shards): start it (unless ``existing``: a
    report of what is there), or check that the one there is this study."""
    if existing and not os.path.isfile(os.path.join(study.workdir, HEADER)):
        raise UserError(f"{study.workdir} holds no study (no {HEADER})")
    folder = rundir.RunFolder.claim(study.workdir, "study", resume=True)
    try:
        if not folder.create_json(HEADER, study.header):  # of shards starting together, one writes it
            recorded = rundir.read_json(study.workdir, HEADER)
            differs = first_difference(recorded, study.header, QUESTION)
            if differs:
                raise UserError(f"{study.workdir} holds another study ({differs}); choose another workdir")
        folder.folder("runs")
    except BaseException:
        folder.release()
        raise
    return folder


def train_missing(mine: dict[str, list[int]], together: bool, finished: Callable[[str, int], bool],
                  train_program: Callable[[str, list[int]], None], after: Callable[[], None], bar) -> None:
    """Train every run of ``mine`` (group -> run indices) not ``finished``, as ``plan.programs`` groups
    them (``together``: a varied group's runs as one program), each by ``train_program(group, runs)``;
    ``after`` each program (store what finished), and the progress ``bar`` moved along."""
    for name, runs in mine.items():
        for program in plan.programs(name, [k for k in runs if not finished(name, k)], together):
            program = [k for k in program if not finished(name, k)]  # another shard may have finished it
            if program:
                train_program(name, program)
                bar.update(len(program))
                after()


def run_seeds(study: Study, group: str, index: int) -> streams.Seeds:
    """The Seeds run ``index`` of ``group`` trains with: where the plan gives every stream one seed
    (``all``, ``none``, a comparison's), the streams it does not name take it too."""
    seeds = study.groups[group][index]
    common = set(seeds.values())
    return streams.Seeds(common.pop() if len(common) == 1 else study.base_seed, **seeds)


def _run_entry(name: str) -> str:
    """Where a run's result lies in the study folder (``runs/GROUP-K.npz``)."""
    return os.path.join("runs", name + ".npz")


def _run_file(study: Study, group: str, index: int) -> str:
    return os.path.join(study.workdir, _run_entry(plan.run_name(group, index)))


def load_run(study: Study, group: str, index: int) -> Result | None:
    """Run ``index`` of ``group``'s stored result; None if it has not finished."""
    try:
        found = records.read(_run_file(study, group, index))
    except FileNotFoundError:
        return None
    if found.names != [plan.run_name(group, index)] or found.seeds[0] != study.groups[group][index]:
        raise UserError(f"{_run_file(study, group, index)} holds a run of other seeds than this study planned; "
                        "choose another workdir")
    return found.results[0]


def call(study: Study, group: str, index: int) -> Result:
    """Run ``index`` of ``group``: ``train`` called with its Seeds, its return checked."""
    name, train = plan.run_name(group, index), study.functions[group]
    try:
        value = train(run_seeds(study, group, index))
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as error:  # the user's code: one line here, the traceback chained for a debugger
        raise UserError(f"run {name}: {function_name(train)} raised {one_line(error, with_type=True)}") from error
    return checked(value, name)


def restore(path: str, study: Study, folder: rundir.RunFolder) -> list[str]:
    """Store the runs of the records at ``path`` that the study folder lacks; their names. The file
    is input: it must hold this study (QUESTION) and, unless it holds every run, runs computed as
    this process computes (``machine_difference``)."""
    found = records.read(path, follow_link=True)
    differs = first_difference(found.header, study.header, QUESTION)
    if differs:
        raise UserError(f"{path} holds the runs of another study ({differs}); drop --records")
    planned = {plan.run_name(group, k): (group, k) for group, runs in study.groups.items() for k in range(len(runs))}
    for name, seeds in zip(found.names, found.seeds):
        if name not in planned or seeds != study.groups[planned[name][0]][planned[name][1]]:
            raise UserError(f"{path} holds run {name}, which this study did not plan")
    differs = machine_difference(found.header, study.header)
    if differs and set(found.names) != set(planned):
        raise UserError(f"{path} holds runs computed otherwise ({differs}), whose bits differ from this process's: "
                        "continue the study where they ran, or drop --records")
    restored = []
    for name, seeds, result in zip(found.names, found.seeds, found.results):
        if load_run(study, *planned[name]) is None:
            records.write(folder, _run_entry(name), records.Records({}, [name], [seeds], [result]))
            restored.append(name)
    return restored


def run(study: Study, folder: rundir.RunFolder, shard: tuple[int, int] = (0, 1), report_only: bool = False,
        records_file: str | None = None, quiet: bool = False, render: Callable = report.render,
        log: track.Log | None = None, **options) -> str | None:
    """Restore the runs ``records_file`` holds, train every missing run of ``shard`` (none with
    ``report_only``), write records.npz and the report of every run finished so far (by any shard);
    the report's markdown, or None while no group has two runs. ``render``: the report
    (``report.render`` of a study, ``report.render_comparison`` of a comparison); ``options``: its own.
    ``log``: trackers each run is logged to as it finishes, tagged with its study and group."""
    if records_file:
        restored = restore(records_file, study, folder)
        if not quiet:
            print(f"restored {len(restored)} finished runs from {records_file}", file=sys.stderr)
    recorded = rundir.read_json(study.workdir, HEADER)
    mine = {name: [] for name in study.groups} if report_only else plan.shard_runs(study.groups, shard, False)
    results: dict[tuple[str, int], Result] = {}

    def finished(group: str, k: int) -> bool:
        if (group, k) not in results and (found := load_run(study, group, k)) is not None:
            results[group, k] = found
        return (group, k) in results

    def train_program(group: str, runs: list[int]) -> None:
        [k] = runs
        result = call(study, group, k)
        if results:
            (first_group, first_k), first = next(iter(results.items()))
            same_kind(result, first, plan.run_name(group, k), plan.run_name(first_group, first_k))
        name = plan.run_name(group, k)
        records.write(folder, _run_entry(name), records.Records({}, [name], [study.groups[group][k]], [result]))
        results[group, k] = result
        if log:  # after the run is stored: a tracker that fails loses nothing
            study_name = os.path.basename(os.path.abspath(study.workdir))
            settings = {key: study.header[key] for key in ("function", "source_sha256", "streams", "base_seed")}
            track.log_finished(log, f"{study_name}/{name}", {"study": study_name, "group": group}, settings,
                               study.groups[group][k], result.metrics,
                               {**settings, "run": name, "metrics": result.metrics, "fingerprint": result.fingerprint})

    def store() -> None:
        """records.npz of every run finished so far, by any shard, in the plan's order."""
        done = [(group, k) for group, runs in study.groups.items() for k in range(len(runs)) if finished(group, k)]
        records.write(folder, records.RECORDS, records.Records(
            recorded, [plan.run_name(*key) for key in done], [study.groups[key[0]][key[1]] for key in done],
            [results[key] for key in done]))

    if not report_only and any(not finished(g, k) for g, runs in mine.items() for k in runs):
        differs = machine_difference(recorded, study.header)
        if differs:
            raise UserError(f"the study in {study.workdir} was run otherwise ({differs}); finish it where it ran, "
                            "or choose another workdir")
    start = time.perf_counter()
    total = sum(map(len, mine.values()))
    with tqdm(total=total, initial=sum(finished(g, k) for g, runs in mine.items() for k in runs), unit="run",
              desc="study", disable=quiet or report_only) as bar:
        train_missing(mine, False, finished, train_program, store, bar)
    store()
    groups = {group: [results[group, k] for k in range(len(runs)) if finished(group, k)]
              for group, runs in study.groups.items()}
    kept = {group: found for group, found in groups.items() if len(found) >= 2}  # a spread needs two runs
    if not kept:
        return None
    first = next(iter(results.items()))
    for (group, k), result in results.items():
        same_kind(result, first[1], plan.run_name(group, k), plan.run_name(*first[0]))
    seeds = {group: [study.groups[group][k] for k in range(len(study.groups[group])) if finished(group, k)]
             for group in kept}
    header = {**recorded, "seconds_this_invocation": time.perf_counter() - start,
              "runs_finished": len(results), "runs_planned": sum(map(len, study.groups.values()))}
    found = render(kept, seeds, header, **options)
    report.save(folder, found)
    return found.markdown


def study(train: Callable[[streams.Seeds], Any], streams: tuple[str, ...] = ("init", "shuffle"), seeds: int = 5,
          workdir: str | None = None, *, base_seed: int = 0, shard: tuple[int, int] = (0, 1),
          records: str | None = None, report_only: bool = False, quiet: bool = True,
          detect: float | None = None, correlation: float | None = None, labels=None, log: str = "") -> str | None:
    """Study how much each random source moves what ``train`` returns.

    Groups of ``seeds`` runs: one per stream of ``streams`` (only that stream's seed varies), ``all``
    (every stream varies) and ``none`` (the base seeds again: the determinism control). Each run is
    ``train(jaxseed.Seeds(...))``, its result stored in ``workdir`` as it finishes; calling again
    with the same workdir trains only the missing runs, and ``shard=(i, n)`` only share i of n, so
    n processes finish one study together. The report (ablation.md, .csv, .json, .png) is written
    to ``workdir`` and its markdown returned (None while no group has two runs).

    Args:
      train: ``train(seeds) -> dict | jaxseed.Result``, the same metric names every run.
      streams: the streams to vary, built-in or your own.
      seeds: runs per group, K >= 2.
      workdir: the study's folder (default: a new one under ./runs/).
      base_seed: every stream's seed where it is not varied.
      shard: (i, n): train only share i of the plan's runs.
      records: a records.npz of this study (written beside every report): its runs are not trained again.
      report_only: train nothing; report the runs finished so far.
      quiet: no progress bar.
      detect: a difference in the first metric's mean: the report gives the seeds needed to detect it.
      correlation: r of two configurations' results on the same seeds: the paired design too.
      labels: a classifier's test labels int[N], where runs return ``probabilities``.
      log: experiment trackers each run is logged to as it finishes, tagged with its study and group
        ("tensorboard", "mlflow", or both, comma-separated).
    """
    planned = plan_study(train, tuple(streams), seeds, base_seed, workdir)
    index, count = shard
    if not 0 <= index < count:
        raise UserError(f"shard (i, n) needs 0 <= i < n, got {shard}")
    with open_study(planned, existing=report_only) as folder:
        return run(planned, folder, (index, count), report_only, records, quiet,
                   log=track.Log(track.parse(log)) if log else None, detect=detect, correlation=correlation,
                   labels=labels)


def compare(train_a: Callable[[streams.Seeds], Any], train_b: Callable[[streams.Seeds], Any], seeds: int = 10,
            workdir: str | None = None, *, base_seed: int = 0, shard: tuple[int, int] = (0, 1),
            records: str | None = None, report_only: bool = False, quiet: bool = True) -> str | None:
    """Compare two training functions (or one with two settings, e.g. ``functools.partial``) under
    the same randomness: run k of each gets every stream's seed ``base_seed + 1 + k``.

    The report gives, for each metric both return, each function's mean, the paired difference
    B - A with its t interval, its std with a chi-square interval, the correlation of A and B,
    P(B > A) with its Clopper-Pearson interval, and the seeds each design (paired, unpaired) needs
    to tell B from A. Resume, shards and records work as in ``study``; the markdown is returned
    (None while fewer than two pairs have finished).
    """
    planned = plan_comparison(train_a, train_b, seeds, base_seed, workdir)
    index, count = shard
    if not 0 <= index < count:
        raise UserError(f"shard (i, n) needs 0 <= i < n, got {shard}")
    with open_study(planned, existing=report_only) as folder:
        return run(planned, folder, (index, count), report_only, records, quiet, render=report.render_comparison)
