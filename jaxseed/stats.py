"""Statistics of a study's results: pure functions of numbers (numpy and scipy; no JAX, no files).

Intervals of a group's mean and spread (``mean_interval``, ``std_interval``), what K runs'
test predictions say about single examples (``instability``, ``jaccard``), how many seeds a
comparison needs (``seeds_needed``, ``detectable_difference``) and the probability that one
configuration beats another on the same seed (``probability_of_improvement``).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import NamedTuple

import numpy as np

# scipy is imported by the functions that use it: importing it takes ~0.8 s, a quarter of a training
# run's start-up, and a run imports this module (through the study engine) but never calls it.

LEVEL = 0.95  # of every interval, and 1 - the size of every two-sided test
POWER = 0.8  # of the tests that size a comparison
MAX_SEEDS = 10**6  # seeds_needed gives up on a design needing more


# ---------------------------------------------------------------- a group's mean and spread


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
    from scipy import stats
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
    from scipy import stats
    return (std * np.sqrt(dof / stats.chi2.ppf((1 + level) / 2, dof)),
            std * np.sqrt(dof / stats.chi2.ppf((1 - level) / 2, dof)))


def separated_pairs(rows: list[dict], metric: str) -> list[tuple[str, str]]:
    """Pairs (larger, smaller) of varied groups whose intervals of the std of ``metric`` do not overlap.

    ``rows`` are summary rows holding ``group`` and ``{metric}_std_ci``; the ``none`` group
    (the determinism control) is never ranked. Non-overlap of two 95% intervals is a
    conservative test of a difference (its false-positive rate is well under 5%): a pair
    not named may still differ.
    """
    varied = [row for row in rows if row["group"] != "none"]
    return [(a["group"], b["group"]) for a in varied for b in varied
            if a[f"{metric}_std_ci"][0] > b[f"{metric}_std_ci"][1]]


# ---------------------------------------------------------------- K classifiers' test predictions


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


def correct_predictions(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool[K, N]: whether model k's most probable class of example i is its label.

    Args:
      probabilities: float[K, N, C], K models' class probabilities of N examples.
      labels: int[N].
    """
    return np.argmax(probabilities, -1) == labels


class Instability(NamedTuple):
    """How K runs' correctness on N test examples varies example by example."""

    always_right: int  # examples every run classifies correctly: p_i = 1
    always_wrong: int  # p_i = 0
    unstable: int  # 0 < p_i < 1: the seeds decide these
    independent_flip_std: float  # std of accuracy if each example flipped independently


def instability(correct: np.ndarray) -> Instability:
    r"""Per-example view of K runs: p_i, the fraction of runs right on example i, and the
    spread of accuracy that independent examples would give.

    If example i were right in a run with probability p_i independently of every other
    example (Jordan, "On the variance of neural network training with respect to test sets
    and distributions", ICLR 2024), the accuracy of a run, the mean of N Bernoulli(p_i),
    would have standard deviation

    .. math::
      \sigma_{\mathrm{flip}} = \frac{1}{N} \sqrt{\sum_i p_i (1 - p_i)},

    estimated here with the K / (K - 1) correction that makes the estimate of
    p_i (1 - p_i) unbiased, as Bessel's makes the observed variance:

    .. math::
      \hat\sigma_{\mathrm{flip}}^2 = \frac{K}{K-1} \frac{1}{N^2} \sum_i \hat p_i (1 - \hat p_i),
      \qquad
      s^2_{\mathrm{acc}} = \hat\sigma_{\mathrm{flip}}^2 + \frac{1}{N^2} \sum_{i \ne j} \widehat{\mathrm{cov}}(x_i, x_j)

    exactly, with x_i in {0, 1} example i's correctness across the K runs and cov their
    sample covariance (ddof=1): the observed variance of accuracy exceeds the independent
    prediction by the examples' summed covariance.

    Args:
      correct: bool[K, N], whether run k classifies example i correctly (K >= 2).

    Returns:
      Instability of the N examples.
    """
    correct = np.asarray(correct, bool)
    k, n = correct.shape
    rates = correct.mean(0)
    return Instability(always_right=int(np.sum(rates == 1)), always_wrong=int(np.sum(rates == 0)),
                       unstable=int(np.sum((rates > 0) & (rates < 1))),
                       independent_flip_std=float(np.sqrt(k / (k - 1) * np.sum(rates * (1 - rates))) / n))


class LossInstability(NamedTuple):
    """How the K runs of a group score each test example's loss: the mean over examples of each
    example's std across the runs, and the std of the mean test loss that examples varying
    independently would give."""

    example_loss_std: float
    independent_loss_std: float


def loss_instability(losses: np.ndarray) -> LossInstability:
    r"""Per-example spread of a loss over runs (the VAE's negative ELBO, or any objective's).

    .. math::
      s_i = \mathrm{std}_k(x_{ki}),\qquad
      \sigma_{\text{indep}} = \frac{1}{N}\sqrt{\textstyle\sum_i s_i^2}

    The mean loss of run k is m_k = (1/N) Σ_i x_ki, so var(m) = (1/N²)(Σ_i var_i + Σ_{i≠j} cov_ij):
    σ_indep is its std without the examples' covariance across runs (the loss analogue of
    ``instability``'s independent-flip std), comparable with the observed std of the test loss
    (both with ddof = 1).

    Args:
      losses: float[K, N], run k's loss on test example i.
    """
    spread = sample_std(np.asarray(losses, np.float64), axis=0)
    return LossInstability(float(spread.mean()), float(np.sqrt(np.sum(spread**2)) / spread.size))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    r"""Jaccard index of two sets given as masks bool[N]: |A ∩ B| / |A ∪ B|; nan when both are empty.

    1 when the sets coincide, 0 when they are disjoint.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.sum(a | b)
    return float(np.sum(a & b) / union) if union else math.nan


def jaccard_if_independent(size_a: int, size_b: int, total: int) -> float:
    r"""Jaccard index expected of two independent uniform random subsets of sizes a and b of N
    items, as the ratio of the expected intersection to the expected union:

    .. math::
      m = \frac{a b}{N}, \qquad J_0 = \frac{m}{a + b - m}

    The reference a measured overlap is compared with: above it, two sets share more than
    sets of their sizes would by chance. nan when both are empty.
    """
    both = size_a * size_b / total
    union = size_a + size_b - both
    return float(both / union) if union else math.nan


def most_unstable(rates: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` examples with 0 < p_i < 1, those with p_i closest to 1/2 first
    (at equal distances, the lower index first).

    Args:
      rates: float[N], p_i, the fraction of runs that classify example i correctly.
    """
    rates = np.asarray(rates, np.float64)
    unstable = np.flatnonzero((rates > 0) & (rates < 1))
    return unstable[np.argsort(np.abs(rates[unstable] - 0.5), kind="stable")[:count]]


# ---------------------------------------------------------------- how many seeds a comparison needs


def _difference_spread(std: float, correlation: float | None) -> float:
    """Std of the difference of one run of each configuration, each with spread ``std``:
    sqrt(2) sigma for independent seeds, sqrt(2 (1 - r)) sigma for shared seeds."""
    return std * math.sqrt(2 * (1 - (correlation or 0.0)))


def _dof(n: int, correlation: float | None) -> int:
    return n - 1 if correlation is not None else 2 * (n - 1)


def _power(noncentrality: float, dof: float, level: float) -> float:
    from scipy import stats
    critical = stats.t.ppf((1 + level) / 2, dof)
    # P(T < -c) as P(-T > c), -T ~ t'(-lambda): scipy's nct.cdf returns nan far in that tail.
    return float(stats.nct.sf(critical, dof, noncentrality) + stats.nct.sf(critical, dof, -noncentrality))


def t_test_power(difference: float, std: float, n: int, correlation: float | None = None,
                 level: float = LEVEL) -> float:
    r"""Power of the two-sided t test of equal means at size 1 - l, n runs per configuration.

    Unpaired (``correlation`` None; each configuration's runs on their own seeds, both with
    std sigma): the two-sample t test, nu = 2 (n - 1). Paired (both trained on the same n
    seeds, results correlated r): the one-sample t test of the n differences, whose std is
    sigma_d = sigma sqrt(2 (1 - r)), nu = n - 1. In both, with s_1 the std of one difference
    (sigma sqrt 2 unpaired, sigma_d paired), the statistic is noncentral t:

    .. math::
      \lambda = \frac{\Delta}{s_1 / \sqrt n}, \qquad
      \mathrm{power} = P(|T| > t_{(1+\ell)/2,\ \nu}), \quad T \sim t'_\nu(\lambda)

    exact for normal results (e.g. Cohen's d = Delta / sigma = 1 unpaired at n = 17: 0.807).

    Args:
      difference: Delta, the true difference of the two means.
      std: sigma > 0, the std of one configuration's result over seeds.
      n: runs per configuration, >= 2.
      correlation: r of the two configurations' results on the same seed, or None (unpaired).
      level: 1 - the test's size (0.95: a 5% test).
    """
    return _power(difference * math.sqrt(n) / _difference_spread(std, correlation), _dof(n, correlation), level)


def seeds_needed(difference: float, std: float, correlation: float | None = None, level: float = LEVEL,
                 power: float = POWER, max_seeds: int = MAX_SEEDS) -> int | float:
    r"""Fewest runs n per configuration for ``t_test_power`` to reach ``power`` at a difference Delta.

    Starts from the normal approximation, with s_1 the std of one difference (sigma sqrt 2
    unpaired, sigma sqrt(2 (1 - r)) paired),

    .. math::
      n_0 = \left\lceil (z_{(1+\ell)/2} + z_{\mathrm{power}})^2 \, s_1^2 / \Delta^2 \right\rceil
      \quad (\text{unpaired: } 2 (z + z)^2 \sigma^2 / \Delta^2)

    and steps n until the exact t power reaches ``power`` (it grows with n), so the t
    test's estimated variance costs its one or two seeds. 2 when s_1 = 0 (the fewest
    that estimate a spread); math.inf when more than ``max_seeds`` would be needed.
    At sigma = 1, Delta = 0.5 (Cohen's d = 0.5), 5% and 80%: 64 unpaired; at r = 0.5, 34.

    Args:
      difference: Delta > 0, the difference of means to detect.
      std: sigma, the std of one configuration's result over seeds.
      correlation: r of the two configurations' results on the same seed, or None (unpaired).
      level: 1 - the test's size.
      power: the probability of detecting Delta.
      max_seeds: the largest n considered.
    """
    from scipy import stats
    if difference <= 0:
        raise ValueError(f"the difference to detect must be > 0, got {difference}")
    spread = _difference_spread(std, correlation)
    if spread == 0:
        return 2
    z = stats.norm.ppf((1 + level) / 2) + stats.norm.ppf(power)
    # Capped before stepping down: the approximation may overshoot past max_seeds an answer within it.
    n = min(max_seeds, max(2, math.ceil((z * spread / difference) ** 2)))
    while n > 2 and t_test_power(difference, std, n - 1, correlation, level) >= power:
        n -= 1  # the normal approximation's ceiling, or its neglected second tail, overshot
    while t_test_power(difference, std, n, correlation, level) < power:
        if n == max_seeds:
            return math.inf
        n += 1
    return n


def detectable_difference(std: float, n: int, correlation: float | None = None, level: float = LEVEL,
                          power: float = POWER) -> float:
    r"""Smallest difference of means Delta the test of ``t_test_power`` detects with ``power`` at n
    runs per configuration: ``seeds_needed`` inverted.

    .. math::
      \Delta = \lambda^\star s_1 / \sqrt n, \qquad \mathrm{power}(\lambda^\star; \nu) = \mathrm{power}

    with lambda* found by root finding (the power grows with lambda), s_1 and nu as in
    ``t_test_power``. Linear in sigma. 0 when s_1 = 0.

    Args:
      std: sigma, the std of one configuration's result over seeds.
      n: runs per configuration, >= 2.
      correlation: r of the two configurations' results on the same seed, or None (unpaired).
      level: 1 - the test's size.
      power: the probability of detecting Delta, above 1 - level (the power at Delta = 0).
    """
    from scipy import optimize
    spread = _difference_spread(std, correlation)
    if spread == 0:
        return 0.0
    dof = _dof(n, correlation)
    high = 1.0
    while _power(high, dof, level) < power:  # at nu = 1 lambda* is in the tens
        high *= 2
    noncentrality = optimize.brentq(lambda lam: _power(lam, dof, level) - power, 0.0, high, xtol=1e-12)
    return noncentrality * spread / math.sqrt(n)


# ---------------------------------------------------------------- one configuration against another


def probability_of_improvement(a, b, level: float = LEVEL) -> tuple[float, float, float]:
    r"""P(A > B): how often configuration A's result exceeds B's on the same seed, with an interval.

    Bouthillier et al., "Accounting for variance in machine learning benchmarks" (MLSys
    2021): with K seeds, each trained under both configurations,

    .. math::
      \hat P(A > B) = \frac{1}{K} \sum_k \left( 1[a_k > b_k] + \tfrac12 1[a_k = b_k] \right)

    (a tie counts half). The K pairs are independent, so the wins are Binomial(K, p): the
    interval is Clopper-Pearson's, whose coverage is at least ``level`` for every p and K.
    The paper's percentile bootstrap is not used: at the few seeds of a study it
    under-covers, and when A wins all K pairs it resamples only wins and returns [1, 1].
    With ties, the lower end is the lower Clopper-Pearson bound of the wins alone and the
    upper end the upper bound of wins plus ties (each at (1 - l) / 2), which brackets
    P(A > B) + P(A = B) / 2 with coverage at least ``level``. It is wide at a study's K:
    A winning all 6 of 6 pairs gives [0.54, 1].

    Args:
      a: float[K], A's result (larger is better: pass a loss negated) on seeds 1..K.
      b: float[K], B's result on the same seeds in the same order.
      level: coverage probability of the interval.

    Returns:
      (P(A > B), low, high).
    """
    from scipy import stats
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = len(a)
    wins, ties = int(np.sum(a > b)), int(np.sum(a == b))
    tail = (1 - level) / 2
    low = float(stats.beta.ppf(tail, wins, k - wins + 1)) if wins > 0 else 0.0
    high = float(stats.beta.ppf(1 - tail, wins + ties + 1, k - wins - ties)) if wins + ties < k else 1.0
    return (wins + ties / 2) / k, low, high


def seeds_for_width(half_width: float, sd: float, dof_per_seed: float, level: float = LEVEL) -> float:
    r"""Fewest seeds n per variant whose t interval of the mean difference is at most ``half_width`` each side:

    .. math::
      t_{(1+\ell)/2,\ \nu(n)} \cdot sd / \sqrt{n} \le w,  \qquad  \nu(n) = (n - 1) \cdot c

    with sd the spread of one difference, and c = dof_per_seed (1 paired; Welch's
    (s_A^2 + s_B^2)^2 / (s_A^4 + s_B^4) in [1, 2] unpaired). The left side falls
    with n, so bisect. math.inf if more than MAX_SEEDS would be needed.
    """
    from scipy import stats
    def fits(n):
        return stats.t.ppf((1 + level) / 2, (n - 1) * dof_per_seed) * sd / math.sqrt(n) <= half_width

    if not fits(MAX_SEEDS):
        return math.inf
    low, high = 1, MAX_SEEDS  # fits(high), and n = 1 has no spread estimate at all
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def paired_comparison(a, b) -> dict:
    """Paired and unpaired views of B - A from K runs of each variant with the same seeds.

    Paired: d_k = B_k - A_k, std s_d with K - 1 degrees of freedom; the mean's
    interval is Student's t with se = s_d / sqrt(K).

    Unpaired (B with other seeds than A): the difference of independent runs has
    std sqrt(s_A^2 + s_B^2), with Welch-Satterthwaite's degrees of freedom
    nu = (K - 1) (s_A^2 + s_B^2)^2 / (s_A^4 + s_B^4) (exactly 2(K - 1) when
    var A = var B); its chi-square interval is then approximate, not exact. The
    mean's interval is Welch's: se = sqrt((s_A^2 + s_B^2) / K), t with nu.

    P(B > A) with its Clopper-Pearson interval (``probability_of_improvement``) counts
    seed by seed, so only the paired design has it.

    Returns {"paired": ..., "unpaired": ...} of {"mean", "sd", "sd_ci", "mean_ci",
    "seeds_to_exclude_zero"}, the paired one also "improvement": (P(B > A), low, high);
    plus "correlation" of A and B and "unpaired_seeds_to_match" (seeds per variant the
    unpaired design needs for the paired interval's width).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = len(a)
    d = b - a
    var_a, var_b = sample_std(a) ** 2, sample_std(b) ** 2
    welch = (var_a + var_b) ** 2 / (var_a ** 2 + var_b ** 2) if var_a + var_b > 0 else 1.0
    result = {}
    for design, sd, per_seed in (("paired", sample_std(d), 1.0), ("unpaired", math.sqrt(var_a + var_b), welch)):
        dof = float((k - 1) * per_seed)
        result[design] = {"mean": float(d.mean()), "sd": float(sd), "dof": dof,
                          "sd_ci": tuple(map(float, std_interval(sd, dof))),
                          "mean_ci": tuple(map(float, mean_interval(d.mean(), sd / math.sqrt(k), dof))),
                          # an interval excludes zero when its half width is below |mean|: never for mean 0
                          "seeds_to_exclude_zero": (seeds_for_width(abs(d.mean()), sd, per_seed) if d.mean()
                                                    else math.inf)}
    result["paired"]["improvement"] = probability_of_improvement(b, a)
    paired_half_width = (result["paired"]["mean_ci"][1] - result["paired"]["mean_ci"][0]) / 2
    result["unpaired_seeds_to_match"] = seeds_for_width(paired_half_width, result["unpaired"]["sd"], welch)
    result["correlation"] = float(np.corrcoef(a, b)[0, 1]) if var_a * var_b > 0 else math.nan
    return result
