"""Statistics of a study, on numbers alone (nothing trained): coverage by simulation, known values, edge cases."""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as scipy_stats

from jaxseed import stats


def test_interval_factors_at_five_runs():
    low, high = stats.std_interval(1.0, 4)
    assert low == pytest.approx(0.60, abs=0.005) and high == pytest.approx(2.87, abs=0.005)
    low, high = stats.mean_interval(3.0, 0.5, 4)  # t_{0.975, 4} = 2.776
    assert (low, high) == (pytest.approx(3.0 - 1.388, abs=1e-3), pytest.approx(3.0 + 1.388, abs=1e-3))


def test_zero_spread_gives_exact_zeros():
    values = [106.93230234375] * 5  # np.std would round its mean to a 1e-14 spread
    std = stats.sample_std(values)
    assert std == 0.0 and stats.std_interval(std, 4) == (0.0, 0.0)
    assert stats.mean_interval(np.mean(values), 0.0, 4) == (np.mean(values), np.mean(values))


@pytest.mark.parametrize("k", [2, 5])
def test_intervals_cover_at_their_level(k):
    """Simulated groups of K normal values: each interval covers the truth in 95% +- 1.5 points of them."""
    groups, mu, sigma = 4000, 3.0, 2.0
    values = np.random.default_rng(0).normal(mu, sigma, (groups, k))
    std = stats.sample_std(values, axis=1)
    low, high = stats.std_interval(std, k - 1)
    std_coverage = np.mean((low <= sigma) & (sigma <= high))
    low, high = stats.mean_interval(values.mean(1), std / np.sqrt(k), k - 1)
    mean_coverage = np.mean((low <= mu) & (mu <= high))
    print(f"coverage over {groups} groups of {k}: std {std_coverage:.4f}, mean {mean_coverage:.4f}")
    assert abs(std_coverage - 0.95) < 0.015 and abs(mean_coverage - 0.95) < 0.015


def test_disagreement_and_ensemble():
    predictions = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 3]])
    assert stats.disagreement(predictions) == pytest.approx((1 / 4 + 1 / 4 + 2 / 4) / 3)
    probabilities = np.array([[[0.6, 0.4], [0.6, 0.4]], [[0.3, 0.7], [0.8, 0.2]]])  # [K=2, N=2, C=2]
    assert stats.ensemble_accuracy(probabilities, np.array([1, 1])) == 0.5  # mean probs: [.45,.55], [.7,.3]
    np.testing.assert_array_equal(stats.correct_predictions(probabilities, np.array([1, 1])),
                                  [[False, False], [True, False]])


def test_instability_by_hand():
    correct = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 0, 1]], bool)  # p = 1, 2/3, 0, 2/3
    found = stats.instability(correct)
    assert (found.always_right, found.always_wrong, found.unstable) == (1, 1, 2)
    # sum p (1 - p) = 2 * 2/9; times K / (K - 1) = 3/2: 2/3; sqrt over N = 4
    assert found.independent_flip_std == pytest.approx(math.sqrt(2 / 3) / 4)
    assert stats.instability(np.ones((2, 5), bool)) == (5, 0, 0, 0.0)  # K = 2, all right: nothing flips


def test_observed_variance_is_flip_variance_plus_covariances():
    """s^2 of accuracy = the K/(K-1)-corrected independent-flip variance + the examples' summed covariance."""
    correct = np.random.default_rng(0).random((7, 30)) < np.linspace(0.05, 0.95, 30)
    observed = stats.sample_std(correct.mean(1)) ** 2
    covariance = np.cov(correct.T.astype(float))  # ddof = 1, between examples across runs
    cross = (covariance.sum() - np.trace(covariance)) / 30 ** 2
    assert observed == pytest.approx(stats.instability(correct).independent_flip_std ** 2 + cross, abs=1e-15)


def test_jaccard_and_its_chance_level():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([0, 1, 1, 0, 1], bool)
    assert stats.jaccard(a, b) == pytest.approx(2 / 4) and stats.jaccard(a, a) == 1.0
    assert stats.jaccard(a, ~a) == 0.0 and math.isnan(stats.jaccard(np.zeros(3, bool), np.zeros(3, bool)))
    assert stats.jaccard_if_independent(4, 5, 20) == pytest.approx(1 / 8)  # m = 4 * 5 / 20 = 1; 1 / (4 + 5 - 1)
    assert stats.jaccard_if_independent(7, 7, 7) == 1.0 and math.isnan(stats.jaccard_if_independent(0, 0, 9))
    draws = np.random.default_rng(1).random((2000, 2, 200)) < [[0.2], [0.3]]  # ~40 and ~60 of 200
    measured = np.mean([stats.jaccard(x, y) for x, y in draws])
    assert measured == pytest.approx(stats.jaccard_if_independent(40, 60, 200), rel=0.05)


def test_most_unstable_nearest_half_first():
    rates = np.array([1.0, 0.4, 0.5, 0.0, 0.6, 0.9, 0.2])
    assert stats.most_unstable(rates, 3).tolist() == [2, 1, 4]  # 0.4 and 0.6 tie: lower index first
    assert stats.most_unstable(rates, 8).tolist() == [2, 1, 4, 6, 5]  # never p = 0 or 1
    assert stats.most_unstable(np.ones(4), 8).tolist() == []
    # 200 rates at three distances from 1/2, in a shuffled order: a sort that is not stable mixes equal ones.
    ties = np.random.default_rng(0).choice([0.5, 0.375, 0.625, 0.25, 0.75], 200)  # exact in binary
    distance = np.abs(ties - 0.5)
    expected = [i for d in sorted(set(distance)) for i in np.flatnonzero(distance == d)]
    assert stats.most_unstable(ties, 200).tolist() == expected


@pytest.mark.parametrize("difference, correlation, n, expected", [
    (1.0, None, 17, 0.8070), (1.0, None, 16, 0.7814), (0.5, None, 64, 0.8015), (0.5, 0.5, 34, 0.8078)])
def test_power_known_values(difference, correlation, n, expected):
    """G*Power's values for Cohen's d = 1 and 0.5 (two-sided 5%); paired at r = 0.5 sigma_d = sigma."""
    assert stats.t_test_power(difference, 1.0, n, correlation) == pytest.approx(expected, abs=5e-4)


def test_power_by_simulation():
    """4000 simulated two-sample and paired t tests reject as often as the noncentral t says (+- 2 points)."""
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, (4000, 17))
    b = rng.normal(1.0, 1.0, (4000, 17))
    unpaired = np.mean(scipy_stats.ttest_ind(a, b, axis=1).pvalue < 0.05)
    assert unpaired == pytest.approx(stats.t_test_power(1.0, 1.0, 17), abs=0.02)
    shared = rng.normal(0.0, 1.0, (4000, 8))  # r = 0.64: each result = 0.8 shared + 0.6 own noise
    a = 0.8 * shared + 0.6 * rng.normal(0.0, 1.0, (4000, 8))
    b = 0.5 + 0.8 * shared + 0.6 * rng.normal(0.0, 1.0, (4000, 8))
    paired = np.mean(scipy_stats.ttest_rel(a, b, axis=1).pvalue < 0.05)
    assert paired == pytest.approx(stats.t_test_power(0.5, 1.0, 8, correlation=0.64), abs=0.02)


def power_by_integration(difference, std, n, correlation=None, level=0.95):
    """The two-sided t test's power from its definition: T = (Z + lambda) / sqrt(V / nu), Z normal,
    V ~ chi^2_nu, so given V both tails are normal: P(T > c) + P(T < -c) integrated over V."""
    spread = std * math.sqrt(2 * (1 - (correlation or 0.0)))
    dof = n - 1 if correlation is not None else 2 * (n - 1)
    noncentrality = difference * math.sqrt(n) / spread
    critical = scipy_stats.t.ppf((1 + level) / 2, dof)

    def given(v):
        scaled = critical * math.sqrt(v / dof)
        return (scipy_stats.norm.sf(scaled - noncentrality) + scipy_stats.norm.cdf(-scaled - noncentrality)) * (
            scipy_stats.chi2.pdf(v, dof))

    return integrate.quad(given, 0.0, np.inf)[0]


def test_power_counts_both_tails():
    """Where the lower tail is not negligible: no difference (the power is the test's size), a
    negative difference, and small effects at few seeds."""
    for n, r in ((2, None), (5, None), (30, 0.5)):
        assert stats.t_test_power(0.0, 1.0, n, r) == pytest.approx(0.05, abs=1e-12)
        assert stats.t_test_power(0.0, 1.0, n, r, level=0.9) == pytest.approx(0.10, abs=1e-12)
    assert stats.t_test_power(-1.0, 1.0, 17) == pytest.approx(0.8070, abs=5e-4)  # G*Power's d = 1, as for +1
    for difference, n, r in ((0.3, 3, None), (-0.3, 3, None), (0.2, 4, 0.5), (-0.7, 5, 0.0), (2.0, 2, None),
                             (-1.5, 3, 0.5)):
        assert stats.t_test_power(difference, 1.0, n, r) == pytest.approx(
            power_by_integration(difference, 1.0, n, r), abs=1e-8), (difference, n, r)


@pytest.mark.parametrize("power", [0.2, 0.5, 0.95])
def test_seeds_needed_is_the_fewest_at_any_power(power):
    """The first n of 2, 3, ... with the power: away from 80% the normal approximation's start can
    be above it (at low power the second tail it neglects helps), and must be stepped down."""
    for difference in (0.2, 0.5, 1.0):
        for correlation in (None, 0.5):
            for level in (0.95, 0.9):
                fewest = 2
                while stats.t_test_power(difference, 1.0, fewest, correlation, level) < power:
                    fewest += 1
                assert stats.seeds_needed(difference, 1.0, correlation, level, power) == fewest, (
                    difference, correlation, level)


def test_seeds_needed_known_values_and_minimal():
    assert stats.seeds_needed(0.5, 1.0) == 64 and stats.seeds_needed(1.0, 1.0) == 17
    assert stats.seeds_needed(0.5, 1.0, correlation=0.5) == 34
    for difference, std, r in ((0.001, 0.0006, None), (0.001, 0.0006, 0.84), (0.3, 0.2, None), (2.0, 0.5, 0.0)):
        n = stats.seeds_needed(difference, std, r)
        assert stats.t_test_power(difference, std, n, r) >= stats.POWER
        assert n == 2 or stats.t_test_power(difference, std, n - 1, r) < stats.POWER
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    many = stats.seeds_needed(0.01, 1.0)  # the t test's estimated variance costs at most a seed here
    assert many - math.ceil(2 * z ** 2 / 0.01 ** 2) in (0, 1)


def test_seeds_needed_edges():
    assert stats.seeds_needed(0.1, 0.0) == 2 and stats.seeds_needed(0.1, 1.0, correlation=1.0) == 2
    assert stats.seeds_needed(1e-6, 1.0) == math.inf and stats.seeds_needed(0.5, 1.0, max_seeds=50) == math.inf
    with pytest.raises(ValueError, match="must be > 0"):
        stats.seeds_needed(0.0, 1.0)


@pytest.mark.parametrize("n, correlation", [(2, None), (2, 0.8), (5, None), (10, 0.84), (64, None)])
def test_detectable_difference_inverts_seeds_needed(n, correlation):
    delta = stats.detectable_difference(0.003, n, correlation)
    assert stats.t_test_power(delta, 0.003, n, correlation) == pytest.approx(stats.POWER, abs=1e-9)
    assert stats.seeds_needed(delta * 1.001, 0.003, correlation) == n
    assert stats.detectable_difference(0.006, n, correlation) == pytest.approx(2 * delta)  # linear in sigma
    assert stats.detectable_difference(0.0, n, correlation) == 0.0


def test_detectable_difference_known_value():
    assert stats.detectable_difference(1.0, 64) == pytest.approx(0.4991, abs=5e-4)  # d = 0.5 needs 64 per arm


def test_probability_of_improvement_by_hand():
    a, b = [3, 2, 5, 1, 4, 4], [1, 2, 3, 2, 3, 4]  # wins 3, ties 2, losses 1
    p, low, high = stats.probability_of_improvement(a, b)
    assert p == pytest.approx(4 / 6)
    assert low == pytest.approx(0.1181, abs=1e-4)  # Clopper-Pearson's lower end at 3 of 6
    assert high == pytest.approx(0.975 ** (1 / 6))  # upper end at 5 of 6: x^6 = 0.975
    assert stats.probability_of_improvement(a, a) == (0.5, 0.0, 1.0)
    p, low, high = stats.probability_of_improvement([2] * 6, [1] * 6)
    assert (p, high) == (1.0, 1.0) and low == pytest.approx(0.025 ** (1 / 6))  # 0.54: six seeds are few
    p, low, high = stats.probability_of_improvement([1] * 6, [2] * 6)
    assert (p, low) == (0.0, 0.0) and high == pytest.approx(1 - 0.025 ** (1 / 6))


def clopper_pearson(successes, trials):
    return scipy_stats.binomtest(successes, trials).proportion_ci(0.95, method="exact")


def test_probability_of_improvement_is_clopper_pearsons_interval():
    """Each end, at every number of wins of K = 10 (no ties), is scipy's exact binomial interval:
    neither wider (which any coverage check at or above 95% would let pass) nor narrower."""
    for wins in range(11):
        p, low, high = stats.probability_of_improvement([1.0] * wins + [0.0] * (10 - wins), [0.5] * 10)
        expected = clopper_pearson(wins, 10)
        assert (p, low, high) == (wins / 10, pytest.approx(expected.low, abs=1e-12),
                                  pytest.approx(expected.high, abs=1e-12)), wins


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_probability_of_improvement_covers(p):
    """2000 simulated studies of K = 10 seed pairs: the interval covers P(A > B) as often as
    Clopper-Pearson's covers p at K = 10, computed exactly from the binomial distribution (~0.99:
    it is conservative), within 0.6 points (2.6 standard errors): more is an interval too wide,
    less one too narrow."""
    intervals = [clopper_pearson(wins, 10) for wins in range(11)]
    exact = sum(scipy_stats.binom.pmf(wins, 10, p) for wins, ci in enumerate(intervals) if ci.low <= p <= ci.high)
    assert exact >= 0.95
    rng = np.random.default_rng(3)
    shift = scipy_stats.norm.ppf(p)  # A - B ~ N(shift, 1): P(A > B) = p
    b = rng.normal(0.0, 1.0, (2000, 10))
    a = b + rng.normal(shift, 1.0, (2000, 10))
    covered = np.mean([low <= p <= high for _, low, high in map(stats.probability_of_improvement, a, b)])
    assert covered == pytest.approx(exact, abs=0.006)


def test_paired_comparison_on_fake_numbers():
    """B against A on the same seeds: the paired mean difference, P(B > A), and an interval narrower than unpaired."""
    a = np.array([0.980, 0.982, 0.979, 0.985, 0.981, 0.983])
    b = a + np.array([0.002, 0.001, 0.003, -0.001, 0.002, 0.002])
    found = stats.paired_comparison(a, b)
    assert found["paired"]["mean"] == pytest.approx(0.0015)
    interval = clopper_pearson(5, 6)  # B > A on 5 of the 6 seeds
    assert found["paired"]["improvement"] == (pytest.approx(5 / 6), pytest.approx(interval.low),
                                              pytest.approx(interval.high))
    assert "improvement" not in found["unpaired"]
    assert found["paired"]["mean_ci"][1] - found["paired"]["mean_ci"][0] < (
        found["unpaired"]["mean_ci"][1] - found["unpaired"]["mean_ci"][0])  # pairing removes the shared part


def fewest_seeds(half_width, sd, dof_per_seed, limit=10_000):
    """seeds_for_width by counting up from n = 2: the first n whose t interval is narrow enough."""
    for n in range(2, limit):
        if scipy_stats.t.ppf(0.975, (n - 1) * dof_per_seed) * sd / math.sqrt(n) <= half_width:
            return n
    return math.inf


@pytest.mark.parametrize("half_width, sd, dof_per_seed", [(1.0, 1.0, 1.0), (0.3, 1.0, 1.0), (0.3, 1.0, 1.7),
                                                          (0.05, 0.2, 2.0), (2.0, 1.0, 1.0), (0.5, 3.0, 1.2),
                                                          (10.0, 1.0, 1.0)])  # two seeds, the fewest with a spread
def test_seeds_for_width_is_the_fewest_seeds_that_reach_the_width(half_width, sd, dof_per_seed):
    assert stats.seeds_for_width(half_width, sd, dof_per_seed) == fewest_seeds(half_width, sd, dof_per_seed)


def test_a_width_reached_exactly_needs_no_more_seeds():
    width = scipy_stats.t.ppf(0.975, 6) * 0.7 / math.sqrt(7)  # the t interval of 7 seeds, to the last bit
    assert stats.seeds_for_width(width, 0.7, 1.0) == 7


def test_seeds_for_width_gives_up_beyond_its_cap():
    assert stats.seeds_for_width(1e-4, 1.0, 1.0) == math.inf  # ~1.5e9 seeds
    n = stats.seeds_for_width(0.003, 1.0, 1.0)  # ~427,000: the bound, without counting up to it

    def half_width(n):
        return scipy_stats.t.ppf(0.975, n - 1) / math.sqrt(n)

    assert half_width(n) <= 0.003 < half_width(n - 1)


@pytest.mark.parametrize("swap", [False, True])  # the wider spread in A, then in B
def test_paired_comparison_against_a_hand_computation(swap):
    """Every number of both designs from its formula: t and chi-square quantiles, Welch's degrees of freedom,
    the seeds each design needs counted up one by one, the correlation."""
    a = np.array([0.61, 0.70, 0.52, 0.66, 0.58])
    b = np.array([0.66, 0.71, 0.60, 0.69, 0.57])
    if swap:
        a, b = b, a
    found = stats.paired_comparison(a, b)
    d, k = b - a, 5
    var_a, var_b = np.var(a, ddof=1), np.var(b, ddof=1)
    welch = (var_a + var_b) ** 2 / (var_a ** 2 + var_b ** 2)
    for design, sd, dof_per_seed in (("paired", np.std(d, ddof=1), 1.0), ("unpaired", np.sqrt(var_a + var_b), welch)):
        got, dof = found[design], (k - 1) * dof_per_seed
        t = scipy_stats.t.ppf(0.975, dof)
        assert got["mean"] == pytest.approx(d.mean()) and got["sd"] == pytest.approx(sd)
        assert got["dof"] == pytest.approx(dof)
        assert got["mean_ci"] == (pytest.approx(d.mean() - t * sd / np.sqrt(k)),
                                  pytest.approx(d.mean() + t * sd / np.sqrt(k)))
        assert got["sd_ci"] == (pytest.approx(sd * np.sqrt(dof / scipy_stats.chi2.ppf(0.975, dof))),
                                pytest.approx(sd * np.sqrt(dof / scipy_stats.chi2.ppf(0.025, dof))))
        assert got["seeds_to_exclude_zero"] == fewest_seeds(abs(d.mean()), sd, dof_per_seed)
    assert 1 < welch < 2 and found["paired"]["improvement"][0] == pytest.approx(1 / 5 if swap else 4 / 5)
    paired_half = scipy_stats.t.ppf(0.975, k - 1) * np.std(d, ddof=1) / np.sqrt(k)
    assert found["unpaired_seeds_to_match"] == fewest_seeds(paired_half, np.sqrt(var_a + var_b), welch)
    assert found["correlation"] == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_paired_comparison_of_constant_or_equal_runs():
    """No spread in A or B: no correlation (and no warning of a division by zero) and one degree of freedom per
    seed; no difference: no n excludes zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in (([1.0, 2.0, 4.0], [3.0, 3.0, 3.0]), ([3.0, 3.0, 3.0], [1.0, 2.0, 4.0])):
            assert math.isnan(stats.paired_comparison(a, b)["correlation"])
    found = stats.paired_comparison([1.0, 1.0, 1.0], [1.0, 2.0, 4.0])
    assert math.isnan(found["correlation"]) and found["unpaired"]["dof"] == pytest.approx(2 * 1.0)
    found = stats.paired_comparison([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    assert found["paired"]["seeds_to_exclude_zero"] == math.inf == found["unpaired"]["seeds_to_exclude_zero"]
    assert found["paired"]["mean"] == 0.0 and found["correlation"] == pytest.approx(1.0)
    found = stats.paired_comparison([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert found["unpaired"]["dof"] == pytest.approx(2.0) and math.isnan(found["correlation"])


def test_loss_instability_against_a_hand_computation():
    losses = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]])  # K = 2 runs, N = 3 examples
    spread = stats.loss_instability(losses)
    per_example = np.array([np.sqrt(2.0), 0.0, np.sqrt(2.0)])  # ddof = 1
    assert spread.example_loss_std == pytest.approx(per_example.mean())
    assert spread.independent_loss_std == pytest.approx(np.sqrt(np.sum(per_example**2)) / 3)
    # Independent examples: the observed std of the mean loss matches the prediction on average.
    rng = np.random.default_rng(0)
    predicted, observed = [], []
    for _ in range(200):
        runs = rng.normal(size=(10, 400)) * rng.uniform(0.5, 2.0, 400)
        predicted.append(stats.loss_instability(runs).independent_loss_std)
        observed.append(stats.sample_std(runs.mean(1)) ** 2)
    assert np.sqrt(np.mean(observed)) == pytest.approx(np.mean(predicted), rel=0.1)


def test_seeds_needed_finds_an_answer_below_the_cap_when_the_approximation_overshoots_it():
    """The normal approximation asks for more than max_seeds here, but 31 seeds reach the power."""
    assert stats.seeds_needed(0.2, 1.0, level=0.9, power=0.2, max_seeds=32) == 31
    assert stats.seeds_needed(0.2, 1.0, level=0.9, power=0.2, max_seeds=30) == math.inf


def test_sample_std_is_float64_and_exact_for_columns_far_apart():
    """The std of each column, in float64 whatever the input's dtype: each column is shifted by its own
    first value (one shift for the whole array would cost a column near 1 every digit beside one near 1e9)."""
    values = np.array([[1e9, 1.0], [1e9 + 1, 1.0 + 1e-9], [1e9 + 2, 1.0 + 2e-9]])
    np.testing.assert_allclose(stats.sample_std(values, axis=0), [1.0, 1e-9], rtol=1e-6)
    low = np.array([0.1, 0.2, 0.7], np.float32)
    assert stats.sample_std(low).dtype == np.float64
    assert stats.sample_std(low) == np.std(low.astype(np.float64) - np.float64(low[0]), ddof=1)


def test_separated_pairs_only_where_intervals_do_not_touch():
    rows = [{"group": "init", "loss_std_ci": (0.5, 0.9)}, {"group": "shuffle", "loss_std_ci": (0.1, 0.4)},
            {"group": "dropout", "loss_std_ci": (0.1, 0.5)},  # touches init's interval: not separated
            {"group": "none", "loss_std_ci": (0.0, 0.0)}]  # the determinism control: never ranked
    assert stats.separated_pairs(rows, "loss") == [("init", "shuffle")]


def test_ensemble_accuracy_of_averaged_probabilities():
    probabilities = np.array([[[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]],
                              [[0.2, 0.8], [0.3, 0.7], [0.1, 0.9]]])  # means: class 0 (0.55), 1, 1
    assert stats.ensemble_accuracy(probabilities, np.array([0, 0, 1])) == 2 / 3


def test_jaccard_of_masks():
    assert stats.jaccard(np.array([2, 0, 1]), np.array([1, 1, 0])) == 1 / 3  # truthy values are members
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both empty: nan, without dividing by zero
        assert math.isnan(stats.jaccard(np.zeros(3, bool), np.zeros(3, bool)))


@pytest.mark.parametrize("correlation", [None, 0.5])
@pytest.mark.parametrize("power", [0.1, 0.5, 0.8])
def test_detectable_difference_has_the_power_asked(correlation, power):
    """At sigma = 1 and r = 0.5 one difference's std is exactly 1; at power 0.1 lambda* is below 1."""
    for n in (2, 5, 30):
        delta = stats.detectable_difference(1.0, n, correlation, power=power)
        assert stats.t_test_power(delta, 1.0, n, correlation) == pytest.approx(power, abs=1e-9)


def test_a_training_run_does_not_import_scipy():
    """scipy takes ~0.8 s to import: the CLI's start-up leaves it to the statistics that use it."""
    import subprocess
    import sys

    check = "import sys, jaxseed.train; sys.exit('scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
