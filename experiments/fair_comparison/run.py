"""Claim 2: compare two model variants under the same randomness (common random numbers).

Variant A: dropout 0.25; variant B: dropout 0.5. Each is trained with the same K
seeds. Paired: we look at B_k - A_k, whose variance is var(A) + var(B) - 2 cov(A, B).
Unpaired: had B seen other seeds than A, the difference of two independent runs
would have variance var(A) + var(B), estimated here from the same runs. The
interval of the mean difference at this K, and the K the unpaired design would
need to match the paired one, say what pairing buys; P(B > A), the fraction of
seeds on which B's result exceeds A's, says how often B wins a single run.

    python experiments/fair_comparison/run.py [--seeds K] [--data-dir DIR] [--tiny] [--out DIR]
        # writes README.md and differences.png here
"""

import os
import sys
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from common import Verdict, judge, scratch, seeds, small_config, write_result  # noqa: E402

from jaxseed import cli, loop  # noqa: E402
from jaxseed.config import Config  # noqa: E402
from jaxseed.stats import paired_comparison, probability_of_improvement, std_interval  # noqa: E402

METRICS = ("test_loss", "test_accuracy")
SEEDS, TINY_SEEDS = 6, 4  # per variant (--seeds); at 3 the paired t interval has 2 degrees of freedom, t = 4.3
DROPOUT = {"A": 0.25, "B": 0.5}


class Result(NamedTuple):
    config: Config  # A's
    finals: dict[str, list[dict]]  # each variant's final metrics, seed by seed
    compared: dict[str, dict]  # per metric, ``compare``'s result
    verdict: Verdict


def final(config: Config, seed: int, workdir: str) -> dict:
    return loop.train_and_evaluate(config, seeds(seed), workdir, progress=False)["final"]


def width(interval):
    return interval[1] - interval[0]


def judge_widths(k: int, compared: dict[str, dict]) -> Verdict:
    """Pairing held when, for every metric, the paired interval of the mean difference is the narrower."""
    return judge(f"at K = {k} seeds per variant, the paired design's 95% interval of the mean difference B - A is "
                 "narrower than the unpaired design's",
                 [(width(found["paired"]["mean_ci"]) < width(found["unpaired"]["mean_ci"]),
                   f"{metric}: {width(found['paired']['mean_ci']):.5f} paired vs "
                   f"{width(found['unpaired']['mean_ci']):.5f} unpaired (A and B correlate with "
                   f"r = {found['correlation']:+.2f})") for metric, found in compared.items()])


def measure(args) -> Result:
    """Train A and B under the same K seeds, compare them per metric, and judge."""
    common.start_jax()
    k = args.seeds or (TINY_SEEDS if args.tiny else SEEDS)
    configs = {variant: small_config(args, dropout_rate=rate) for variant, rate in DROPOUT.items()}
    with scratch("fair") as folder:
        finals = {variant: [final(config, seed, os.path.join(folder, f"{variant}{seed}")) for seed in range(k)]
                  for variant, config in configs.items()}
    compared = {metric: paired_comparison([run[metric] for run in finals["A"]], [run[metric] for run in finals["B"]])
                for metric in METRICS}
    return Result(configs["A"], finals, compared, judge_widths(k, compared))


def report(result: Result) -> list[str]:
    config, k = result.config, len(result.finals["A"])
    lines = ["# Fair comparison", "", f"CNN on the first {config.train_limit} MNIST images in batches of "
             f"{config.batch_size}, {common.epochs(config)}; A = dropout {DROPOUT['A']}, B = dropout {DROPOUT['B']}; "
             f"K = {k} seeds per variant, the same seeds for A and B.", "",
             "| metric | design | mean of B - A [95% t CI] | CI width | std of B - A [95% χ² CI] "
             "| P(B > A) [95% Clopper-Pearson] | seeds to tell B from A |", "|---|---|---|---|---|---|---|"]
    findings = []
    for metric, found in result.compared.items():
        for design, label in (("paired", "paired (same seeds)"), ("unpaired", "unpaired (var A + var B)")):
            r = found[design]
            improvement = "{:.2f} [{:.2f}, {:.2f}]".format(*r["improvement"]) if "improvement" in r else "–"
            lines.append(f"| {metric} | {label} | {r['mean']:+.5f} [{r['mean_ci'][0]:+.5f}, {r['mean_ci'][1]:+.5f}] "
                         f"| {width(r['mean_ci']):.5f} | {r['sd']:.5f} [{r['sd_ci'][0]:.5f}, {r['sd_ci'][1]:.5f}] "
                         f"| {improvement} | {r['seeds_to_exclude_zero']} |")
        paired, unpaired = found["paired"], found["unpaired"]
        findings.append(f"- {metric}: at K = {k} the 95% interval of the mean difference is "
                        f"{width(paired['mean_ci']):.5f} wide paired and {width(unpaired['mean_ci']):.5f} unpaired; "
                        f"the unpaired design would need K = {found['unpaired_seeds_to_match']} seeds per variant "
                        f"to match the paired width. A and B under the same seeds correlate with "
                        f"r = {found['correlation']:+.2f}.")
    low, high = std_interval(1.0, k - 1)
    all_won = probability_of_improvement(np.ones(k), np.zeros(k))
    return lines + [
        "", "Pairing gives both variants the same initial weights, data order, augmentation and dropout "
        "keys, and removes from the difference whatever variance the two share: the variance of the "
        "paired difference is var(A) + var(B) - 2 cov(A, B), the unpaired one var(A) + var(B). Both are "
        "estimated from the same runs, so they differ only by the covariance:", "", *findings, "",
        result.verdict.conclusion, "",
        f"Each standard deviation is itself uncertain: with K = {k} its 95% chi-square interval is "
        f"[{low:.2f}, {high:.2f}] times the estimate for the paired design (exact for normal errors), "
        "somewhat narrower for the unpaired one (Welch-Satterthwaite degrees of freedom, approximate). "
        "`python -m jaxseed.ablate` reports the same intervals for each random source's spread.", "",
        "`P(B > A)` is the fraction of seeds on which B's result (loss or accuracy, as named) exceeds A's, a "
        "tie counting half (Bouthillier et al., MLSys 2021); its interval is Clopper-Pearson's, at least 95% "
        f"for any K, and wide at small K: B winning all {k} of {k} seeds would give "
        f"[{all_won[1]:.2f}, {all_won[2]:.2g}]. It needs seeds shared by A and B, so the unpaired design has none.",
        "", "`seeds to tell B from A` is the fewest seeds per variant for the 95% t interval of the mean "
        "difference to exclude zero, if the observed mean and spread held.", "",
        "![A, B and B - A per seed, centred](differences.png)", ""]


def plot_differences(result: Result, path: str) -> None:
    fig = Figure(figsize=(10, 3.5))
    for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS):
        x, y = (np.array([run[metric] for run in result.finals[variant]]) for variant in ("A", "B"))
        for values, label in ((x, "A"), (y, "B"), (y - x, "B - A (paired)")):
            ax.plot(range(len(x)), values - values.mean(), "o-", label=label)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title(f"{metric}, each centred on its mean")
        ax.set_xlabel("seed index")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def experiment(args) -> Result:
    """Measure, and write the README and its figure into ``args.out``."""
    result = measure(args)
    os.makedirs(args.out, exist_ok=True)
    plot_differences(result, os.path.join(args.out, "differences.png"))
    write_result(args.out, report(result))
    return result


def parser():
    parser = common.parser(__file__, __doc__)
    parser.add_argument("--seeds", type=cli.int_at_least(2), metavar="K",
                        help=f"seeds per variant, at least 2 (default: {SEEDS}; --tiny: {TINY_SEEDS})")
    return parser


def main(argv=None) -> int:
    return common.main(parser(), experiment, argv)


if __name__ == "__main__":
    sys.exit(main())
