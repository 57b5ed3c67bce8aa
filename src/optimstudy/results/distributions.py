"""The distribution functions and rank helpers the verdicts use, from numpy and scipy.special only.

    from optimstudy.results.distributions import t_quantile, average_ranks
    t_quantile(0.975, 4)                # 2.776...: as scipy.stats.t.ppf(0.975, 4)
    average_ranks([0.3, 0.1, 0.3])      # [2.5, 1.0, 2.5]: as scipy.stats.rankdata

Each is the scipy.special function that scipy.stats calls underneath, or a few lines of numpy that
give scipy.stats' result (tests/results/test_distributions.py compares them over grids). Why not
scipy.stats itself: every sweep and report computes its verdicts in a fresh process, and importing
scipy.stats there costs more than the verdicts (docs/performance.md). The simulations of
results/calibration.py still use scipy.stats.
"""
import numpy as np
from scipy import special


def t_quantile(probability, freedom):
    """Student's t quantile: scipy.stats.t.ppf(probability, freedom)."""
    return special.stdtrit(freedom, probability)


def normal_quantile(probability):
    """The standard normal quantile: scipy.stats.norm.ppf(probability)."""
    return special.ndtri(probability)


def binomial_cdf(successes, trials, chance):
    """P(Binomial(trials, chance) <= successes), for 0 <= successes <= trials: scipy.stats.binom.cdf."""
    return special.bdtr(successes, trials, chance)


def noncentral_t_survival(x, freedom, noncentrality):
    """P(T > x) for a noncentral t: scipy.stats.nct.sf."""
    x, noncentrality = np.asarray(x, dtype=float), np.asarray(noncentrality, dtype=float)
    tail = special.nctdtr(freedom, -noncentrality, -x)  # P(-T < -x): exact where it is small
    with np.errstate(invalid="ignore"):
        tail = np.where(np.isnan(tail), 1.0 - special.nctdtr(freedom, noncentrality, x), tail)
    # still NaN only many deviations below the mean (scipy.special gives up there): the tail is 1
    return np.clip(np.where(np.isnan(tail), np.where(x < noncentrality, 1.0, 0.0), tail), 0.0, 1.0)


def average_ranks(values) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank, infinities ranked last or first: scipy.stats.rankdata."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each run of equal values starts
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # the mean of ranks start+1 .. end
    return ranks


def trimmed_mean(values, proportion: float) -> float:
    """The mean after cutting `proportion` of the values from each end: scipy.stats.trim_mean."""
    ordered = np.sort(np.asarray(values, dtype=float))
    cut = int(proportion * len(ordered))
    return float(ordered[cut:len(ordered) - cut].mean())


def mann_whitney_normal_p(a, b) -> float:
    """Two-sided Mann-Whitney p-value by the normal approximation, with the tie and continuity
    corrections: scipy.stats.mannwhitneyu(a, b, method="asymptotic").pvalue."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = len(a), len(b)
    pooled = np.concatenate([a, b])
    _, ties = np.unique(pooled, return_counts=True)
    u1 = average_ranks(pooled)[:n1].sum() - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    total = n1 + n2
    spread = np.sqrt(n1 * n2 / 12 * ((total + 1) - (ties ** 3 - ties).sum() / (total * (total - 1))))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n2 / 2 - 0.5) / spread
    return float(min(1.0, 2 * special.ndtr(-z)))
