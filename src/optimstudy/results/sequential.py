"""A verdict that may look again after every seed: the sequential signed-rank test of a paired design.

    from optimstudy.results import sequential
    sequential.test([0.3, 0.1, 0.4, 0.2, 0.5, 0.6, 0.2, 0.3, 0.4], horizon=20)   # differences a - b, in seed order
    # {'p_value': 0.0495, 'sign': 1, 'pairs': 9}: b better (a - b > 0, where lower is better)

Why this test (measured by optimstudy.results.calibration, numbers in docs/results.md):
- Seeds are added until a pair is decided (`optimstudy sweep --until-decided`), so the data decide
  when to stop. A fixed-sample test looked at after every round says "better" far more often than
  5% under no difference. This test is built for it: its p-value is the chance, with no difference,
  that the statistic would *ever* reach what was seen, at any look up to `horizon` seeds. Stopping
  at any look for any reason (decided, a time budget, Ctrl-C, a pair left while others run on)
  keeps the error at or under 5%, with Holm over a problem's pairs on top.
- The statistic is Wilcoxon's signed rank of the paired differences, standardized at each look and
  weighted by (look / horizon) ** SHAPE: a boundary between Pocock's (flat: early stops) and
  O'Brien-Fleming's (steep: the fixed design's power at the end). With no difference the two runs of
  a seed are exchangeable: the signs are fair coins and the ranks a random order whatever the noise
  is, so the null distribution is one simulation per horizon (NULL_PATHS paths, cached).
- A diverged seed (inf) is the worst value of its side: the largest difference, with no arithmetic
  on infinity. A seed where both diverged, or both are equal, has no sign: it counts as a look and
  adds nothing (Pratt's zeros).
numpy and scipy.
"""
from functools import lru_cache

import numpy as np

from optimstudy.results.distributions import noncentral_t_survival, t_quantile

SHAPE = 0.25  # the boundary's shape: 0 is Pocock's, 0.5 O'Brien-Fleming's (chosen in docs/results.md)
FIRST_LOOK = 3  # fewer paired seeds never decide (comparison.MIN_SEEDS)
NULL_PATHS = 50_000  # simulated null paths per horizon: a p-value's resolution is 1 / NULL_PATHS
HORIZON = 20  # [decide] max_seeds' default
DESIGN_METRIC = "decide_max_seeds"  # logged on a sweep's parent run with its design (tag optimstudy.decide)


def weighted_paths(differences) -> tuple[np.ndarray, np.ndarray]:
    """(weighted |statistic|, its sign) after each look, along the last axis (seeds in order; NaN and
    0: no sign). The statistic is W_t / sqrt(sum of squared ranks of the signed seeds): exact given the
    magnitudes, mid-ranks for ties (several diverged seeds)."""
    d = np.asarray(differences, dtype=float)
    sign = np.sign(np.nan_to_num(d, nan=0.0))
    magnitude = np.abs(np.nan_to_num(d, nan=0.0))
    looks = d.shape[-1]
    statistic = np.zeros(d.shape)
    for t in range(1, looks + 1):
        m = magnitude[..., :t]
        ranks = (m[..., :, None] > m[..., None, :]).sum(-1) + ((m[..., :, None] == m[..., None, :]).sum(-1) + 1) / 2
        scale = np.sqrt((sign[..., :t] ** 2 * ranks ** 2).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            statistic[..., t - 1] = np.where(scale > 0, (sign[..., :t] * ranks).sum(-1) / scale, 0.0)
    return np.abs(statistic), np.sign(statistic)


def weights(looks: int, horizon: int) -> np.ndarray:
    t = np.arange(1, looks + 1)
    return np.where(t >= FIRST_LOOK, (t / max(horizon, looks)) ** SHAPE, 0.0)


@lru_cache(maxsize=16)
def null_maxima(horizon: int) -> np.ndarray:
    """Sorted maxima over looks 1..horizon of the weighted |statistic| with no difference (no ties): the
    new seed lifts the rank of every earlier one it is smaller than, so each look costs O(horizon)."""
    rng = np.random.default_rng(horizon)
    signs = rng.choice([-1.0, 1.0], size=(NULL_PATHS, horizon))
    magnitude = rng.random((NULL_PATHS, horizon))
    w = weights(horizon, horizon)
    statistic, best = np.zeros(NULL_PATHS), np.zeros(NULL_PATHS)
    for t in range(horizon):
        x = magnitude[:, t:t + 1]
        statistic += (signs[:, :t] * (x < magnitude[:, :t])).sum(1) + signs[:, t] * (1 + (magnitude[:, :t] < x).sum(1))
        n = t + 1
        best = np.maximum(best, w[t] * np.abs(statistic) / np.sqrt(n * (n + 1) * (2 * n + 1) / 6))
    return np.sort(best)


def pvalues(maxima, horizon: int) -> np.ndarray:
    """The chance, with no difference, that the weighted statistic ever reaches `maxima` within `horizon`."""
    null = null_maxima(horizon)
    exceed = len(null) - np.searchsorted(null, np.asarray(maxima, dtype=float) - 1e-12, side="left")
    return (exceed + 1) / (len(null) + 1)


def test(differences, horizon: int = HORIZON) -> dict:
    """p-value over every look so far, and the sign of the difference where the evidence peaked
    (+1: the first side worse, -1: better, 0: none); `pairs`: the seeds with a sign."""
    d = np.asarray(differences, dtype=float)
    signed = int(np.count_nonzero(np.nan_to_num(d, nan=0.0)))
    if len(d) < FIRST_LOOK or signed == 0:
        return {"p_value": np.nan, "sign": 0, "pairs": signed}
    horizon = max(horizon, len(d))
    size, sign = weighted_paths(d)
    weighted = weights(len(d), horizon) * size
    peak = int(weighted.argmax())
    return {"p_value": float(pvalues(weighted[peak], horizon)), "sign": int(sign[peak]), "pairs": signed}


def sequential_designs(frame) -> dict:
    """experiment -> max_seeds, from the DESIGN_METRIC point a sweep's parent run carries once its seeds
    are added until decided (the tidy frame of tracking.reader.load_runs)."""
    if frame.empty or "metric" not in frame:
        return {}
    points = frame.loc[frame["metric"].astype(object) == DESIGN_METRIC, ["experiment", "value"]]
    return {str(experiment): int(value) for experiment, value in points.itertuples(index=False)}



def out_of_reach(mean, spread, seeds, alpha: float, budget: int, power: float = 0.8):
    """Whether a pair is judged unreachable within its budget: even a difference at the top of the 80%
    interval the `seeds` so far allow (mean and spread of the finite differences) would be found by a
    paired t-test on `budget` seeds less than `power` of the time. Arrays welcome. Stopping a pair
    never makes a verdict wrong: it only gives up on deciding it."""
    mean, spread, seeds = (np.asarray(x, dtype=float) for x in (mean, spread, seeds))
    with np.errstate(invalid="ignore", divide="ignore"):
        top = np.abs(mean) + t_quantile(0.9, seeds - 1) * spread / np.sqrt(seeds)
        found = noncentral_t_survival(t_quantile(1 - alpha / 2, budget - 1), budget - 1, top / spread * np.sqrt(budget))
    return (seeds >= 2) & (spread > 0) & (found < power)
