"""Ablate the key streams: how much does each random source move the result?

    python -m jaxseed.ablate --model cnn --seeds 10 --data-dir ../shared/data/mnist
    python -m jaxseed.ablate --model vae --seeds 5 --streams latent,init

Groups of K runs each:
  * one per chosen stream: only that stream's seed varies, the others stay at the base seed;
  * ``all``: every stream varies together;
  * ``none``: K reruns of the base configuration. Its spread must be exactly zero:
    it is the determinism control, and the report says so loudly when it is not.

Each run's result is stored as it finishes; rerunning the same command completes
only the missing runs. Writes ablation.json, ablation.csv, ablation.md, ablation.png.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from itertools import combinations

import jax
import numpy as np
from tqdm import tqdm

from jaxseed import cli, manifest, plots, streams, train
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.objectives import OBJECTIVES

STRATEGIES = ("auto", "sequential", "vmap")


# ---------------------------------------------------------------- the plan


def plan_groups(base_seed: int, num_seeds: int, chosen: tuple[str, ...], used: tuple[str, ...]) -> dict:
    """group name -> the stream seeds of each of its ``num_seeds`` runs.

    Run k of a varied group gets seed base_seed + 1 + k on the varied stream(s),
    so no varied run repeats the base configuration.
    """
    base = streams.resolve_seeds(base_seed)
    for name in chosen:
        streams.resolve_seeds(base_seed, {name: base_seed}, used)  # unknown or unused stream: UserError
    groups = {name: [{**base, name: streams.check_seed(base_seed + 1 + k)} for k in range(num_seeds)]
              for name in chosen}
    groups["all"] = [{name: streams.check_seed(base_seed + 1 + k) for name in streams.STREAMS}
                     for k in range(num_seeds)]
    groups["none"] = [dict(base) for _ in range(num_seeds)]
    return groups


def choose_strategy(strategy: str, backend: str) -> str:
    """``auto``: vmap the K replicas on GPU/TPU; on XLA CPU vmapped convolutions ran
    ~3x slower than one run after another (measured here), so run them in turn."""
    if strategy != "auto":
        return strategy
    return "sequential" if backend == "cpu" else "vmap"


# ---------------------------------------------------------------- statistics


def bootstrap_ci(values: np.ndarray, statistic, key: jax.Array, resamples: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over ``values``.

    Resample the K values with replacement ``resamples`` times, apply
    ``statistic`` to each resample, return the (1-level)/2 and (1+level)/2 quantiles.
    """
    values = np.asarray(values, np.float64)
    index = np.asarray(jax.random.randint(key, (resamples, len(values)), 0, len(values)))
    estimates = statistic(values[index], axis=1)
    return (float(np.quantile(estimates, (1 - level) / 2)), float(np.quantile(estimates, (1 + level) / 2)))


def sample_std(values, axis=-1):
    """Standard deviation with Bessel's correction (ddof=1), exactly 0 for equal values.

    Deviations are taken from the first value (std is shift-invariant): equal
    values then give exact zeros, where np.std's mean can round to a 1e-14 spread.
    """
    values = np.asarray(values, np.float64)
    return np.std(values - np.take(values, [0], axis=axis), axis=axis, ddof=1)


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


def summarize(name: str, results: list[dict], labels: np.ndarray | None, key: jax.Array) -> dict:
    """One report row: mean, std and bootstrap CIs of the final test metrics of a group."""
    row = {"group": name, "runs": len(results)}
    metrics = ["test_loss"] + (["test_accuracy"] if labels is not None else [])
    for i, metric in enumerate(metrics):
        values = np.array([r["final"][metric] for r in results])
        row[f"{metric}_mean"] = float(values.mean())
        row[f"{metric}_std"] = float(sample_std(values))
        mean_key, std_key = (jax.random.fold_in(key, 2 * i + j) for j in range(2))
        row[f"{metric}_mean_ci"] = bootstrap_ci(values, np.mean, mean_key)
        row[f"{metric}_std_ci"] = bootstrap_ci(values, sample_std, std_key)
    if labels is not None:
        probabilities = np.stack([r["probabilities"] for r in results])
        row["disagreement"] = disagreement(probabilities.argmax(-1))
        row["ensemble_accuracy"] = ensemble_accuracy(probabilities, labels)
    row["distinct_param_hashes"] = len({r["param_hash"] for r in results})
    return row


# ---------------------------------------------------------------- running


def run_dir(workdir: str, group: str, index: int) -> str:
    return os.path.join(workdir, "runs", f"{group}-{index:03d}")


def load_result(path: str) -> dict | None:
    """A finished run's result, or None if it has not finished."""
    try:
        with open(os.path.join(path, "result.json")) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    probabilities = os.path.join(path, "test_probabilities.npy")
    if os.path.exists(probabilities):
        result["probabilities"] = np.load(probabilities)
    return result


def save_result(path: str, seeds: dict, info: dict, probabilities: np.ndarray | None) -> None:
    os.makedirs(path, exist_ok=True)
    if probabilities is not None:
        np.save(os.path.join(path, "test_probabilities.npy"), probabilities)
    # result.json last: its presence marks the run finished.
    manifest.write_json(os.path.join(path, "result.json"),
                        {"seeds": seeds, "param_hash": info["param_hash"], "final": info["final"]})


def run_group(config: Config, group_seeds: list[dict], paths: list[str], strategy: str) -> None:
    """Train the runs at ``paths`` (the missing ones of a group) and store their results."""
    if strategy == "vmap":
        for path, seeds, (info, probabilities) in zip(paths, group_seeds,
                                                      train.train_replicas(config, group_seeds)):
            save_result(path, seeds, info, probabilities)
        return
    for path, seeds in zip(paths, group_seeds):
        os.makedirs(path, exist_ok=True)
        info = train.train_and_evaluate(config, seeds, path, progress=False, resume=True)  # after a kill
        probabilities = os.path.join(path, "test_probabilities.npy")
        save_result(path, seeds, info, np.load(probabilities) if os.path.exists(probabilities) else None)


# ---------------------------------------------------------------- report


def write_report(workdir: str, rows: list[dict], header: dict) -> str:
    """ablation.json, ablation.csv, ablation.md and ablation.png; returns the markdown."""
    manifest.write_json(os.path.join(workdir, "ablation.json"), {**header, "groups": rows})
    flat = [{k: (f"{v[0]:.6g}..{v[1]:.6g}" if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows]
    with open(os.path.join(workdir, "ablation.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    classifier = "test_accuracy_mean" in rows[0]
    lines = ["| group | runs | " + ("test accuracy: mean ± std [95% CI of std] | disagreement | ensemble acc. | "
                                  if classifier else "") + "test loss: mean ± std [95% CI of std] |",
             "|---|---|" + ("---|---|---|" if classifier else "") + "---|"]
    for row in rows:
        cells = [row["group"], str(row["runs"])]
        if classifier:
            low, high = row["test_accuracy_std_ci"]
            cells += [f"{row['test_accuracy_mean']:.4f} ± {row['test_accuracy_std']:.4f} [{low:.4f}, {high:.4f}]",
                      f"{row['disagreement']:.4f}", f"{row['ensemble_accuracy']:.4f}"]
        low, high = row["test_loss_std_ci"]
        cells.append(f"{row['test_loss_mean']:.4f} ± {row['test_loss_std']:.4f} [{low:.4f}, {high:.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    none = next(row for row in rows if row["group"] == "none")
    if none["test_loss_std"] != 0 or none["distinct_param_hashes"] != 1:
        lines.append("\n**WARNING: the `none` group (identical reruns) has non-zero spread: this run is NOT "
                     "deterministic, and every other group's spread includes that noise.**")
    else:
        lines.append("\nDeterminism control: the `none` group's reruns are bit-identical (one param_hash, zero spread).")
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(markdown)
    metric = "test_accuracy" if classifier else "test_loss"
    plots.plot_spread([row["group"] for row in rows], [row[f"{metric}_std"] for row in rows],
                      [row[f"{metric}_std_ci"] for row in rows], f"std of final {metric.replace('_', ' ')}",
                      os.path.join(workdir, "ablation.png"))
    return markdown


# ---------------------------------------------------------------- CLI


def ablate_parser():
    parser = cli.train_parser(prog="python -m jaxseed.ablate")
    parser.description = "Vary one key stream at a time and report the spread each causes."
    parser.add_argument("--seeds", type=cli.int_at_least(2), default=5, help="runs per group, K (default 5)")
    parser.add_argument("--streams", help="comma-separated streams to vary (default: every stream the model uses)")
    parser.add_argument("--base-seed", type=str, default="0", help="seed of every stream not varied (default 0)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="how a group's K runs execute (default auto: per backend)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = ablate_parser().parse_args(argv)
    try:
        if args.seed is not None or args.stream or args.resume:
            raise UserError("ablate sets the seeds itself: use --base-seed, --seeds and --streams, "
                            "not --seed, --stream or --resume")
        config, _, _ = cli.resolve(args)
        used = OBJECTIVES[config.model].streams
        chosen = tuple(s.strip() for s in args.streams.split(",")) if args.streams else used
        groups = plan_groups(streams.check_seed(args.base_seed, "--base-seed"), args.seeds, chosen, used)
        strategy = choose_strategy(args.strategy, jax.default_backend())
        workdir = args.workdir or os.path.join("runs", f"ablation-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        header = {"config": config.to_dict(), "groups_planned": groups, "strategy": strategy,
                  "base_seed": int(args.base_seed), **manifest.environment()}
        sweep = os.path.join(workdir, "sweep.json")
        if os.path.exists(sweep):
            with open(sweep) as f:
                recorded = json.load(f)
            if (recorded["config"], recorded["groups_planned"]) != (header["config"], groups):
                raise UserError(f"{workdir} holds a different sweep; choose another --workdir")
        else:
            cli.prepare_workdir(workdir, config, int(args.base_seed))
            manifest.write_json(sweep, header)
        todo = {name: [k for k in range(args.seeds) if load_result(run_dir(workdir, name, k)) is None]
                for name in groups}
        total = len(groups) * args.seeds
        start = time.perf_counter()
        with tqdm(total=total, initial=total - sum(map(len, todo.values())), unit="run",
                  desc=f"ablation ({strategy})", disable=args.quiet) as bar:
            for name, missing in todo.items():
                batches = [missing] if strategy == "vmap" else [[k] for k in missing]
                for batch in batches:
                    if not batch:
                        continue
                    run_group(config, [groups[name][k] for k in batch], [run_dir(workdir, name, k) for k in batch],
                              strategy)
                    bar.update(len(batch))
        labels = train.data.load(config.data, config.data_dir).test_labels if config.model == "cnn" else None
        results = {name: [load_result(run_dir(workdir, name, k)) for k in range(args.seeds)] for name in groups}
        rows = [summarize(name, results[name], labels, jax.random.fold_in(streams.bootstrap_key(), i))
                for i, name in enumerate(groups)]
        header["seconds_this_invocation"] = time.perf_counter() - start
        markdown = write_report(workdir, rows, header)
    except (UserError, FloatingPointError) as error:
        print(f"jaxseed.ablate: error: {error}", file=sys.stderr)
        return 2
    print(markdown + f"\nreport in {workdir}: ablation.md, ablation.csv, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
