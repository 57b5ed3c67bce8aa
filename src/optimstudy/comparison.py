"""Statistics over seeds for results.py: is a difference real, and how do optimizers compare overall?

    from optimstudy import comparison
    comparison.bootstrap_interval([0.91, 0.93, 0.92])      # 95% interval of the median over seeds
    comparison.compare({0: 0.10, 1: 0.12, 2: 0.11}, {0: 0.30, 1: 0.31, 2: 0.29}, "minimize")

- Intervals: percentile bootstrap of the median over seeds (2,000 resamples, a fixed seed, so a
  report is the same each time it is drawn).
- Verdicts: with the same seeds on both sides, the seed-paired difference A - B and a bootstrap
  interval of its mean; otherwise (or with a diverged seed, whose value is infinite) the
  Mann-Whitney rank test. A side is "better" only when the interval excludes 0 (p < 0.05 for
  the rank test) with at least MIN_SEEDS seeds: with two seeds a bootstrap interval is just the
  two values. "Seeds needed" is where a normal interval of the observed mean difference, at the
  observed spread, would stop covering 0.
- Performance profiles (Dolan & Moré 2002, as AlgoPerf scores): per optimizer, the fraction of
  problems solved within tau x the fastest optimizer's time to target; never reached = not solved.
- Tuning-budget curves (Crowded Valley): the best configuration found after k configurations,
  over random orders of the configurations tried.
pandas and numpy only (scipy, which MLflow installs, for the rank test).
"""
import math

import numpy as np
import pandas as pd

RESAMPLES, CONFIDENCE, SEED = 2000, 0.95, 0
MIN_SEEDS = 3  # fewer seeds never decide a verdict
Z = 1.959964  # two-sided 95% normal quantile


def median_or_nan(values) -> float:
    """Median over seeds where a miss (inf) counts as infinitely slow; NaN when that median is a miss."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return np.nan
    median = float(np.median(values))
    return median if np.isfinite(median) else np.nan


def bootstrap_interval(values, statistic=np.median, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the values (NaN, NaN with fewer than 2)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (np.nan, np.nan)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    estimates = statistic(values[draws], axis=1)
    tail = (1 - confidence) / 2
    # no interpolation: a resample's median may be inf (a seed that never reached a target)
    return float(np.quantile(estimates, tail, method="lower")), float(np.quantile(estimates, 1 - tail,
                                                                                    method="higher"))


def compare(a: dict, b: dict, direction: str, names=("A", "B")) -> dict:
    """The verdict on two optimizers from their objective per seed ({seed: value}; inf = diverged)."""
    sign = 1.0 if direction == "minimize" else -1.0  # in "badness": lower is better
    seeds = min(len(a), len(b))
    paired = set(a) == set(b)
    values_a = np.array([a[s] for s in sorted(a)], dtype=float) * sign
    values_b = np.array([b[s] for s in sorted(b)], dtype=float) * sign
    finite = np.isfinite(values_a).all() and np.isfinite(values_b).all()
    result = {"seeds": seeds, "test": "", "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan,
              "p_value": np.nan, "seeds_needed": np.nan}
    if paired and finite and seeds >= 2:
        differences = values_a - [b[s] * sign for s in sorted(a)]
        low, high = bootstrap_interval(differences, np.mean)
        mean, spread = float(differences.mean()), float(differences.std(ddof=1))
        result.update(test="seed-paired bootstrap", difference=sign * mean, ci_low=sign * (low if sign > 0 else high),
                      ci_high=sign * (high if sign > 0 else low))
        decided = high < 0 or low > 0
        better = 0 if mean < 0 else 1
    elif seeds >= 1 and len(a) + len(b) >= 3:
        from scipy.stats import mannwhitneyu

        test = mannwhitneyu(values_a, values_b, alternative="two-sided", method="auto")
        both = np.concatenate([values_a, values_b])
        mean = float(np.median(values_a) - np.median(values_b)) if np.isfinite(both).all() else (
            -math.inf if np.mean(np.isfinite(values_a)) > np.mean(np.isfinite(values_b)) else math.inf)
        spread = float(np.sqrt((np.var(values_a, ddof=1) + np.var(values_b, ddof=1)) / 2)) \
            if min(len(a), len(b)) > 1 and np.isfinite(both).all() else np.nan
        result.update(test="Mann-Whitney", difference=sign * mean, p_value=float(test.pvalue))
        decided = test.pvalue < 0.05
        better = 0 if test.statistic < len(a) * len(b) / 2 else 1
    else:
        mean, spread, decided, better = np.nan, np.nan, False, 0
    if np.isfinite(mean) and mean != 0 and np.isfinite(spread):
        factor = 1 if result["test"].startswith("seed-paired") else 2  # two groups: twice the variance
        result["seeds_needed"] = max(MIN_SEEDS, math.ceil(factor * (Z * spread / abs(mean)) ** 2))
    if decided and seeds >= MIN_SEEDS:
        result["verdict"] = f"{names[better]} better"
    else:
        result["verdict"] = f"not distinguishable with {seeds} seed{'s' * (seeds != 1)}"
    return result


def pairwise_verdicts(best: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, problem, setting), each pair of optimizer labels at their best configurations."""
    columns = ["experiment", "problem", "setting_key", "a", "b", "metric", "direction", "verdict", "seeds", "test",
               "difference", "ci_low", "ci_high", "p_value", "seeds_needed"]
    rows = []
    usable = best[best["seeds"] > 0] if not best.empty else best
    for (experiment, problem, setting), group in usable.groupby(["experiment", "problem", "setting_key"]):
        group = group.sort_values("optimizer")
        entries = list(group.itertuples(index=False))
        for i, first in enumerate(entries):
            for second in entries[i + 1:]:
                if first.metric != second.metric:
                    continue  # ranked on different metrics: no common scale
                found = compare(first.seed_values, second.seed_values, first.direction,
                                (first.optimizer, second.optimizer))
                rows.append({"experiment": experiment, "problem": problem, "setting_key": setting, "a": first.optimizer,
                             "b": second.optimizer, "metric": first.metric, "direction": first.direction, **found})
    return pd.DataFrame(rows, columns=columns)


def lr_robustness(members: pd.DataFrame, row, tolerance: float = 0.10) -> tuple[str, float]:
    """The contiguous lr range around the best whose mean objective is within `tolerance` (relative)
    of the best's, at the best's other arguments: (text, width in decades)."""
    if not np.isfinite(row["lr"]):
        return "", np.nan
    same = members[(members["args"] == row["args"]) & members["rank"].notna()]
    per_lr = same.groupby("lr")["rank"].mean().sort_index()
    if row["lr"] not in per_lr.index:
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


def performance_profiles(best: pd.DataFrame, reach: pd.DataFrame, taus=None) -> pd.DataFrame:
    """Dolan & Moré profiles: per optimizer and unit (steps, seconds), rho(tau) = the fraction of
    problems (experiment x problem) it reaches the target in within tau x the fastest optimizer's
    median time. An optimizer that never reaches it on a problem (or did not run it) fails there."""
    taus = np.geomspace(1, 64, 61) if taus is None else np.asarray(taus, dtype=float)
    reach = reach.set_index("run_id")
    times = []
    for _, row in best.iterrows():
        at = reach.reindex(row["run_ids"])
        if at["target"].isna().all():
            continue
        for unit in ("steps", "seconds"):
            times.append({"problem": f"{row['problem']} ({row['experiment']})", "optimizer": row["optimizer"],
                          "unit": unit, "time": median_or_nan(at[f"{unit}_to_target"].fillna(np.inf))})
    times = pd.DataFrame(times, columns=["problem", "optimizer", "unit", "time"])
    rows = []
    for unit, of_unit in times.groupby("unit"):
        wide = of_unit.pivot_table(index="problem", columns="optimizer", values="time", aggfunc="min",
                                   dropna=False).fillna(np.inf)
        fastest = wide.min(axis=1).replace(0, np.nan)
        ratios = wide.div(fastest, axis=0).fillna(np.inf)
        for optimizer in ratios.columns:
            solved = [(ratios[optimizer] <= tau).mean() for tau in taus]
            rows += [{"unit": unit, "optimizer": optimizer, "tau": tau, "solved": s, "problems": len(ratios)}
                     for tau, s in zip(taus, solved)]
    return pd.DataFrame(rows, columns=["unit", "optimizer", "tau", "solved", "problems"])


def tuning_curves(runs: pd.DataFrame, best: pd.DataFrame, orderings: int = 200, seed: int = SEED) -> pd.DataFrame:
    """Best mean objective found after k configurations (each averaged over its seeds), over random
    orders of the configurations each optimizer tried: median and 10-90% band per k."""
    rng = np.random.default_rng(seed)
    rows = []
    for _, row in best.iterrows():
        members = runs[(runs["experiment"] == row["experiment"]) & (runs["problem"] == row["problem"])
                       & (runs["label"] == row["optimizer"]) & (runs["setting_key"] == row["setting_key"])
                       & (runs["phase"].fillna("") != "confirm") & runs["rank"].notna()]
        per_config = members.groupby("config_key")["rank"].mean().to_numpy()  # a diverged seed: inf
        if len(per_config) < 2:
            continue
        orders = np.array([rng.permutation(per_config) for _ in range(orderings)])
        best_so_far = np.minimum.accumulate(orders, axis=1)
        sign = 1.0 if row["direction"] == "minimize" else -1.0
        for k in range(len(per_config)):
            column = best_so_far[:, k] * sign
            column = np.where(np.isfinite(column), column, np.nan)
            rows.append({"experiment": row["experiment"], "problem": row["problem"], "optimizer": row["optimizer"],
                         "setting_key": row["setting_key"], "metric": row["metric"], "configurations": k + 1,
                         "median": np.nanmedian(column) if np.isfinite(column).any() else np.nan,
                         "low": np.nanpercentile(column, 10) if np.isfinite(column).any() else np.nan,
                         "high": np.nanpercentile(column, 90) if np.isfinite(column).any() else np.nan})
    return pd.DataFrame(rows, columns=["experiment", "problem", "optimizer", "setting_key", "metric",
                                       "configurations", "median", "low", "high"])
