"""Statistics over seeds for results/rankings.py: is a difference between two optimizers real?

    from optimstudy.results import comparison
    comparison.mean_interval([0.91, 0.93, 0.92])    # Student t 95% interval of the mean over seeds
    comparison.compare({0: 0.10, 1: 0.12, 2: 0.11}, {0: 0.30, 1: 0.31, 2: 0.29}, "minimize")

Why these tests (measured by optimstudy.results.calibration, numbers in docs/results.md):
- Same seeds on both sides, every seed finite: a paired t-test on the per-seed differences. Under
  a true null the difference of two runs with one noise distribution is symmetric, and the t-test
  then says "better" at most 5% of the time (within simulation error) at 3 to 20 seeds, for normal,
  t(3) and lognormal noise. The percentile bootstrap it replaces said "better" 28% of the time at 3
  seeds (its interval is the min..max of three differences) and 11% at 10 (normal noise).
- Different seeds, or a diverged seed (its value is infinite): the Mann-Whitney rank test, exact
  (every split of the values enumerated, ties included) up to PERMUTATIONS splits. A rank test
  cannot decide with few seeds: with 3 and 3 its smallest p is 0.1, and the verdict says so.
- Per problem and setting, every pair is one family: Holm's step-down adjustment keeps the chance
  of any false "better" among all its pairs at 5% (Holm 1979).
- Values that do not vary over seeds (identical runs) give no verdict: they say nothing about noise.
Across problems and configurations (IQM, probability of improvement, performance profiles,
tuning budgets): aggregates.py.
numpy, pandas and scipy (which MLflow installs) only.
"""
import itertools
import math

import numpy as np
import pandas as pd
from scipy import special, stats

ALPHA, CONFIDENCE, SEED = 0.05, 0.95, 0
MIN_SEEDS = 3  # fewer seeds never decide a verdict
PERMUTATIONS = 50_000  # splits of the values the rank test enumerates exactly (8 and 8 seeds: 12,870)
SAME = 1e-9  # values within this share of their magnitude did not vary


def median_or_nan(values) -> float:
    """Median over seeds where a miss (inf) counts as infinitely slow; NaN when that median is a miss."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return np.nan
    median = float(np.median(values))
    return median if np.isfinite(median) else np.nan


# ---- intervals over seeds ---------------------------------------------------------------------

def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """(low, high, kind) over the finite values: Student's t interval of the mean from 3 values on
    (kind "t"); with 2 values their range (kind "range"), never called a confidence interval."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return np.nan, np.nan, ""
    if len(values) < MIN_SEEDS:
        return float(values.min()), float(values.max()), "range"
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half), "t"


def median_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """(low, high, kind) of the median, inf allowed (a seed that never reached a target): the
    distribution-free order-statistic interval (kind "order"; covers the median at least
    `confidence` of the time), which needs 6 values at 95%; with fewer, the range (kind "range")."""
    values = np.sort(np.asarray(values, dtype=float))
    values = values[~np.isnan(values)]
    n = len(values)
    if n < 2:
        return np.nan, np.nan, ""
    k = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))  # P(Binomial(n, 1/2) < k) <= 2.5%
    if stats.binom.cdf(k, n, 0.5) > (1 - confidence) / 2:
        k -= 1
    if k < 0:
        return float(values[0]), float(values[-1]), "range"
    return float(values[k]), float(values[n - 1 - k]), "order"


# ---- one pair --------------------------------------------------------------------------------

def paired_t_pvalues(differences) -> np.ndarray:
    """Two-sided paired t-test p-values along the last axis (NaN where the differences do not vary)."""
    differences = np.asarray(differences, dtype=float)
    n = differences.shape[-1]
    spread = differences.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = differences.mean(axis=-1) / (spread / math.sqrt(n))
        return np.where(spread > 0, 2 * special.stdtr(n - 1, -np.abs(t)), np.nan)


def smallest_rank_p(n: int, m: int) -> float:
    """The smallest two-sided p-value a rank test of n against m values can give (no ties)."""
    return min(1.0, 2 / math.comb(n + m, n)) if n and m else 1.0


def rank_test_pvalue(a, b) -> float:
    """Two-sided Mann-Whitney p-value of a against b (inf allowed, ties included): exact over every
    split of the pooled values up to PERMUTATIONS splits; beyond, the normal approximation with
    scipy's tie correction, accurate at that size (10 and 10 values and up)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n, total = len(a), len(a) + len(b)
    if math.comb(total, n) > PERMUTATIONS:
        return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue)
    pooled = stats.rankdata(np.concatenate([a, b]))
    center = n * (total + 1) / 2  # the rank sum of a under the null
    picks = np.array(list(itertools.combinations(range(total), n)))
    sums = pooled[picks].sum(axis=1)
    return float(np.mean(np.abs(sums - center) >= abs(pooled[:n].sum() - center) - 1e-9))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis (one family per row); NaN stays NaN
    and does not count as a test."""
    p_values = np.asarray(p_values, dtype=float)
    tested = ~np.isnan(p_values)
    m = tested.sum(axis=-1, keepdims=True)
    order = np.argsort(np.where(tested, p_values, np.inf), axis=-1, kind="stable")
    ranked = np.take_along_axis(p_values, order, axis=-1)
    step = np.arange(p_values.shape[-1])
    scaled = np.where(step < m, np.minimum(1.0, (m - step) * ranked), np.nan)
    running = np.fmax.accumulate(np.where(np.isnan(scaled), -np.inf, scaled), axis=-1)
    adjusted = np.empty_like(p_values)
    np.put_along_axis(adjusted, order, np.where(step < m, running, np.nan), axis=-1)
    return adjusted


def _same(values) -> bool:
    values = np.asarray(values, dtype=float)
    if not len(values) or not np.isfinite(values).all():
        return len(values) > 0 and bool((values == values[0]).all())
    return float(np.ptp(values)) <= SAME * max(float(np.abs(values).max()), 1e-300)


def compare(a: dict, b: dict, direction: str, names=("A", "B"), pairs: int = 1) -> dict:
    """One pair's test from its objective per seed ({seed: value}; inf = diverged), before the
    family's Holm adjustment (decide() applies it); `pairs` (the family's size) only scales the
    seeds a decision would need."""
    sign = 1.0 if direction == "minimize" else -1.0  # in "badness": lower is better
    values_a = np.array([a[s] for s in sorted(a)], dtype=float) * sign
    values_b = np.array([b[s] for s in sorted(b)], dtype=float) * sign
    seeds, paired = min(len(a), len(b)), set(a) == set(b)
    finite = np.isfinite(values_a).all() and np.isfinite(values_b).all()
    result = {"seeds": seeds, "seeds_a": len(a), "seeds_b": len(b), "test": "", "outcome": "", "difference": np.nan,
              "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "seeds_needed": np.nan, "better": ""}
    if seeds < 2 or len(a) + len(b) < 4:
        return {**result, "outcome": "too few seeds", "seeds_needed": MIN_SEEDS}
    threshold = ALPHA / pairs  # Holm's first step: what the clearest pair of the family must beat
    if paired and finite:
        differences = values_a - np.array([b[s] for s in sorted(a)], dtype=float) * sign
        if _same(differences) or (_same(values_a) and _same(values_b)):
            return {**result, "test": "paired t-test", "outcome": "no variation",
                    "difference": sign * float(differences.mean())}
        mean, spread = float(differences.mean()), float(differences.std(ddof=1))
        low, high, _ = mean_interval(differences)
        p = float(paired_t_pvalues(differences))
        result.update(test="paired t-test", difference=sign * mean, p_value=p,
                      ci_low=sign * (low if sign > 0 else high), ci_high=sign * (high if sign > 0 else low),
                      seeds_needed=_paired_seeds_needed(mean, spread, threshold))
    else:
        if _same(values_a) and _same(values_b):
            return {**result, "test": "Mann-Whitney", "outcome": "no variation"}
        both = np.concatenate([values_a, values_b])
        mean = float(np.median(values_a) - np.median(values_b)) if np.isfinite(both).all() else (
            -math.inf if np.mean(np.isfinite(values_a)) > np.mean(np.isfinite(values_b)) else math.inf)
        result.update(test="Mann-Whitney", difference=sign * mean, p_value=rank_test_pvalue(values_a, values_b))
        if smallest_rank_p(len(a), len(b)) >= threshold:
            result["outcome"] = "undecidable"
        if np.isfinite(both).all():
            spread = math.sqrt((np.var(values_a, ddof=1) + np.var(values_b, ddof=1)) / 2)
            result["seeds_needed"] = _unpaired_seeds_needed(mean, spread, threshold)
    result["better"] = names[0] if mean < 0 else names[1]
    return result


def _paired_seeds_needed(mean: float, spread: float, alpha: float) -> float:
    """The fewest seeds at which a paired t-test would reach `alpha` at this mean and spread."""
    if mean == 0 or not np.isfinite(spread):
        return np.nan
    n = np.arange(MIN_SEEDS, 10_001)
    reached = stats.t.ppf(1 - alpha / 2, n - 1) * spread / np.sqrt(n) < abs(mean)
    return float(n[reached.argmax()]) if reached.any() else np.nan


def _unpaired_seeds_needed(mean: float, spread: float, alpha: float) -> float:
    """Seeds per side at which two groups this far apart separate by t, and a rank test can reach alpha."""
    if mean == 0 or not np.isfinite(mean) or not np.isfinite(spread):
        return np.nan
    n = np.arange(MIN_SEEDS, 10_001)
    reached = stats.t.ppf(1 - alpha / 2, 2 * n - 2) * spread * np.sqrt(2 / n) < abs(mean)
    if not reached.any():
        return np.nan
    ranks_can = next(k for k in itertools.count(MIN_SEEDS) if smallest_rank_p(k, k) < alpha)
    return float(max(n[reached.argmax()], ranks_can))


# ---- a family of pairs -----------------------------------------------------------------------

def decide(family: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust one family's p-values (all pairs of one problem and setting) and word each verdict."""
    family = family.copy()
    family["pairs"] = int(family["p_value"].notna().sum())
    family["p_holm"] = holm(family["p_value"].to_numpy())
    family["decided"] = (family["p_holm"] < alpha) & (family["seeds"] >= MIN_SEEDS) & (family["outcome"] == "")
    family["outcome"] = np.where(family["decided"], "better", family["outcome"].replace("", "not distinguishable"))
    words = {"better": "{better} better", "no variation": "no variation: the seeds did not change the result",
             "undecidable": "undecidable with {seeds_a} and {seeds_b} seeds",
             "not distinguishable": "not distinguishable with {seeds} seeds",
             "too few seeds": "not distinguishable with {seeds} seeds"}
    family["verdict"] = [words[row["outcome"]].format(**row).replace("with 1 seeds", "with 1 seed")
                         for row in family.to_dict("records")]
    return family


def evidence(row, vary: str = "") -> str:
    """Why a verdict says what it says, in one line (the page's and the parent run's wording)."""
    varied = f"seeds vary {vary.replace(',', ', ')}" if vary else ""
    if row["outcome"] == "no variation":
        missing = [part for part in ("init", "data") if part not in vary.split(",")]
        advice = (f"vary the {' and the '.join({'init': 'initialisation', 'data': 'data split'}[p] for p in missing)} "
                  f"(vary = [\"init\", \"order\", \"data\"])" if missing else
                  "the two give the same result on every seed: they may be the same computation")
        return f"every seed gave the same difference: no evidence about noise ({varied}); {advice}"
    if row["outcome"] == "too few seeds":
        return f"{MIN_SEEDS} seeds per side are needed for a verdict"
    if row["outcome"] == "undecidable":
        smallest = smallest_rank_p(int(row["seeds_a"]), int(row["seeds_b"]))
        return (f"a rank test of {row['seeds_a']} against {row['seeds_b']} seeds can never reach p < "
                f"{ALPHA / max(int(row['pairs']), 1):.2g} (its smallest p is {smallest:.2g}): run more seeds")
    parts = [f"{row['test']} p = {row['p_value']:.2g}"]
    if row["pairs"] > 1:
        parts.append(f"Holm-adjusted {row['p_holm']:.2g} over {row['pairs']} pairs")
    if varied:
        parts.append(varied)
    if row.get("tested_on") == "confirmation":
        parts.append("on the confirmation seeds")
    return ", ".join(parts)


VERDICT_COLUMNS = ["experiment", "problem", "setting_key", "a", "b", "metric", "direction", "verdict", "decided",
                   "outcome", "better", "seeds", "seeds_a", "seeds_b", "test", "difference", "ci_low", "ci_high",
                   "p_value", "p_holm", "pairs", "seeds_needed", "vary", "tested_on", "evidence"]


def tested_values(first, second) -> tuple[dict, dict, str]:
    """The objective per seed a pair is tested on: the confirmation seeds where both labels have them
    (seeds that played no part in choosing either configuration), else the tuning seeds. A best
    configuration chosen on the same seeds it is tested on is the best of several noisy means: tested
    there, a label tuned over 5 (20) equal configurations is falsely "better" than one with a single
    configuration in 6.8-8.7% (11-19%) of simulated studies at 3-20 seeds; on new seeds, 5% (docs/results.md)."""
    a, b = getattr(first, "confirm_seed_values", None) or {}, getattr(second, "confirm_seed_values", None) or {}
    if len(a) >= 2 and len(b) >= 2:
        return a, b, "confirmation"
    return first.seed_values, second.seed_values, "tuning"


def pairwise_verdicts(best: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, problem, setting), each pair of optimizer labels at their best configurations,
    Holm-adjusted over the pairs of that problem and setting."""
    families = []
    usable = best[best["seeds"] > 0] if not best.empty else best
    for (experiment, problem, setting), group in usable.groupby(["experiment", "problem", "setting_key"]):
        entries = list(group.sort_values("optimizer").itertuples(index=False))
        pairs = [(first, second) for i, first in enumerate(entries) for second in entries[i + 1:]
                 if first.metric == second.metric]  # ranked on different metrics: no common scale
        rows = []
        for first, second in pairs:
            vary = str(getattr(first, "vary", "") or "init,order")
            values_a, values_b, tested_on = tested_values(first, second)
            found = compare(values_a, values_b, first.direction, (first.optimizer, second.optimizer), pairs=len(pairs))
            rows.append({"experiment": experiment, "problem": problem, "setting_key": setting, "a": first.optimizer,
                         "b": second.optimizer, "metric": first.metric, "direction": first.direction, "vary": vary,
                         "tested_on": tested_on, **found})
        if rows:
            family = decide(pd.DataFrame(rows))
            family["evidence"] = [evidence(row, row["vary"]) for _, row in family.iterrows()]
            families.append(family)
    if not families:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    return pd.concat(families, ignore_index=True)[VERDICT_COLUMNS]


def ranking(labels_best_first: list[str], verdicts: pd.DataFrame) -> str:
    """'rmsprop ≈ sgd > adam': labels in order of their mean, '>' where every label before the mark is
    decided better than every label after it, '≈' elsewhere; other decided pairs follow."""
    won = {(row.better, row.b if row.better == row.a else row.a) for row in verdicts.itertuples() if row.decided}
    text, implied = labels_best_first[0] if labels_best_first else "", set()
    for cut in range(1, len(labels_best_first)):
        before, after = labels_best_first[:cut], labels_best_first[cut:]
        apart = all((x, y) in won for x in before for y in after)
        if apart:
            implied |= {(x, y) for x in before for y in after}
        text += (" > " if apart else " ≈ ") + labels_best_first[cut]
    rest = sorted(won - implied)
    if rest:
        text += "; also " + ", ".join(f"{x} > {y}" for x, y in rest)
    return text


# ---- robustness ------------------------------------------------------------------------------

def lr_robustness(members: pd.DataFrame, row, tolerance: float = 0.10) -> tuple[str, float]:
    """The contiguous lr range around the best whose mean objective is within `tolerance` (relative)
    of the best's, at the best's other arguments: (text, width in decades)."""
    if not np.isfinite(row["lr"]):
        return "", np.nan
    same = members[(members["args"] == row["args"]) & members["rank"].notna()]
    per_lr = same.groupby("lr")["rank"].mean().sort_index()
    if row["lr"] not in per_lr.index or len(per_lr) < 2:  # one lr (lr-free, Prodigy at 1.0): no range to measure
        return "", np.nan
    best = per_lr[row["lr"]]
    good = (per_lr <= best + tolerance * abs(best)).to_numpy()
    where = list(per_lr.index).index(row["lr"])
    low = high = where
    while low > 0 and good[low - 1]:
        low -= 1
    while high < len(good) - 1 and good[high + 1]:
        high += 1
    lrs = per_lr.index
    decades = math.log10(lrs[high] / lrs[low]) if lrs[low] > 0 else np.nan
    return f"{lrs[low]:g}..{lrs[high]:g}", decades
