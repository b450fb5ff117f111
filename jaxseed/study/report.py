"""A study's report, a pure function of its runs' results: ``render`` returns the markdown, the
JSON record, the CSV rows and the pictures to draw; ``save`` writes them. The statistics are
jaxseed.stats.

Intervals are 95%: Student's t for a group's mean, chi-square for its std (both exact for normal
errors); a source is ranked above another only where their std intervals are disjoint.
"""

from __future__ import annotations

import csv
import io
import math
from itertools import combinations
from typing import Any, Callable, NamedTuple

import numpy as np

from jaxseed import plots, rundir, stats
from jaxseed.study.result import Result

NAME = "ablation"  # the report's files: ablation.md, .csv, .json, .png (and unstable.png)
# The row key counting a group's distinct fingerprints, by what the fingerprint is called.
DISTINCT = {"fingerprint": "distinct_fingerprints", "param_hash": "distinct_param_hashes"}


class Metric(NamedTuple):
    """A quantity of the summary rows, and how the report shows it.

    A final test metric is shown by its mean and std over a group's runs with their
    intervals (row keys ``{name}_mean``, ``{name}_std``, each also with ``_ci``); a
    per-example one, computed from the runs' test predictions, as one number per group
    (row key ``name``), without interval.
    """

    name: str
    title: str
    per_example: bool = False
    format: str = ".4f"


# The first table: those of these the rows hold, in this order (a VAE's rows hold only the test loss).
SPREAD = (Metric("test_accuracy", "test accuracy"), Metric("disagreement", "disagreement", per_example=True),
          Metric("ensemble_accuracy", "ensemble acc.", per_example=True), Metric("test_loss", "test loss"))
# A classifier's per-example table, beside the observed std of its test accuracy.
INSTABILITY = (Metric("always_right", "always right", True, "d"), Metric("always_wrong", "always wrong", True, "d"),
               Metric("unstable", "unstable", True, "d"),
               Metric("independent_flip_std", "std of accuracy if examples flipped independently", True),
               Metric("test_accuracy", "test accuracy"))
# Any other objective's (the VAE's) per-example table, beside the observed std of its test loss.
LOSS_INSTABILITY = (Metric("example_loss_std", "mean over test examples of each one's std", True),
                    Metric("independent_loss_std", "std of test loss if examples varied independently", True),
                    Metric("test_loss", "test loss"))
PARTS = {"mean": "mean [95% t CI]", "std": "std [95% χ² CI]"}  # the columns of a final metric
UNSTABLE_SHOWN = 8  # images per group in unstable.png


def held(rows: list[dict], metrics: tuple[Metric, ...]) -> list[Metric]:
    """Those of ``metrics`` the rows hold (every row holds the same keys)."""
    return [m for m in metrics if (m.name if m.per_example else f"{m.name}_std") in rows[0]]


def _interval(low: float, high: float) -> str:
    return f"[{low:.4f}, {high:.4f}]"


def _runs(rows: list[dict]) -> str:
    """K as the report states it: the groups of an unfinished study may hold different numbers of runs."""
    counts = sorted({row["runs"] for row in rows})
    return f"K = {counts[0]}" + (f" to {counts[-1]}" if len(counts) > 1 else "")


def _finite(value: float) -> float | None:
    """JSON has no inf or nan: None for a number the statistics could not give."""
    return value if math.isfinite(value) else None


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict], metrics: list[Metric], parts: tuple[str, ...] = ("mean", "std")) -> list[str]:
    """A markdown table of a row per group: a column per per-example metric, one per part (of PARTS)
    of each final one."""
    head = ["group", "runs"]
    cells = [[row["group"], str(row["runs"])] for row in rows]
    for metric in metrics:
        for part in [None] if metric.per_example else parts:
            key = metric.name if part is None else f"{metric.name}_{part}"
            head.append(metric.title if part is None else f"{metric.title}: {PARTS[part]}")
            for line, row in zip(cells, rows):
                value = format(row[key], metric.format)
                line.append(value if part is None else f"{value} {_interval(*row[f'{key}_ci'])}")
    return [_line(head), "|" + "---|" * len(head), *map(_line, cells)]


def ranking_lines(rows: list[dict], metric: str) -> list[str]:
    """What the std intervals of ``metric`` allow to say about which source moves it more."""
    label = metric.replace("_", " ")
    pairs = stats.separated_pairs(rows, metric)
    if not pairs:
        return [f"- std of {label}: no pair of sources can be ranked at {_runs(rows)}: "
                "every pair of varied groups' intervals overlap."]
    ci = {row["group"]: row[f"{metric}_std_ci"] for row in rows}
    return [f"- std of {label}: {a} > {b}: intervals do not overlap ({_interval(*ci[a])} vs {_interval(*ci[b])})"
            for a, b in pairs]


def determinism_line(rows: list[dict], metrics: list[str], fingerprint: str, reruns: str) -> str:
    """What the ``none`` group's reruns say: bit-identical, or a loud warning."""
    none = next((row for row in rows if row["group"] == "none"), None)
    if none is None:
        return "\nDeterminism control: not yet (fewer than two of the `none` group's runs have finished)."
    distinct = none.get(DISTINCT[fingerprint])
    if any(none[f"{name}_std"] != 0 for name in metrics) or distinct not in (None, 1):
        return ("\n**WARNING: the `none` group (identical reruns) has non-zero spread: this run is NOT "
                "deterministic, and every other group's spread includes that noise.**")
    if distinct is None:
        return (f"\nDeterminism control: the `none` group's reruns, {reruns}, have zero spread in every metric (no "
                f"{fingerprint} was returned, so bitwise identity is not checked).")
    return (f"\nDeterminism control: the `none` group's reruns, {reruns}, are bit-identical "
            f"(one {fingerprint}, zero spread).")


def unstable_overlaps(correct: dict[str, np.ndarray]) -> list[dict]:
    """For each pair of varied groups (``correct``: group -> bool[K, N], whether run k classifies test
    example i correctly), how far their unstable examples (some runs right, some wrong) coincide."""
    unstable = {name: right.any(0) & ~right.all(0) for name, right in correct.items() if name != "none"}
    return [{"groups": [a, b], "both": int(np.sum(unstable[a] & unstable[b])),
             "jaccard": _finite(stats.jaccard(unstable[a], unstable[b])),
             "jaccard_if_independent": _finite(stats.jaccard_if_independent(
                 int(unstable[a].sum()), int(unstable[b].sum()), len(unstable[a])))}
            for a, b in combinations(unstable, 2)]


def instability_lines(rows: list[dict], overlaps: list[dict]) -> list[str]:
    lines = ["", "### Per-example instability", "", *table(rows, held(rows, INSTABILITY), parts=("std",)), "",
             "p_i is the fraction of a group's runs that classify test example i correctly; `unstable` counts the "
             "examples with 0 < p_i < 1, whose outcome the group's seeds decide; more runs find more of them, so "
             "counts compare groups of equal K only.", "",
             "`std of accuracy if examples flipped independently` is sqrt(K/(K-1) Σ p_i (1 - p_i)) / N (Jordan, "
             "ICLR 2024); the variance of the accuracy of these predictions exceeds its square by exactly the "
             "examples' summed covariance across runs, so a prediction inside the observed std's interval is "
             "consistent with examples flipping independently, and one below it says they flip together (some runs "
             "are better overall)."]
    if overlaps:
        lines += ["", _line(["groups", "unstable in both", "Jaccard", "Jaccard if independent"]), "|---|---|---|---|"]
        lines += [_line([" & ".join(o["groups"]), str(o["both"]), *("–" if o[key] is None else f"{o[key]:.3f}"
                                                                     for key in ("jaccard", "jaccard_if_independent"))])
                  for o in overlaps]
        lines += ["", "The Jaccard index |U_a ∩ U_b| / |U_a ∪ U_b| of two groups' unstable sets is 1 when two "
                  "sources make the same test examples unstable and 0 when they share none; above `if independent` "
                  "(random sets of the same sizes), the two sources destabilise partly the same examples (a point "
                  "value: no interval)."]
    return lines



def unstable_picture(correct: dict[str, np.ndarray], labels: np.ndarray,
                     test_images: np.ndarray) -> tuple[list[str], Callable[[Any], None] | None]:
    """Each group's most unstable test images, p_i nearest 1/2 first: the markdown lines and the
    function drawing unstable.png (None where no group has an unstable example)."""
    shown = []
    for name, right in correct.items():
        rates = right.mean(0)
        chosen = stats.most_unstable(rates, UNSTABLE_SHOWN)
        if len(chosen):
            shown.append((name, test_images[chosen], [f"label {labels[i]}, p = {rates[i]:.2f}" for i in chosen]))
    if not shown:
        return ["", "No group has an unstable test example: no unstable.png."], None
    return (["", f"![up to {UNSTABLE_SHOWN} test images per group with p_i nearest 1/2](unstable.png)"],
            lambda f: plots.plot_image_rows(shown, f))


def seed_plan(rows: list[dict], metric: str, detect: float | None, correlation: float | None) -> dict:
    """For each varied group, as if two configurations' runs each spread as its ``metric`` does: the
    seeds per configuration to detect a difference ``detect`` in the mean, and the smallest difference
    detectable at the group's K; unpaired and, given ``correlation``, paired; each at the std and at
    the ends of its interval (both grow with the std)."""
    designs = {"unpaired": None, **({"paired": correlation} if correlation is not None else {})}
    groups = {}
    for row in rows:
        if row["group"] == "none":
            continue
        spreads = (row[f"{metric}_std"], *row[f"{metric}_std_ci"])
        found = {"std": spreads[0]}
        for design, r in designs.items():
            if detect is not None:
                found[f"seeds_{design}"] = [_finite(stats.seeds_needed(detect, s, r)) for s in spreads]
            found[f"detectable_{design}"] = [stats.detectable_difference(s, row["runs"], r) for s in spreads]
        groups[row["group"]] = found
    return {"metric": metric, "difference": detect, "correlation": correlation, "level": stats.LEVEL,
            "power": stats.POWER, "designs": list(designs), "groups": groups}


def seed_lines(rows: list[dict], plan: dict, title: str) -> list[str]:
    names = {design: ", unpaired" if design == "unpaired" else f", paired (r = {plan['correlation']:g})"
             for design in plan["designs"]}
    head = ["group", "runs", f"{title}: {PARTS['std']}"]
    columns = []  # (key in a group's plan, how one number is written)
    if plan["difference"] is not None:
        for design, name in names.items():
            head.append(f"seeds per configuration for Δ = {plan['difference']:g}{name}")
            columns.append((f"seeds_{design}", lambda n: f"> {stats.MAX_SEEDS:,}" if n is None else str(n)))
    for design, name in names.items():
        head.append(f"smallest Δ at this K{name}")
        columns.append((f"detectable_{design}", lambda d: f"{d:.3g}"))
    metric = plan["metric"]
    lines = ["", "### Seeds needed", "", _line(head), "|" + "---|" * len(head)]
    for row in rows:
        if row["group"] in plan["groups"]:
            found = plan["groups"][row["group"]]
            lines.append(_line([row["group"], str(row["runs"]),
                                f"{row[f'{metric}_std']:.4f} {_interval(*row[f'{metric}_std_ci'])}",
                                *(f"{write(found[key][0])} [{write(found[key][1])}, {write(found[key][2])}]"
                                  for key, write in columns)]))
    lines += ["", f"For a two-sided t test at 5% to detect a difference Δ in the mean {title} of two configurations "
              "with 80% power, were each configuration's runs to spread as this group's: the seeds per configuration "
              "(unpaired: each on its own seeds; paired: both on the same seeds, their results correlated r, so "
              "σ_d² = 2σ²(1 - r)), and the smallest Δ detectable at this group's K; the brackets repeat both at "
              "the ends of the std's interval, as they rest on an estimated spread."]
    if plan["difference"] is None or plan["correlation"] is None:
        lines.append("(`--detect DELTA` adds the seeds a difference DELTA needs; `--correlation R`, as "
                     "experiments/fair_comparison measures it, the paired design.)")
    return lines


def summarize(name: str, results: list[Result], metrics: list[str], labels: np.ndarray | None = None,
              fingerprint: str = "fingerprint") -> dict:
    """One report row: mean and std of each of ``metrics`` over the group's runs, with their
    intervals; what the runs' per-example outputs say (a classifier's ``probabilities`` with its
    ``labels`` int[N]: disagreement, ensemble accuracy and instability; ``correct``: instability;
    else ``loss``: its per-example spread); the distinct fingerprints, where the runs return one."""
    row = {"group": name, "runs": len(results)}
    for metric in metrics:
        values = np.array([r.metrics[metric] for r in results])
        mean, std, k = float(values.mean()), float(stats.sample_std(values)), len(values)
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
        row[f"{metric}_mean_ci"] = tuple(map(float, stats.mean_interval(mean, std / math.sqrt(k), k - 1)))
        row[f"{metric}_std_ci"] = tuple(map(float, stats.std_interval(std, k - 1)))
    outputs = results[0].per_example
    if "probabilities" in outputs and labels is not None:
        probabilities = np.stack([r.per_example["probabilities"] for r in results])
        row["disagreement"] = stats.disagreement(probabilities.argmax(-1))
        row["ensemble_accuracy"] = stats.ensemble_accuracy(probabilities, labels)
    if (correct := _correct(results, labels)) is not None:
        row.update(stats.instability(correct)._asdict())
    elif "loss" in outputs:
        row.update(stats.loss_instability(np.stack([r.per_example["loss"] for r in results]))._asdict())
    if results[0].fingerprint is not None:
        row[DISTINCT[fingerprint]] = len({r.fingerprint for r in results})
    return row


def _correct(results: list[Result], labels: np.ndarray | None) -> np.ndarray | None:
    """bool[K, N]: whether run k gets test example i right, where the runs say (``correct``, or
    ``probabilities`` with ``labels``); else None."""
    if "correct" in results[0].per_example:
        return np.stack([r.per_example["correct"] for r in results])
    if "probabilities" in results[0].per_example and labels is not None:
        return stats.correct_predictions(np.stack([r.per_example["probabilities"] for r in results]), labels)
    return None


def metrics_of(results: list[Result]) -> tuple[Metric, ...]:
    """The report's first table for any study: each metric the runs return, in their order, then the
    classifier's per-example columns (those the rows hold are shown)."""
    return (*(Metric(name, name.replace("_", " ")) for name in results[0].metrics), *SPREAD[1:3])


class Report(NamedTuple):
    """A study's report: ``markdown`` (ablation.md), ``record`` (ablation.json), ``csv``
    (ablation.csv) and ``pictures`` (file name -> a function drawing its PNG into an open file)."""

    markdown: str
    record: dict
    csv: str
    pictures: dict[str, Callable[[Any], None]]


def render(results: dict[str, list[Result]], seeds: dict[str, list[dict]], header: dict,
           metrics: tuple[Metric, ...] | None = None, labels: np.ndarray | None = None,
           test_images: np.ndarray | None = None, detect: float | None = None, correlation: float | None = None,
           fingerprint: str = "fingerprint", reruns: str = "each its own call") -> Report:
    """The report of ``results`` (group -> its finished runs, two or more each, in the report's order).

    Args:
      results: group -> its runs' results.
      seeds: group -> each run's stream seeds (recorded beside its result).
      header: what ablation.json records besides (the study's plan and environment); its
        ``runs_finished`` and ``runs_planned`` say how far the study is.
      metrics: the first table's columns (default ``metrics_of(results)``); the first final one
        is the seeds-needed section's.
      labels: a classifier's test labels int[N], where runs return ``probabilities``.
      test_images: with per-example correctness, the test images uint8[N, H, W, C] (C = 1 or 3):
        unstable.png.
      detect: a difference Delta in the mean of the first metric: the seeds each design needs.
      correlation: r of two configurations' results on the same seeds: the paired design too.
      fingerprint: what a run's fingerprint is called in the text and record.
      reruns: how the ``none`` group's reruns are made, as the determinism line says it.
    """
    first = next(iter(results.values()))
    metrics = metrics or metrics_of(first)
    finals = [m for m in metrics if not m.per_example and m.name in first[0].metrics]
    rows = [summarize(name, group, [m.name for m in finals], labels, fingerprint) for name, group in results.items()]
    correct = {name: right for name, group in results.items() if (right := _correct(group, labels)) is not None}
    overlaps = unstable_overlaps(correct)
    plan = seed_plan(rows, finals[0].name, detect, correlation)
    runs = {name: [{"seeds": seeds[name][k], fingerprint: r.fingerprint, "final": dict(r.metrics)}
                   for k, r in enumerate(group)] for name, group in results.items()}
    record = {**header, "runs": runs, "summary": rows, "unstable_overlap": overlaps, "seeds_needed": plan}
    flat = [{k: (f"{v[0]:.6g}..{v[1]:.6g}" if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows]
    csv_text = io.StringIO(newline="")
    writer = csv.DictWriter(csv_text, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    lines = [*table(rows, held(rows, metrics)), "",
             "Intervals are 95%: Student's t for the mean, chi-square for the std (both exact for normal "
             "errors). A source is ranked above another only where their std intervals are disjoint:", ""]
    for metric in finals:
        lines += ranking_lines(rows, metric.name)
    lines.append(determinism_line(rows, [m.name for m in finals], fingerprint, reruns))
    if header.get("runs_finished", 0) < header.get("runs_planned", 0):
        lines.append(f"\n{header['runs_finished']} of the {header['runs_planned']} planned runs have finished; "
                     "the groups above are those with two or more.")
    if "unstable" in rows[0]:
        lines += instability_lines(rows, overlaps)
    elif "independent_loss_std" in rows[0]:
        lines += ["", "### Per-example spread of the test loss", "",
                  *table(rows, held(rows, LOSS_INSTABILITY), parts=("std",)), "",
                  "Each test example's loss (for the VAE its negative ELBO) has a std over the group's runs, s_i; "
                  "sqrt(Σ s_i²) / N is the std the mean test loss would have if examples varied independently. The "
                  "observed std exceeds it by the examples' covariance across runs: a prediction below the observed "
                  "std's interval says some runs score every example better (a point value: no interval)."]
    pictures = {f"{NAME}.png": lambda f: plots.plot_spread(
        [row["group"] for row in rows], [row[f"{finals[0].name}_std"] for row in rows],
        [row[f"{finals[0].name}_std_ci"] for row in rows], f"std of final {finals[0].title}", f)}
    if correct and test_images is not None and labels is not None:
        picture_lines, draw = unstable_picture(correct, labels, test_images)
        lines += picture_lines
        if draw:
            pictures["unstable.png"] = draw
    lines += seed_lines(rows, plan, finals[0].title)
    return Report("\n".join(lines) + "\n", record, csv_text.getvalue(), pictures)


def save(folder: rundir.RunFolder, report: Report) -> None:
    """Write ``report`` into the study's folder."""
    folder.write_json(f"{NAME}.json", report.record)
    folder.write_text(f"{NAME}.csv", report.csv)
    folder.write_text(f"{NAME}.md", report.markdown)
    for name, draw in report.pictures.items():
        folder.save_picture(name, draw)


def render_comparison(results: dict[str, list[Result]], seeds: dict[str, list[dict]], header: dict) -> Report:
    """The report of a paired comparison: groups ``A`` and ``B`` whose runs on the same seeds pair up.

    Per metric: each one's mean [t CI]; the paired difference B - A, its mean [t CI] and std
    [chi-square CI]; the correlation of A and B; P(B > A) [Clopper-Pearson] (a metric where larger
    is better reads it directly; for a loss, P(B > A) is how often B is worse); and the seeds per
    function each design needs for its 95% interval of the mean difference to exclude zero.
    """
    found = {group: dict(zip(map(_seed_key, seeds.get(group, [])), results.get(group, []))) for group in ("A", "B")}
    pairs = [key for key in found["A"] if key in found["B"]]
    if len(pairs) < 2:
        text = f"Fewer than two seeds have finished under both A and B ({len(pairs)}): no comparison yet.\n"
        return Report(text, {**header, "pairs": len(pairs)}, "", {})
    metrics = list(found["A"][pairs[0]].metrics)
    compared = {}
    for metric in metrics:
        a = np.array([found["A"][key].metrics[metric] for key in pairs])
        b = np.array([found["B"][key].metrics[metric] for key in pairs])
        compared[metric] = {"mean_a": float(a.mean()), "mean_b": float(b.mean()), **stats.paired_comparison(a, b)}
    lines = ["| metric | A: mean | B: mean | mean of B - A [95% t CI] | std of B - A [95% χ² CI] | r of A and B "
             "| P(B > A) [95% Clopper-Pearson] | seeds to tell B from A: paired | unpaired |",
             "|---|---|---|---|---|---|---|---|---|"]
    for metric, c in compared.items():
        paired, unpaired = c["paired"], c["unpaired"]
        lines.append(_line([metric, f"{c['mean_a']:.4f}", f"{c['mean_b']:.4f}",
                            f"{paired['mean']:+.4g} [{paired['mean_ci'][0]:+.4g}, {paired['mean_ci'][1]:+.4g}]",
                            f"{paired['sd']:.4g} [{paired['sd_ci'][0]:.4g}, {paired['sd_ci'][1]:.4g}]",
                            f"{c['correlation']:+.2f}", "{:.2f} [{:.2f}, {:.2f}]".format(*paired["improvement"]),
                            _seeds(paired["seeds_to_exclude_zero"]), _seeds(unpaired["seeds_to_exclude_zero"])]))
    names = header.get("function", {})
    lines += ["", f"A: `{names.get('A')}`, B: `{names.get('B')}`, on the same {len(pairs)} seeds (run k of each: every "
              "stream seeded base + 1 + k). Paired, the difference's variance is var A + var B - 2 cov(A, B); "
              "unpaired (had B run on other seeds) var A + var B: the seeds columns say what sharing the "
              "randomness buys. P(B > A) counts the seeds on which B's value exceeds A's (a tie half): for a loss, "
              "how often B is worse. A mean difference whose interval holds 0 does not tell B from A at this K.",
              "", "A comparison has no determinism control: `jaxseed.study` of each function has one (its `none` "
              "group)."]
    runs = {group: [{"seeds": dict(key), "fingerprint": r.fingerprint, "final": dict(r.metrics)}
                    for key, r in found[group].items()] for group in found}
    record = {**header, "pairs": len(pairs), "runs": runs,
              "comparison": {metric: _finite_tree(c) for metric, c in compared.items()}}
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["metric", "mean_a", "mean_b", "paired_mean", "paired_sd", "correlation", "p_b_greater",
                     "paired_seeds", "unpaired_seeds"])
    for metric, c in compared.items():
        writer.writerow([metric, c["mean_a"], c["mean_b"], c["paired"]["mean"], c["paired"]["sd"], c["correlation"],
                         c["paired"]["improvement"][0], c["paired"]["seeds_to_exclude_zero"],
                         c["unpaired"]["seeds_to_exclude_zero"]])
    return Report("\n".join(lines) + "\n", record, rows.getvalue(), {})


def _seed_key(seeds: dict) -> tuple:
    return tuple(sorted(seeds.items()))


def _seeds(n: float) -> str:
    return f"> {stats.MAX_SEEDS:,}" if not math.isfinite(n) else str(n)


def _finite_tree(value):
    """JSON has no inf or nan: None in their place, through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: _finite_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_tree(v) for v in value]
    return _finite(value) if isinstance(value, float) else value
