"""results/distributions.py gives scipy.stats' numbers without importing it, over grids of inputs."""
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from optimstudy.results import comparison, distributions

RNG = np.random.default_rng(7)
PROBABILITIES = np.array([1e-6, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 1 - 1e-6])


def test_the_quantiles_and_tails_equal_scipy_stats():
    freedom = np.array([1, 2, 3, 4, 5, 9, 19, 50, 199, 9_999])[:, None]
    assert distributions.t_quantile(PROBABILITIES, freedom) == pytest.approx(stats.t.ppf(PROBABILITIES, freedom),
                                                                             rel=1e-12)
    assert distributions.normal_quantile(PROBABILITIES) == pytest.approx(stats.norm.ppf(PROBABILITIES), rel=1e-12)
    trials, successes = np.tril_indices(300)  # 0 <= successes <= trials
    assert distributions.binomial_cdf(successes, trials, 0.5) == pytest.approx(
        stats.binom.cdf(successes, trials, 0.5), rel=1e-12, abs=1e-300)
    for low, high, shifts in ((-2, 8, 12), (-5, 40, 60), (-40, 40, 40), (1.5, 3, 200)):  # the last: as the verdicts
        x, shift = RNG.uniform(low, high, 5_000), RNG.uniform(0, shifts, 5_000)
        freedom = RNG.integers(1, 10_000, 5_000)
        tail = distributions.noncentral_t_survival(x, freedom, shift)
        assert not np.isnan(tail).any() and np.abs(tail - stats.nct.sf(x, freedom, shift)).max() < 1e-13


@pytest.mark.parametrize("ties", [False, True])
def test_ranks_trimmed_means_and_the_normal_rank_test_equal_scipy_stats(ties):
    for size in (1, 2, 3, 7, 20, 101):
        for _ in range(30):
            values = RNG.normal(size=size)
            if ties:
                values = np.round(values, 0)
                values[RNG.random(size) < 0.2] = np.inf  # diverged seeds: the worst value, tied
            assert np.array_equal(distributions.average_ranks(values), stats.rankdata(values))
            if np.isfinite(values).all():
                assert distributions.trimmed_mean(values, 0.25) == pytest.approx(stats.trim_mean(values, 0.25))
            other = RNG.normal(0.5, size=size + 3)
            if ties:
                other = np.round(other, 0)
            expected = stats.mannwhitneyu(values, other, alternative="two-sided", method="asymptotic").pvalue
            assert distributions.mann_whitney_normal_p(values, other) == pytest.approx(expected, rel=1e-12)


def test_the_verdicts_rules_that_use_them_give_scipys_answers():
    """The order-statistic interval, the seeds needed and the rank test as scipy.stats would give them."""
    for n in range(2, 300):
        q = (1 - comparison.CONFIDENCE) / 2
        k = int(stats.binom.ppf(q, n, 0.5))
        k -= stats.binom.cdf(k, n, 0.5) > q
        values = np.arange(n, dtype=float)
        low, high, kind = comparison.median_interval(values)
        assert (low, high, kind) == ((values[k], values[n - 1 - k], "order") if k >= 0 else (0, n - 1, "range"))
    for effect in np.geomspace(0.05, 20, 400):
        for paired in (True, False):
            found = comparison._seeds_for_power(effect, 0.05, 0.8, paired)
            guess = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / effect) ** 2 * (1 if paired else 2)
            n = np.arange(max(comparison.MIN_SEEDS, int(guess) - 2), min(comparison.MOST_SEEDS, int(guess) + 40) + 1)
            freedom, shift = (n - 1, effect * np.sqrt(n)) if paired else (2 * n - 2, effect * np.sqrt(n / 2))
            reached = stats.nct.sf(stats.t.ppf(0.975, freedom), freedom, shift) >= 0.8
            assert found == (float(n[reached.argmax()]) if guess <= comparison.MOST_SEEDS and reached.any()
                             else pytest.approx(np.nan, nan_ok=True))
    many, more = RNG.normal(size=12), RNG.normal(0.8, size=11)  # past comparison.PERMUTATIONS splits
    assert comparison.rank_test_pvalue(many, more) == pytest.approx(
        stats.mannwhitneyu(many, more, alternative="two-sided", method="asymptotic").pvalue, rel=1e-12)


def test_computing_a_verdict_does_not_import_scipy_stats():
    """A sweep's end and a report compute verdicts in a fresh process; scipy.stats is the simulations' alone."""
    code = ("import sys; from optimstudy.results import Study, comparison; "
            "comparison.compare({s: 0.1 * s for s in range(12)}, {s: 0.2 + 0.1 * s for s in range(3, 15)}, 'minimize', "
            "('a', 'b')); print('scipy.stats' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False", found.stderr
