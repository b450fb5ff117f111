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
ablation.csv, ablation.md and ablation.png.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
from itertools import combinations
from typing import NamedTuple

import jax
import numpy as np
from scipy import stats
from tqdm import tqdm

from jaxseed import cli, data, entry, loop, manifest, objective, plots, rundir, streams
from jaxseed.config import Config
from jaxseed.errors import UserError

STRATEGIES = ("auto", "sequential", "vmap")
# Runs per hour of each strategy per backend, measured by benchmarks/sweep.py --record.
STRATEGIES_FILE_NAME = "strategies.json"
STRATEGIES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), STRATEGIES_FILE_NAME)
LEVEL = 0.95  # of every interval in the report
PROG = "python -m jaxseed.ablate"


# ---------------------------------------------------------------- the plan


def plan_groups(base_seed: int, num_seeds: int, chosen: tuple[str, ...], used: tuple[str, ...]) -> dict:
    """group name -> the stream seeds of each of its ``num_seeds`` runs.

    Run k of a varied group gets seed base_seed + 1 + k on the varied stream(s),
    so no varied run repeats the base configuration.
    """
    base = streams.resolve_seeds(base_seed, None, used)
    for name in chosen:
        streams.resolve_seeds(base_seed, {name: base_seed}, used)  # unknown or unused stream: UserError
    groups = {name: [{**base, name: streams.check_seed(base_seed + 1 + k)} for k in range(num_seeds)]
              for name in chosen}
    groups["all"] = [{name: streams.check_seed(base_seed + 1 + k) for name in base} for k in range(num_seeds)]
    groups["none"] = [dict(base) for _ in range(num_seeds)]
    return groups


def choose_strategy(strategy: str, backend: str) -> tuple[str, str]:
    """(strategy, why): ``auto`` picks whichever ran more runs per hour on this backend in the
    measurement recorded in STRATEGIES_FILE (``benchmarks/sweep.py --record``); on a backend
    with no measurement, ``sequential``, and the reason says so."""
    if strategy != "auto":
        return strategy, "asked for"
    try:
        with open(STRATEGIES_FILE) as f:
            measured = json.load(f).get(backend)
    except (OSError, ValueError):
        measured = None
    if not measured:
        return "sequential", (f"auto: no sweep measurement recorded for {backend} (run benchmarks/sweep.py --record "
                              "there); sequential")
    speeds = measured["runs_per_hour"]
    fastest = max(speeds, key=speeds.get)
    return fastest, (f"auto: {fastest} ran {speeds[fastest]:.0f} runs/h against " + ", ".join(
        f"{name} {speed:.0f}" for name, speed in speeds.items() if name != fastest)
                     + f" on {backend} ({measured['date']}, {STRATEGIES_FILE_NAME})")


def batches(group: str, missing: list[int], strategy: str) -> list[list[int]]:
    """Run indices trained together: under vmap a varied group's missing runs are one
    program, but every ``none`` run is its own, so the determinism control compares
    separate compilations and executions (replicas of one program would agree trivially)."""
    if strategy == "vmap" and group != "none":
        return [missing] if missing else []
    return [[k] for k in missing]


# ---------------------------------------------------------------- statistics


def sample_std(values, axis=-1):
    """Standard deviation with Bessel's correction (ddof=1), exactly 0 for equal values.

    Deviations are taken from the first value (std is shift-invariant): equal
    values then give exact zeros, where np.std's mean can round to a 1e-14 spread.
    """
    values = np.asarray(values, np.float64)
    return np.std(values - np.take(values, [0], axis=axis), axis=axis, ddof=1)


def mean_interval(mean, standard_error, dof, level: float = LEVEL):
    r"""Student's t interval of a population mean.

    .. math::
      \bar x \pm t_{(1+\ell)/2,\ \nu} \cdot \mathrm{se}

    For K values with sample std s: se = s / sqrt(K), nu = K - 1. Exact when the
    values are independent draws of one normal distribution, as then
    (x̄ - mu) / se ~ t_nu. Accepts arrays (one interval per element).

    Args:
      mean: the sample mean x̄.
      standard_error: its estimated standard error.
      dof: degrees of freedom nu of the standard error (may be fractional, e.g. Welch's).
      level: coverage probability l of the interval.

    Returns:
      (low, high).
    """
    half = stats.t.ppf((1 + level) / 2, dof) * standard_error
    return mean - half, mean + half


def std_interval(std, dof, level: float = LEVEL):
    r"""Chi-square interval of a population standard deviation sigma.

    .. math::
      \left[ s \sqrt{\nu / \chi^2_{(1+\ell)/2,\ \nu}},\ s \sqrt{\nu / \chi^2_{(1-\ell)/2,\ \nu}} \right]

    Exact under normal errors, where nu s^2 / sigma^2 ~ chi^2_nu (nu = K - 1 for K
    values). At K = 5 and l = 0.95 it is [0.60 s, 2.87 s]: five values pin a
    spread down to a factor of about five. Accepts arrays (one interval per element).

    Args:
      std: the sample standard deviation s (ddof=1).
      dof: its degrees of freedom nu (may be fractional, e.g. Satterthwaite's).
      level: coverage probability l of the interval.

    Returns:
      (low, high).
    """
    return (std * np.sqrt(dof / stats.chi2.ppf((1 + level) / 2, dof)),
            std * np.sqrt(dof / stats.chi2.ppf((1 - level) / 2, dof)))


def disagreement(predictions: np.ndarray) -> float:
    """Mean over pairs of models of the fraction of examples they classify differently.

    Args:
      predictions: int[K, N], the predicted class of each of N examples by K models.
    """
    pairs = list(combinations(range(len(predictions)), 2))
    return float(np.mean([np.mean(predictions[i] != predictions[j]) for i, j in pairs]))


def ensemble_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the average of K models' class probabilities float[K, N, C]."""
    return float(np.mean(np.argmax(probabilities.mean(0), -1) == labels))


def summarize(name: str, results: list[dict], labels: np.ndarray | None) -> dict:
    """One report row: mean and std of a group's final test metrics, with their intervals."""
    row = {"group": name, "runs": len(results)}
    metrics = ["test_loss"] + (["test_accuracy"] if labels is not None else [])
    for metric in metrics:
        values = np.array([r["final"][metric] for r in results])
        mean, std, k = float(values.mean()), float(sample_std(values)), len(values)
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
        row[f"{metric}_mean_ci"] = tuple(map(float, mean_interval(mean, std / math.sqrt(k), k - 1)))
        row[f"{metric}_std_ci"] = tuple(map(float, std_interval(std, k - 1)))
    if labels is not None:
        probabilities = np.stack([r["probabilities"] for r in results])
        row["disagreement"] = disagreement(probabilities.argmax(-1))
        row["ensemble_accuracy"] = ensemble_accuracy(probabilities, labels)
    row["distinct_param_hashes"] = len({r["param_hash"] for r in results})
    return row


def separated_pairs(rows: list[dict], metric: str) -> list[tuple[str, str]]:
    """Pairs (larger, smaller) of varied groups whose intervals of the std of ``metric`` do not overlap.

    Non-overlap of two 95% intervals is a conservative test of a difference (its
    false-positive rate is well under 5%): a pair not named may still differ.
    """
    varied = [row for row in rows if row["group"] != "none"]
    return [(a["group"], b["group"]) for a in varied for b in varied
            if a[f"{metric}_std_ci"][0] > b[f"{metric}_std_ci"][1]]


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
    return os.path.join(workdir, "runs", f"{group}-{index:03d}")


def load_result(path: str, seeds: dict, shape: tuple[int, int] | None) -> dict | None:
    """A finished run's result (seeds, param_hash, final metrics, and a classifier's test
    probabilities of ``shape`` [num_test, classes]), or None if it has not finished. Read as
    input: a study folder may come from anyone."""
    try:
        recorded = rundir.read_manifest(path)
    except FileNotFoundError:
        return None
    if recorded.get("status") != "finished":
        return None
    if recorded["streams"] != seeds:
        raise UserError(f"{path} holds a run of other seeds than this sweep planned; choose another --workdir")
    result = {"seeds": seeds, "param_hash": recorded.get("param_hash"), "final": recorded.get("final")}
    if not isinstance(result["final"], dict) or not isinstance(result["param_hash"], str):
        raise UserError(f"{path}/manifest.json lacks the final metrics or param_hash of a finished run")
    if shape is not None:
        result["probabilities"] = rundir.load_array(path, "test_probabilities.npy", np.float32, shape)
    return result


def run_group(config: Config, found: objective.Objective, group_seeds: list[dict], paths: list[str], strategy: str,
              checkpoint_dir: str, own_program: bool = False) -> None:
    """Train the runs at ``paths`` (each run's folder is claimed by its run): under vmap as the
    replicas of one program (checkpointed in ``checkpoint_dir``), else one run after another.
    With ``own_program``, nothing compiled before is reused (each ``none`` run)."""
    if own_program:
        loop.forget_compiled()
    if strategy == "vmap":
        loop.train(config, group_seeds, paths, checkpoint_dir=checkpoint_dir, progress=False, resume=True,
                   objective=found)
        shutil.rmtree(checkpoint_dir)  # the group's results are stored: its shared checkpoints are spent
    else:
        for path, seeds in zip(paths, group_seeds):
            loop.train_and_evaluate(config, seeds, path, progress=False, resume=True,  # resume: after a kill
                                    objective=found)


def plan_sweep(config: Config, found: objective.Objective, num_seeds: int, chosen: tuple[str, ...] | None = None,
               base_seed: int | str = 0, strategy: str = "auto", workdir: str | None = None) -> Sweep:
    """The sweep of ``found``: K = ``num_seeds`` runs per group, varying the ``chosen`` streams
    (default: every stream it uses); UserError on bad input. Touches no file."""
    # No persistent compilation cache here: the `none` group's runs must each compile their own program.
    entry.start_jax(config, compilation_cache=False)  # before jax.default_backend() starts JAX
    used = found.run_streams
    base_seed = streams.check_seed(base_seed, "--base-seed")
    groups = plan_groups(base_seed, num_seeds, chosen or used, used)
    strategy, strategy_reason = choose_strategy(strategy, jax.default_backend())
    workdir = workdir or os.path.join("runs", f"ablation-{cli.run_name(config)}-{time.strftime('%Y%m%d-%H%M%S')}")
    header = {"config": manifest.config_record(config, workdir), "groups_planned": groups, "strategy": strategy,
              "strategy_reason": strategy_reason,
              "base_seed": base_seed, **manifest.environment()}
    return Sweep(config, found, groups, strategy, workdir, header)


def open_sweep(sweep: Sweep) -> rundir.RunFolder:
    """Claim the sweep's folder: start it, or check that the one there is this sweep, run the same way."""
    study = rundir.RunFolder.claim(sweep.workdir, "study", resume=True)
    try:
        try:
            recorded = rundir.read_json(sweep.workdir, "sweep.json")
        except FileNotFoundError:
            study.write_json("sweep.json", sweep.header)
            return study
        if (recorded.get("config"), recorded.get("groups_planned")) != (sweep.header["config"], sweep.groups):
            raise UserError(f"{sweep.workdir} holds a different sweep; choose another --workdir")
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


def run_sweep(sweep: Sweep, study: rundir.RunFolder, quiet: bool) -> str:
    """Train every missing run, then write the report; returns its markdown."""
    config = sweep.config
    labels, shape = None, None
    if sweep.objective.classifier:
        dataset = data.load(config.data, config.data_dir)
        labels, shape = dataset.test_labels, (len(dataset.test_labels), objective.data_spec(dataset).num_classes)

    def result(name: str, k: int) -> dict | None:
        return load_result(run_dir(sweep.workdir, name, k), sweep.groups[name][k], shape)

    num_seeds = len(sweep.groups["none"])
    todo = {name: [k for k in range(num_seeds) if result(name, k) is None] for name in sweep.groups}
    total = len(sweep.groups) * num_seeds
    if not quiet:
        print(f"strategy {sweep.strategy}: {sweep.header['strategy_reason']}", file=sys.stderr)
    start = time.perf_counter()
    study.folder("runs")
    with tqdm(total=total, initial=total - sum(map(len, todo.values())), unit="run",
              desc=f"ablation ({sweep.strategy})", disable=quiet) as bar:
        for name, missing in todo.items():
            for batch in batches(name, missing, sweep.strategy):
                checkpoints = study.folder(os.path.join("runs", f"{name}-{'-'.join(map(str, batch))}-checkpoints"))
                run_group(config, sweep.objective, [sweep.groups[name][k] for k in batch],
                          [run_dir(sweep.workdir, name, k) for k in batch], sweep.strategy, checkpoints,
                          own_program=name == "none")
                bar.update(len(batch))
    results = {name: [result(name, k) for k in range(num_seeds)] for name in sweep.groups}
    rows = [summarize(name, group, labels) for name, group in results.items()]
    header = {**sweep.header, "seconds_this_invocation": time.perf_counter() - start}
    return write_report(study, rows, results, header)


# ---------------------------------------------------------------- report


def _interval(low: float, high: float) -> str:
    return f"[{low:.4f}, {high:.4f}]"


def ranking_lines(rows: list[dict], metric: str) -> list[str]:
    """What the std intervals of ``metric`` allow to say about which source moves it more."""
    label = metric.replace("_", " ")
    pairs = separated_pairs(rows, metric)
    if not pairs:
        return [f"- std of {label}: no pair of sources can be ranked at K = {rows[0]['runs']}: "
                "every pair of varied groups' intervals overlap."]
    ci = {row["group"]: row[f"{metric}_std_ci"] for row in rows}
    return [f"- std of {label}: {a} > {b}: intervals do not overlap ({_interval(*ci[a])} vs {_interval(*ci[b])})"
            for a, b in pairs]


def write_report(study: rundir.RunFolder, rows: list[dict], results: dict[str, list[dict]], header: dict) -> str:
    """ablation.json, ablation.csv, ablation.md and ablation.png; returns the markdown.

    ablation.json holds every run (seeds, param_hash, final metrics), so anyone can
    recompute the summary from it.
    """
    runs = {name: [{k: r[k] for k in ("seeds", "param_hash", "final")} for r in group]
            for name, group in results.items()}
    study.write_json("ablation.json", {**header, "runs": runs, "summary": rows})
    flat = [{k: (f"{v[0]:.6g}..{v[1]:.6g}" if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    study.write_text("ablation.csv", table.getvalue())
    classifier = "test_accuracy_mean" in rows[0]
    metrics = ["test_accuracy", "test_loss"] if classifier else ["test_loss"]
    titles = {"test_accuracy": "test accuracy", "test_loss": "test loss"}
    head = ["group", "runs"]
    for metric in metrics:
        head += [f"{titles[metric]}: mean [95% t CI]", f"{titles[metric]}: std [95% χ² CI]"]
        if metric == "test_accuracy":
            head += ["disagreement", "ensemble acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["group"], str(row["runs"])]
        for metric in metrics:
            cells += [f"{row[f'{metric}_mean']:.4f} {_interval(*row[f'{metric}_mean_ci'])}",
                      f"{row[f'{metric}_std']:.4f} {_interval(*row[f'{metric}_std_ci'])}"]
            if metric == "test_accuracy":
                cells += [f"{row['disagreement']:.4f}", f"{row['ensemble_accuracy']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Intervals are 95%: Student's t for the mean, chi-square for the std (both exact for normal "
              "errors). A source is ranked above another only where their std intervals are disjoint:", ""]
    for metric in metrics:
        lines += ranking_lines(rows, metric)
    none = next(row for row in rows if row["group"] == "none")
    if none["test_loss_std"] != 0 or none["distinct_param_hashes"] != 1:
        lines.append("\n**WARNING: the `none` group (identical reruns) has non-zero spread: this run is NOT "
                     "deterministic, and every other group's spread includes that noise.**")
    else:
        lines.append("\nDeterminism control: the `none` group's reruns, each its own program, are bit-identical "
                     "(one param_hash, zero spread).")
    markdown = "\n".join(lines) + "\n"
    study.write_text("ablation.md", markdown)
    metric = metrics[0]
    study.save_picture("ablation.png", lambda f: plots.plot_spread(
        [row["group"] for row in rows], [row[f"{metric}_std"] for row in rows],
        [row[f"{metric}_std_ci"] for row in rows], f"std of final {titles[metric]}", f))
    return markdown


# ---------------------------------------------------------------- CLI


def ablate_parser():
    parser = cli.new_parser(PROG,
                            "Vary one key stream at a time and report the spread each causes.")
    parser.add_argument("--seeds", type=cli.int_at_least(2), default=5, help="runs per group, K (default 5)")
    parser.add_argument("--streams", help="comma-separated streams to vary (default: every stream the model uses)")
    parser.add_argument("--base-seed", type=str, default="0",
                        help=f"seed of every stream not varied, an integer in [0, {streams.MAX_SEED}] (default 0)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="how a group's K runs execute: vmap (the K runs as replicas of one program, "
                             "split over the devices' seed axis), sequential, or auto (the faster on this backend "
                             "in the measurement recorded by benchmarks/sweep.py; the default)")
    parser.add_argument("--workdir", help="output folder; the same one again completes an unfinished sweep "
                                          "(default: a new folder under ./runs/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = ablate_parser().parse_args(argv)

    def ablate() -> int:
        config = cli.config_from_args(args)
        chosen = tuple(s.strip() for s in args.streams.split(",")) if args.streams else None
        sweep = plan_sweep(config, objective.resolve(config.model), args.seeds, chosen, args.base_seed, args.strategy,
                           args.workdir)
        with open_sweep(sweep) as study:
            try:
                markdown = run_sweep(sweep, study, args.quiet)
            except KeyboardInterrupt:
                again = "the same command" if args.workdir else f"it with --workdir {sweep.workdir}"
                raise entry.Interrupted(f"interrupted; finished runs are kept: rerun {again} to complete the "
                                        "sweep") from None
        print(markdown + f"\nreport in {sweep.workdir}: ablation.md, ablation.csv, ablation.json, ablation.png")
        return 0

    return entry.run("jaxseed.ablate", ablate)


if __name__ == "__main__":
    sys.exit(main())
