"""The summary table (one row per best configuration: best lr, mean ± std over seeds, final test
metrics, time to target) and the targets it is measured against."""
import numpy as np
import pandas as pd

from optimstudy.facts import ProblemFacts, facts_for, problem_facts
from optimstudy.results import comparison
from optimstudy.results.tables import SETTING, group_runs, key_text, lr_range_text

# ---- time to target --------------------------------------------------------------------------

def target_for(problem: str, loss=None, facts: ProblemFacts | None = None):
    """(metric, value) of the problem's validation target (Problem.target), or None. A val_loss target
    is stated in the problem's own loss: a run trained on another loss (mean_error) has no target.
    `facts`: the problem's, as its runs recorded them (default: facts_for(problem))."""
    found = facts if facts is not None else facts_for(problem)
    target = getattr(found, "target", None)
    default = getattr(found, "default_loss", None)
    if target and target[0] == "val_loss" and isinstance(loss, str) and loss and default and loss != default:
        return None
    return tuple(target) if target else None


def target_text(target) -> str:
    return f"{target[0]} {'>=' if target[0].endswith('accuracy') else '<='} {target[1]:g}" if target else ""


def time_to_target(study, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run of `study` (a results.study.Study): the first evaluation step at which the validation
    metric reached its problem's target (NaN when never), and the seconds to it, prorated from the
    run's wall time."""
    runs = study.runs if runs is None else runs
    wanted: dict = {}
    facts = study.facts if runs is study.runs else problem_facts(runs)
    for (problem, loss), members in runs.assign(loss=runs["loss"].fillna("")).groupby(["problem", "loss"]):
        target = target_for(problem, loss or None, facts.get(problem))
        if target:
            wanted.setdefault(target, []).extend(members["run_id"])
    rows = []
    for (metric, value), run_ids in wanted.items():
        values = study.points(run_ids, metric)
        values = values[np.isfinite(values["value"])]
        hit = values[values["value"] >= value] if metric.endswith("accuracy") else values[values["value"] <= value]
        first = hit.groupby("run_id")["step"].min()
        rows += [(run_id, metric, value, first.get(run_id, np.nan)) for run_id in run_ids]
    found = pd.DataFrame(rows, columns=["run_id", "target_metric", "target", "steps_to_target"])
    found = found.merge(runs[["run_id", "wall_s", "last_step"]], on="run_id", how="left")
    found["seconds_to_target"] = found["wall_s"] * found["steps_to_target"] / found["last_step"].clip(lower=1)
    return found[["run_id", "target_metric", "target", "steps_to_target", "seconds_to_target"]]


# ---- the summary -----------------------------------------------------------------------------

SUMMARY_COLUMNS = ["experiment", "problem", "optimizer", "setting", "best_lr", "optimizer_args", "metric", "direction",
                   "mean", "std", "median", "ci_low", "ci_high", "ci_kind", "seeds", "diverged_seeds", "confirm_mean",
                   "confirm_std", "confirm_seeds", "test_loss", "test_accuracy", "test_error_rate", "lrs_tried",
                   "lr_range", "robust_lr_range", "robust_decades",
                   "trials", "target", "steps_to_target", "steps_ci_low", "steps_ci_high", "steps_ci_kind",
                   "seconds_to_target",
                   "target_reached", "edge_warning", "no_outcome"]


def summary_table(study) -> pd.DataFrame:
    """Per experiment x problem x optimizer label (x setting where one varies): best lr, the final
    objective's mean ± std with the t 95% interval of the mean (from 3 seeds; with 2 their range, ci_kind
    "range"), the median, the confirmation on new
    seeds, the lr range within 10% of the best, median steps (with interval) and seconds to target."""
    best, runs = study.best, study.runs
    if best.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    reach = study.reach.set_index("run_id")
    by_run = runs.set_index("run_id")
    varying = {key: [c for c in SETTING if rows[c].map(key_text).nunique() > 1]
               for key, rows in best.groupby(["experiment", "problem"])}
    rows = []
    for _, row in best.iterrows():
        target = target_for(row["problem"], row.get("loss"), study.facts.get(row["problem"]))
        at_best = reach.reindex(row["run_ids"])
        reached = int(at_best["steps_to_target"].notna().sum())
        values = np.asarray([v for v in row["values"] if np.isfinite(v)], dtype=float)
        low, high, kind = comparison.mean_interval(values)
        steps = at_best["steps_to_target"].fillna(np.inf).to_numpy(dtype=float) if target else np.array([])
        steps_low, steps_high, steps_kind = comparison.median_interval(steps) if len(steps) else (np.nan, np.nan, "")
        robust = comparison.lr_robustness(group_runs(runs, row), row)
        rows.append({
            "experiment": row["experiment"], "problem": row["problem"], "optimizer": row["optimizer"],
            "setting": " ".join(f"{c}={key_text(row[c])}"
                                for c in varying.get((row["experiment"], row["problem"]), [])),
            "best_lr": row["lr"], "optimizer_args": row["args"], "metric": row["metric"],
            "direction": row["direction"], "mean": row["mean"], "std": row["std"],
            "median": float(np.median(values)) if len(values) else np.nan, "ci_low": low, "ci_high": high,
            "ci_kind": kind,
            "seeds": row["seeds"], "diverged_seeds": row["diverged_seeds"], "confirm_mean": row["confirm_mean"],
            "confirm_std": row["confirm_std"], "confirm_seeds": row["confirm_seeds"],
            **final_test_means(by_run, row["run_ids"]), "lrs_tried": len(row["lrs"]),
            "lr_range": lr_range_text(row["lrs"]), "robust_lr_range": robust[0], "robust_decades": robust[1],
            "trials": row["trials"], "target": target_text(target),
            "steps_to_target": comparison.median_or_nan(steps), "steps_ci_low": _finite(steps_low),
            "steps_ci_high": _finite(steps_high), "steps_ci_kind": steps_kind,
            "seconds_to_target": comparison.median_or_nan(
                at_best["seconds_to_target"].fillna(np.inf).to_numpy(dtype=float)) if target else np.nan,
            "target_reached": f"{reached}/{len(at_best)} seeds" if target and len(at_best) else "",
            "edge_warning": row["edge_warning"],
            "no_outcome": row["no_outcome"] if isinstance(row.get("no_outcome"), str) else "",
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


TEST_METRICS = ("test_loss", "test_accuracy", "test_error_rate")  # reported, never ranked by default


def final_test_means(by_run: pd.DataFrame, run_ids) -> dict:
    """A best configuration's final test metrics: each the mean over its seeds that did not diverge
    (NaN where the task does not log it: no accuracy for a regression)."""
    finished = by_run.reindex(list(run_ids))
    finished = finished[finished["diverged"].eq(False)]
    means = {}
    for name in TEST_METRICS:
        values = finished.get(f"final_{name}", pd.Series(dtype=float)).to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        means[name] = float(values.mean()) if len(values) else np.nan
    return means


def _finite(value) -> float:
    return value if np.isfinite(value) else np.nan
