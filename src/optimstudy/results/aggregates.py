"""Statistics across problems and configurations, for results/tables.py and the analysis scripts.

    from optimstudy.results import aggregates
    iqm, improvement = aggregates.across_problems(study.main)   # rliable's IQM and P(A better than B)
    aggregates.performance_profiles(study.main, study.reach)    # Dolan & Moré, as AlgoPerf scores
    aggregates.tuning_curves(study.runs, study.main)            # best found after k configurations

- Across problems (Agarwal et al. 2021, as rliable computes them): the interquartile mean of
  normalised scores and the probability of improvement P(A better than B), each with a stratified
  bootstrap interval (seeds resampled within each problem). They describe the problems chosen; the
  tests are comparison.py's, per problem.
- Performance profiles (Dolan & Moré 2002, as AlgoPerf scores): per optimizer, the fraction of
  problems solved within tau x the fastest optimizer's time to target; never reached = not solved.
- Tuning-budget curves (Crowded Valley): the best configuration found after k configurations,
  over random orders of the configurations tried.
numpy, pandas and scipy only.
"""
import itertools

import numpy as np
import pandas as pd

from optimstudy.results.comparison import SEED, median_or_nan
from optimstudy.results.distributions import trimmed_mean
from optimstudy.results.tables import on_new_seeds

RESAMPLES = 2000  # stratified bootstrap resamples across problems


# ---- across problems (rliable's statistics) ---------------------------------------------------

def _scores(best: pd.DataFrame) -> dict:
    """{(experiment, problem, setting): {label: normalised scores per seed}}: 1 = the best run of any
    optimizer on that problem, 0 = the worst (a diverged run scores 0)."""
    found = {}
    for key, group in best[best["seeds"] > 0].groupby(["experiment", "problem", "setting_key"]):
        sign = 1.0 if group["direction"].iloc[0] == "minimize" else -1.0
        values = {row.optimizer: np.array(list(row.seed_values.values()), dtype=float) * sign
                  for row in group.itertuples()}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        if len(values) < 2 or not len(finite) or np.ptp(finite) == 0:
            continue
        best_value, worst_value = finite.min(), finite.max()
        found[key] = {label: np.where(np.isfinite(v), (worst_value - v) / (worst_value - best_value), 0.0)
                      for label, v in values.items()}
    return found


def probability_of_improvement(scores_x: list, scores_y: list) -> float:
    """P(X better than Y), averaged over problems: per problem the Mann-Whitney U over the seed pairs
    (ties count half), as rliable.metrics.probability_of_improvement."""
    per_problem = []
    for x, y in zip(scores_x, scores_y):
        greater = (x[:, None] > y[None, :]).mean() + 0.5 * (x[:, None] == y[None, :]).mean()
        per_problem.append(greater)
    return float(np.mean(per_problem))


def interquartile_mean(scores: list) -> float:
    """The 25%-trimmed mean of every run's score on every problem, as rliable.metrics.aggregate_iqm."""
    return float(trimmed_mean(np.concatenate(scores), 0.25))


def across_problems(best: pd.DataFrame, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[pd.DataFrame,
                                                                                                 pd.DataFrame]:
    """(iqm, improvement): per label, the IQM of normalised scores over every problem it ran with a
    stratified bootstrap 95% interval; per pair of labels, P(A better than B) over the problems both
    ran, with its interval. Empty with fewer than two problems: one problem is the verdicts' job."""
    scores = _scores(best)
    iqm_rows, pair_rows = [], []
    if len(scores) < 2:
        return (pd.DataFrame(columns=["optimizer", "problems", "iqm", "low", "high"]),
                pd.DataFrame(columns=["a", "b", "problems", "probability", "low", "high"]))
    rng = np.random.default_rng(seed)

    def resampled(runs: np.ndarray) -> np.ndarray:
        return runs[rng.integers(0, len(runs), (resamples, len(runs)))]

    labels = sorted({label for per in scores.values() for label in per})
    for label in labels:
        runs = [per[label] for per in scores.values() if label in per]
        draws = [resampled(r) for r in runs]
        estimates = [trimmed_mean(np.concatenate([d[i] for d in draws]), 0.25) for i in range(resamples)]
        low, high = np.percentile(estimates, [2.5, 97.5])
        iqm_rows.append({"optimizer": label, "problems": len(runs), "iqm": interquartile_mean(runs), "low": low,
                         "high": high})
    for x, y in itertools.combinations(labels, 2):
        shared = [per for per in scores.values() if x in per and y in per]
        if not shared:
            continue
        xs, ys = [per[x] for per in shared], [per[y] for per in shared]
        draws_x, draws_y = [resampled(r) for r in xs], [resampled(r) for r in ys]
        estimates = [probability_of_improvement([d[i] for d in draws_x], [d[i] for d in draws_y])
                     for i in range(resamples)]
        low, high = np.percentile(estimates, [2.5, 97.5])
        pair_rows.append({"a": x, "b": y, "problems": len(shared), "probability": probability_of_improvement(xs, ys),
                          "low": low, "high": high})
    return pd.DataFrame(iqm_rows), pd.DataFrame(pair_rows)


# ---- profiles and tuning budgets ------------------------------------------------------------

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
    orders of the configurations each optimizer tried: median and 10-90% band per k.

    Every curve runs to the largest k of its panel (experiment, problem, setting): an optimizer with
    fewer configurations has tried them all by then, so it stays at its best (`all_tried`). One
    configuration (a learning-rate-free method at lr 1.0) is a flat curve from k = 1, not left out."""
    rng = np.random.default_rng(seed)
    found = []
    for _, row in best.iterrows():
        members = runs[(runs["experiment"] == row["experiment"]) & (runs["problem"] == row["problem"])
                       & (runs["label"] == row["optimizer"]) & (runs["setting_key"] == row["setting_key"])
                       & ~on_new_seeds(runs) & runs["rank"].notna()]
        per_config = members.groupby("config_key")["rank"].mean().to_numpy()  # a diverged seed: inf
        if len(per_config):
            found.append((row, per_config))
    panel_sizes = {}
    for row, per_config in found:
        panel = (row["experiment"], row["problem"], row["setting_key"])
        panel_sizes[panel] = max(panel_sizes.get(panel, 0), len(per_config))
    rows = []
    for row, per_config in found:
        orders = np.array([rng.permutation(per_config) for _ in range(orderings)])
        best_so_far = np.minimum.accumulate(orders, axis=1)
        sign = 1.0 if row["direction"] == "minimize" else -1.0
        for k in range(panel_sizes[(row["experiment"], row["problem"], row["setting_key"])]):
            column = best_so_far[:, min(k, len(per_config) - 1)] * sign
            column = np.where(np.isfinite(column), column, np.nan)
            rows.append({"experiment": row["experiment"], "problem": row["problem"], "optimizer": row["optimizer"],
                         "setting_key": row["setting_key"], "metric": row["metric"], "configurations": k + 1,
                         "all_tried": k >= len(per_config),
                         "median": np.nanmedian(column) if np.isfinite(column).any() else np.nan,
                         "low": np.nanpercentile(column, 10) if np.isfinite(column).any() else np.nan,
                         "high": np.nanpercentile(column, 90) if np.isfinite(column).any() else np.nan})
    return pd.DataFrame(rows, columns=["experiment", "problem", "optimizer", "setting_key", "metric",
                                       "configurations", "all_tried", "median", "low", "high"])
