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
numpy, pandas and scipy.special (which MLflow installs) only: results/distributions.py says why.
"""
import itertools
import math

import numpy as np
import pandas as pd
from scipy import special

from optimstudy.results import sequential
from optimstudy.results.distributions import (
    average_ranks,
    binomial_cdf,
    mann_whitney_normal_p,
    noncentral_t_survival,
    normal_quantile,
    t_quantile,
)

ALPHA, CONFIDENCE, SEED = 0.05, 0.95, 0
MIN_SEEDS = 3  # fewer seeds never decide a verdict
PERMUTATIONS = 50_000  # splits of the values the rank test enumerates exactly (8 and 8 seeds: 12,870)
SAME = 1e-9  # values within this share of their magnitude did not vary
POWER = 0.8  # "seeds needed": the seeds at which a real difference of the size seen is found 80% of the time
MOST_SEEDS = 10_000  # beyond this, "seeds needed" is NaN
SIGN_FLIP_SEEDS = 6  # 2 / 2**6 = 0.031: the fewest paired seeds at which a sign-flip test can reach 5%


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
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
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
    # the largest k with P(Binomial(n, 1/2) <= k) <= 2.5%: values[k]..values[n - 1 - k] then misses the
    # median at most 5% of the time
    k = int((binomial_cdf(np.arange(n + 1), n, 0.5) <= (1 - confidence) / 2).sum()) - 1
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
        return mann_whitney_normal_p(a, b)
    pooled = average_ranks(np.concatenate([a, b]))
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


def _badness(values: dict, sign: float) -> dict:
    return {seed: float(value) * sign for seed, value in values.items()}


def compare(a: dict, b: dict, direction: str, names=("A", "B"), pairs: int = 1, horizon: int | None = None) -> dict:
    """One pair's test from its objective per seed ({seed: value}; inf = diverged, NaN = failed), before
    the family's Holm adjustment (decide() applies it).

    Seeds both sides have are paired: a paired t-test when every one of them is finite; with a diverged
    seed among them, the exact signed-rank test (a diverged seed is the worst value of its side) from 6
    seeds, where a sign-flip test can first reach 5%, else Mann-Whitney on every value. Fewer than 3
    shared seeds: Mann-Whitney, if each side has 3. Failed runs and seeds only one side has are left out, and named. The
    direction comes from the data alone: swapping the two sides mirrors the verdict. `horizon`: the
    pair is tested sequentially (sequential.py), as a study that adds seeds until decided must be.
    `pairs` (the family's size) only scales the seeds a decision would need."""
    sign = 1.0 if direction == "minimize" else -1.0  # in "badness": lower is better
    a, b = _badness(a, sign), _badness(b, sign)
    left_out = [f"{name} seed {seed} (failed)" for name, side in zip(names, (a, b))
                for seed in sorted(side) if np.isnan(side[seed])]
    ran_a, ran_b = set(a), set(b)
    a = {s: v for s, v in a.items() if not np.isnan(v)}
    b = {s: v for s, v in b.items() if not np.isnan(v)}
    shared = sorted(set(a) & set(b))
    paired = len(shared) >= MIN_SEEDS or horizon is not None
    if paired:  # a seed the other side never ran (a failed run is named above)
        left_out += [f"{name} seed {seed} (no {other} run)" for name, mine, theirs, other in
                     ((names[0], a, ran_b, names[1]), (names[1], b, ran_a, names[0]))
                     for seed in sorted(set(mine) - theirs)]
    values_a = np.array([a[s] for s in (shared if paired else sorted(a))], dtype=float)
    values_b = np.array([b[s] for s in (shared if paired else sorted(b))], dtype=float)
    result = {"seeds": len(shared) if paired else min(len(a), len(b)), "seeds_a": len(values_a),
              "seeds_b": len(values_b), "test": "", "outcome": "", "difference": np.nan, "ci_low": np.nan,
              "ci_high": np.nan, "p_value": np.nan, "seeds_needed": np.nan, "seeds_needed_low": np.nan,
              "seeds_needed_high": np.nan, "better": "", "left_out": ", ".join(left_out), "out_of_reach": False}
    threshold = ALPHA / pairs  # Holm's first step: what the clearest pair of the family must beat
    if horizon is not None:
        return {**result, **_sequential(values_a, values_b, sign, names, threshold, horizon)}
    if not paired and min(len(values_a), len(values_b)) < MIN_SEEDS:
        if min(len(values_a), len(values_b)) >= 2 and _same(values_a) and _same(values_b):
            return {**result, "outcome": "no variation"}
        return {**result, "outcome": "too few seeds", "seeds_needed": MIN_SEEDS}
    if paired:
        differences = _difference(values_a, values_b)
        finite = np.isfinite(differences).all()
        if finite and (_same(differences) or (_same(values_a) and _same(values_b))):
            return {**result, "test": "paired t-test", "outcome": "no variation",
                    "difference": sign * float(differences.mean())}
        if finite:
            return {**result, **_paired_t(differences, sign, names, threshold)}
        if np.count_nonzero(_signed(differences)) >= SIGN_FLIP_SEEDS:
            return {**result, **_signed_rank(differences, sign, names)}
    return {**result, **_rank_sum(values_a, values_b, sign, names, threshold)}


def _signed(differences: np.ndarray) -> np.ndarray:
    """Paired differences with both-diverged seeds (inf - inf) as ties: no sign, no evidence."""
    return np.nan_to_num(differences, nan=0.0, posinf=np.inf, neginf=-np.inf)


def _difference(values_a: np.ndarray, values_b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf - inf: both diverged, NaN here, no sign in _signed
        return values_a - values_b


def _better(statistic: float, names) -> str:
    """The better side from a statistic in badness (a minus b); no side when it is exactly zero."""
    return names[0] if statistic < 0 else names[1] if statistic > 0 else ""


def _paired_t(differences: np.ndarray, sign: float, names, threshold: float) -> dict:
    mean = float(differences.mean())
    low, high, _ = mean_interval(differences)
    return {"test": "paired t-test", "difference": sign * mean, "p_value": float(paired_t_pvalues(differences)),
            "ci_low": sign * (low if sign > 0 else high), "ci_high": sign * (high if sign > 0 else low),
            "better": _better(mean, names), **seeds_for_power(differences, threshold)}


def _signed_rank(differences: np.ndarray, sign: float, names) -> dict:
    signed = _signed(differences)
    statistic, p = signed_rank_pvalue(signed)
    return {"test": "signed-rank", "difference": sign * float(np.median(signed)), "p_value": p,
            "better": _better(statistic, names)}


def _rank_sum(values_a: np.ndarray, values_b: np.ndarray, sign: float, names, threshold: float) -> dict:
    if _same(values_a) and _same(values_b):
        return {"test": "Mann-Whitney", "outcome": "no variation"}
    ranks = average_ranks(np.concatenate([values_a, values_b]))
    shift = float(ranks[:len(values_a)].mean() - ranks[len(values_a):].mean())  # < 0: a ranks better
    median = float(np.median(values_a) - np.median(values_b))
    result = {"test": "Mann-Whitney", "p_value": rank_test_pvalue(values_a, values_b), "better": _better(shift, names),
              "difference": sign * (median if np.isfinite(median) else math.copysign(math.inf, shift))}
    if smallest_rank_p(len(values_a), len(values_b)) >= threshold:
        result["outcome"] = "undecidable"
    if np.isfinite(np.concatenate([values_a, values_b])).all():
        spread = math.sqrt((np.var(values_a, ddof=1) + np.var(values_b, ddof=1)) / 2)
        result["seeds_needed"] = _unpaired_seeds_needed(median, spread, threshold)
    return result


def _sequential(values_a: np.ndarray, values_b: np.ndarray, sign: float, names, threshold: float,
                horizon: int) -> dict:
    differences = _signed(_difference(values_a, values_b))
    found = sequential.test(differences, horizon)
    finite = differences[np.isfinite(differences)]
    result = {"test": f"sequential signed-rank, up to {horizon} seeds", "p_value": found["p_value"],
              "better": _better(found["sign"], names),
              "difference": sign * float(finite.mean()) if len(finite) else np.nan,
              **seeds_for_power(finite, threshold)}
    if len(finite) == len(differences) and len(finite) >= 2 and _same(differences):
        result["outcome"] = "no variation"
    elif found["pairs"] < sequential.FIRST_LOOK:
        result["outcome"] = "too few seeds"
    if len(finite) >= 2:
        result["out_of_reach"] = bool(sequential.out_of_reach(finite.mean(), finite.std(ddof=1), len(finite),
                                                              threshold, horizon))
    return result


def signed_rank_pvalue(differences) -> tuple[float, float]:
    """(statistic, two-sided p) of Wilcoxon's signed-rank test, exact given the magnitudes: the null
    distribution of the signed rank sum built by convolution, one fair sign per seed. Zeros carry no
    sign and are left out; ties share their mid-rank (several diverged seeds)."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if not len(d):
        return 0.0, 1.0
    ranks = average_ranks(np.abs(d))
    statistic = float((np.sign(d) * ranks).sum())
    doubled = np.rint(2 * ranks).astype(int)  # mid-ranks are halves: twice them are whole
    total = int(doubled.sum())
    chance = np.zeros(2 * total + 1)
    chance[total] = 1.0  # index total is a sum of 0
    for r in doubled:
        chance = 0.5 * (np.roll(chance, r) + np.roll(chance, -r))
    sums = np.arange(-total, total + 1)
    return statistic, float(min(1.0, chance[np.abs(sums) >= abs(2 * statistic) - 1e-9].sum()))


def seeds_for_power(differences, alpha: float, power: float = POWER) -> dict:
    """Paired seeds at which a paired t-test at `alpha` finds the observed mean difference with `power`
    (noncentral t), and the range the seeds so far allow: the same at the two ends of the mean
    difference's 80% interval (a NaN high end: that interval reaches no difference at all)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2 or not d.std(ddof=1) > 0:
        return {}
    mean, spread = abs(float(d.mean())), float(d.std(ddof=1))
    half = t_quantile(0.9, len(d) - 1) * spread / math.sqrt(len(d))
    return {"seeds_needed": _paired_seeds_for_power(mean, spread, alpha, power),
            "seeds_needed_low": _paired_seeds_for_power(mean + half, spread, alpha, power),
            "seeds_needed_high": _paired_seeds_for_power(mean - half, spread, alpha, power)}


def _seeds_for_power(effect: float, alpha: float, power: float, paired: bool) -> float:
    """The fewest seeds (per side) at which a t-test at `alpha` finds a standardized `effect` with `power`
    (noncentral t), searched near the normal approximation rather than over every count."""
    if not np.isfinite(effect) or effect <= 0:
        return np.nan
    guess = ((normal_quantile(1 - alpha / 2) + normal_quantile(power)) / effect) ** 2 * (1 if paired else 2)
    if guess > MOST_SEEDS:
        return np.nan
    n = np.arange(max(MIN_SEEDS, int(guess) - 2), min(MOST_SEEDS, int(guess) + 40) + 1)
    freedom = n - 1 if paired else 2 * n - 2
    shift = effect * np.sqrt(n if paired else n / 2)
    reached = noncentral_t_survival(t_quantile(1 - alpha / 2, freedom), freedom, shift) >= power
    return float(n[reached.argmax()]) if reached.any() else np.nan


def _paired_seeds_for_power(mean: float, spread: float, alpha: float, power: float) -> float:
    if not mean > 0 or not spread > 0:
        return np.nan
    return _seeds_for_power(mean / spread, alpha, power, paired=True)


def _unpaired_seeds_needed(mean: float, spread: float, alpha: float, power: float = POWER) -> float:
    """Seeds per side at which a two-sample t-test finds this difference with `power`, where a rank
    test can reach alpha at all."""
    if mean == 0 or not np.isfinite(mean) or not spread > 0:
        return np.nan
    needed = _seeds_for_power(abs(mean) / spread, alpha, power, paired=False)
    if not np.isfinite(needed):
        return np.nan
    ranks_can = next(k for k in itertools.count(MIN_SEEDS) if smallest_rank_p(k, k) < alpha)
    return float(max(needed, ranks_can))


# ---- a family of pairs -----------------------------------------------------------------------

def decide(family: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust one family's p-values (all pairs of one problem and setting) and word each verdict."""
    family = family.copy()
    family["pairs"] = int(family["p_value"].notna().sum())
    family["p_holm"] = holm(family["p_value"].to_numpy())
    family["decided"] = ((family["p_holm"] < alpha) & (family["seeds"] >= MIN_SEEDS) & (family["outcome"] == "")
                         & (family["better"] != ""))
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
    left_out = f"; left out: {row['left_out']}" if row.get("left_out") else ""
    if row["outcome"] == "no variation":
        missing = [part for part in ("init", "data") if part not in vary.split(",")]
        advice = (f"vary the {' and the '.join({'init': 'initialisation', 'data': 'data split'}[p] for p in missing)} "
                  f"(vary = [\"init\", \"order\", \"data\"])" if missing else
                  "the two give the same result on every seed: they may be the same computation")
        return f"every seed gave the same difference: no evidence about noise ({varied}); {advice}{left_out}"
    if row["outcome"] == "too few seeds":
        return f"{MIN_SEEDS} seeds on both sides are needed for a verdict{left_out}"
    if row["outcome"] == "undecidable":
        smallest = smallest_rank_p(int(row["seeds_a"]), int(row["seeds_b"]))
        return (f"a rank test of {row['seeds_a']} against {row['seeds_b']} seeds can never reach p < "
                f"{ALPHA / max(int(row['pairs']), 1):.2g} (its smallest p is {smallest:.2g}): run more seeds{left_out}")
    parts = [f"{row['test']} p = {row['p_value']:.2g}"]
    if row["pairs"] > 1:
        parts.append(f"Holm-adjusted {row['p_holm']:.2g} over {row['pairs']} pairs")
    if varied:
        parts.append(varied)
    if row.get("tested_on") in ("confirmation", "every seed"):
        parts.append({"confirmation": "on the confirmation seeds",
                      "every seed": "on every seed of the one configuration each"}[row["tested_on"]])
    return ", ".join(parts) + left_out


def seeds_needed_text(row) -> str:
    """'~18 seeds for 80% power (the seeds so far allow 9 to over 10,000)': what would decide an open pair."""
    if not np.isfinite(row.get("seeds_needed", np.nan)):
        return "no difference seen"
    low, high = row.get("seeds_needed_low", np.nan), row.get("seeds_needed_high", np.nan)
    text = f"~{row['seeds_needed']:.0f} seeds for {POWER:.0%} power"
    if np.isfinite(low):
        upper = f"{high:.0f}" if np.isfinite(high) else "no limit"
        text += f" (the seeds so far allow {low:.0f} to {upper})"
    return text


VERDICT_COLUMNS = ["experiment", "problem", "setting_key", "a", "b", "metric", "direction", "verdict", "decided",
                   "outcome", "better", "seeds", "seeds_a", "seeds_b", "test", "difference", "ci_low", "ci_high",
                   "p_value", "p_holm", "pairs", "seeds_needed", "seeds_needed_low", "seeds_needed_high", "vary",
                   "tested_on", "left_out", "out_of_reach", "evidence"]


def tested_values(first, second, sequential_design: bool = False) -> tuple[dict, dict, str]:
    """The objective per seed a pair is tested on (failed runs as NaN): the confirmation seeds where both
    labels have at least MIN_SEEDS of them (seeds that played no part in choosing either configuration),
    else the tuning seeds. A best configuration chosen on the same seeds it is tested on is the best of
    several noisy means: tested there, a label tuned over 5 (20) equal configurations is falsely
    "better" than one with a single configuration in 6.8-8.7% (11-19%) of simulated studies at 3-20
    seeds; on new seeds, 5% (docs/results.md). A sequential design tests the new seeds only, unless
    each label ran one configuration (nothing was chosen): then every seed."""
    def with_failed(values, failed):
        return {**{seed: np.nan for seed in failed or ()}, **(values or {})}

    new_a = with_failed(getattr(first, "confirm_seed_values", None), getattr(first, "confirm_failed_seeds", None))
    new_b = with_failed(getattr(second, "confirm_seed_values", None), getattr(second, "confirm_failed_seeds", None))
    old_a = with_failed(first.seed_values, getattr(first, "failed_seeds", None))
    old_b = with_failed(second.seed_values, getattr(second, "failed_seeds", None))
    if sequential_design:
        if max(getattr(first, "configurations", 1), getattr(second, "configurations", 1)) == 1:
            return {**old_a, **new_a}, {**old_b, **new_b}, "every seed"
        return new_a, new_b, "confirmation"
    finished = [sum(np.isfinite(v) or np.isinf(v) for v in side.values()) for side in (new_a, new_b)]
    if min(finished) >= MIN_SEEDS:
        return new_a, new_b, "confirmation"
    return old_a, old_b, "tuning"


def pairwise_verdicts(best: pd.DataFrame, horizons: dict | None = None) -> pd.DataFrame:
    """Per (experiment, problem, setting), each pair of optimizer labels at their best configurations,
    Holm-adjusted over the pairs of that problem and setting. `horizons`: experiment -> the most seeds
    of its sequential design ([decide] max_seeds); those experiments' pairs are tested sequentially."""
    families = []
    usable = best[best["seeds"] > 0] if not best.empty else best
    for (experiment, problem, setting), group in usable.groupby(["experiment", "problem", "setting_key"]):
        horizon = (horizons or {}).get(experiment)
        entries = list(group.sort_values("optimizer").itertuples(index=False))
        pairs = [(first, second) for i, first in enumerate(entries) for second in entries[i + 1:]
                 if first.metric == second.metric]  # ranked on different metrics: no common scale
        rows = []
        for first, second in pairs:
            vary = str(getattr(first, "vary", "") or "init,order")
            values_a, values_b, tested_on = tested_values(first, second, horizon is not None)
            found = compare(values_a, values_b, first.direction, (first.optimizer, second.optimizer),
                            pairs=len(pairs), horizon=horizon)
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


# ---- the answer in one line ------------------------------------------------------------------

def decided_better(verdicts: pd.DataFrame) -> set[tuple[str, str]]:
    """(winner, loser) of every decided pair."""
    return {(row.better, row.b if row.better == row.a else row.a) for row in verdicts.itertuples() if row.decided}


def decided_order(labels: list[str], won: set) -> list[str] | None:
    """The labels in an order every decided pair agrees with (ties kept in the given order: by mean);
    None when the decided pairs go round in a circle."""
    order, left = [], list(labels)
    while left:
        free = [x for x in left if not any((y, x) in won for y in left)]
        if not free:
            return None
        order.append(free[0])
        left.remove(free[0])
    return order


def letter_groups(labels: list[str], won: set) -> dict[str, str]:
    """A compact letter display: label -> letters, where two labels share a letter exactly when they are
    not decided apart (Piepho 2004): the maximal groups of labels no pair of which is decided, each a
    letter, minus the groups every pair of which another group covers already."""
    apart = {frozenset(pair) for pair in won}
    groups = []

    def extend(group, candidates, excluded):  # Bron-Kerbosch: every maximal group of undecided labels
        if not candidates and not excluded:
            groups.append(group)
        for x in list(candidates):
            near = {y for y in labels if y != x and frozenset((x, y)) not in apart}
            extend(group | {x}, candidates & near, excluded & near)
            candidates = candidates - {x}
            excluded = excluded | {x}

    extend(set(), set(labels), set())
    groups.sort(key=lambda g: (min(labels.index(x) for x in g), -len(g)))
    needed = []
    for i, group in enumerate(groups):
        others = [g for g in needed + groups[i + 1:]]
        covered = all(any({x, y} <= g for g in others) for x in group for y in group if x < y) and \
            (len(group) > 1 or any(group <= g for g in others))
        if not covered:
            needed.append(group)
    needed.sort(key=lambda g: min(labels.index(x) for x in g))
    letters = {x: "" for x in labels}
    for letter, group in zip("abcdefghijklmnopqrstuvwxyz", needed):
        for x in group:
            letters[x] += letter
    return letters


def ranking(labels_best_first: list[str], verdicts: pd.DataFrame) -> str:
    """Every label, best first, so that nothing on the line is false. Where the decided pairs split the
    labels into ordered groups: 'rmsprop ≈ sgd > adam' ('>': every label before it is decided better
    than every label after it; '≈': not decided apart). Otherwise a compact letter display:
    'sgd (a), rmsprop (ab), adam (b)': labels sharing a letter are not decided apart, and of two that
    share none the first is decided better."""
    won = decided_better(verdicts)
    order = decided_order(labels_best_first, won)
    labels = order or labels_best_first
    if not labels:
        return ""
    groups, current = [], [labels[0]]
    for label in labels[1:]:
        if all((x, label) in won for x in current) and all((x, label) in won for g in groups for x in g):
            groups.append(current)
            current = [label]
        else:
            current.append(label)
    groups.append(current)
    apart = {frozenset(pair) for pair in won}
    within = [(x, y) for g in groups for x in g for y in g if x != y]
    across = [(x, y) for i, g in enumerate(groups) for later in groups[i + 1:] for x in g for y in later]
    if order is not None and all(frozenset(p) not in apart for p in within) and all(p in won for p in across):
        return " > ".join(" ≈ ".join(g) for g in groups)
    letters = letter_groups(labels, won)
    text = ", ".join(f"{x} ({letters[x]})" for x in labels) + "; a shared letter: not decided apart"
    if order is None:  # a circle of decided pairs (different seeds or tests per pair): say each one
        text += "; decided: " + ", ".join(f"{x} > {y}" for x, y in sorted(won))
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
