"""One row per run, and each label's best configuration, from the tidy frame (pandas and numpy only).

    from optimstudy import load_runs, results
    runs = results.run_table(load_runs("sqlite:///mlruns/mlflow.db", experiments=["quickstart"]))
    best = results.best_configurations(runs)  # per problem x optimizer label x setting: best lr, mean ± std
    results.edge_warnings(best)               # best lrs (and grid arguments) at the edge of what was tried
    results.verdicts(runs)                    # per problem, each pair of optimizers: who is better, if anyone

One ranking rule, the sweep's: the metric and direction each run carries (tags
optimstudy.objective_metric / optimstudy.objective_direction, written by the sweep; plain runs:
val_loss, minimize). A finished run that diverged (or has no finite value) scores the worst value;
a run with no outcome (pruned, failed, killed) scores NaN and never competes. Configurations are
keyed by text keys of their full configuration (lr, opt.* arguments, settings), so a missing
optimizer argument is "" and never a NaN group key. The statistics over seeds (intervals,
verdicts, profiles, tuning curves) are in comparison.py and aggregates.py; the summary in
summary.py, the verdicts in rankings.py, all of them computed once in study.Study.
"""
import json
import math

import numpy as np
import pandas as pd

from optimstudy.facts import DEFAULT_VARY, problem_facts
from optimstudy.results.objectives import FINAL_METRICS, default_direction

# logged once per run, at its last step (what the report loads; run_table also takes any other final_*)
# decide_max_seeds: a sweep parent's, when its seeds are added until decided (sequential.DESIGN_METRIC): read
# with the runs, it brings the parent and its design into the tidy frame
RUN_METRICS = (*FINAL_METRICS, "diverged", "diverged_at_step", "wall_s", "samples_per_s", "decide_max_seeds")
# the per-step metrics the results read besides: the last training loss, divergence, time to target
RESULT_METRICS = ("train_loss", "val_loss", "val_accuracy")
# what, besides the optimizer and its hyperparameters, makes two runs different experiments
SETTING = ("batch_size", "accumulate", "zero_grad", "loss", "schedule", "clip_grad_norm", "steps", "epochs",
           "device", "split_seed", "val_fraction", "diverge_factor", "vary")
GROUP = ("experiment", "problem", "label", "setting_key")
HUGE = 1e300  # MLflow's SQL store keeps +-inf as +-1.8e308: anything this large is a blown-up run
EDGE = 0.05  # a search's best lr within 5% (of the log range) of its end is "at the edge"
DEFAULT_METRIC, DEFAULT_DIRECTION = "val_loss", "minimize"
NEW_SEED_PHASES = ("confirm", "decide")  # runs of a chosen configuration on new seeds: they never compete


def on_new_seeds(runs: pd.DataFrame) -> pd.Series:
    return runs["phase"].fillna("").isin(NEW_SEED_PHASES)


def objective_value(value, diverged, direction: str) -> float:
    """A finished run's objective: its final metric; diverged or not finite -> the worst value."""
    worst = math.inf if direction == "minimize" else -math.inf
    if diverged or value is None or not math.isfinite(value):
        return worst
    return float(value)


def key_text(value) -> str:
    """A configuration value as key text: None/NaN -> "", 64.0 -> "64", 0.1 -> "0.1"."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def option_columns(runs: pd.DataFrame) -> list[str]:
    """What a configuration sets besides lr: the optimizer's arguments (opt.KEY), the rest optimizer's
    (rest.KEY: parameter_groups) and the schedule's (schedule.KEY: a spec may grid them, as warm-up)."""
    return sorted(c for c in runs.columns if c.startswith(("opt.", "rest.", "schedule.")))


def args_text(options: dict) -> str:
    """A run's arguments besides lr as text: "weight_decay=0.1 rest.optimizer=adamw". A rest.lr set by
    rest.lr_ratio is left out: it is lr x ratio, said by both already, and would make every lr of a
    grid a configuration of its own arguments (no lr curve, no robust lr range)."""
    ratio_given = key_text(options.get("rest.lr_ratio")) not in ("", "None")
    return " ".join(f"{c.removeprefix('opt.')}={key_text(v)}" for c, v in options.items()
                    if key_text(v) not in ("", "None") and not (c == "rest.lr" and ratio_given))


# ---- one row per run --------------------------------------------------------------------------

def run_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training run (sweep parents left out): params and tags, the final metrics,
    label, objective_metric, objective_direction, objective, rank (lower is better), diverged,
    last_step, args (the opt.* arguments as text), config_key and setting_key."""
    columns = ["run_id", "experiment", "problem", "optimizer", "label", "lr", "seed", "objective", "rank",
               "diverged", "objective_metric", "objective_direction", "phase", "config_key", "setting_key", "args"]
    if frame.empty or "problem" not in frame:
        return pd.DataFrame(columns=columns + list(SETTING))
    runs = frame.drop_duplicates("run_id").drop(columns=["step", "metric", "value"], errors="ignore")
    runs = runs.astype({c: object for c in runs.columns if isinstance(runs[c].dtype, pd.CategoricalDtype)})
    runs = runs[runs["problem"].notna() & runs["optimizer"].notna()]
    if "kind" in runs:
        runs = runs[runs["kind"].fillna("") != "sweep"]
    runs = runs.reset_index(drop=True)
    per_run = list(dict.fromkeys([*RUN_METRICS, *_final_names(frame["metric"])]))
    finals = frame[frame["metric"].isin(per_run)]
    wide = finals.groupby(["run_id", "metric"], observed=True)["value"].last().unstack()
    wide.index, wide.columns = wide.index.astype(str), wide.columns.astype(str)
    wide = wide.reindex(columns=per_run)
    wide = wide.where(wide.abs() < HUGE, np.inf * np.sign(wide))
    runs = runs.join(wide, on="run_id")
    train = frame[frame["metric"] == "train_loss"]
    last = train.groupby("run_id", observed=True)["step"].max()
    last.index = last.index.astype(str)
    blown = set(train.loc[~np.isfinite(train["value"]) | (train["value"].abs() >= HUGE), "run_id"].astype(str))
    runs["last_step"] = runs["run_id"].map(last).fillna(0).astype("int64")
    # the logged flag decides; a run without one (killed mid-run) counts as diverged if its loss blew up
    runs["diverged"] = runs["diverged"].eq(1) | (runs["diverged"].isna() & runs["run_id"].isin(blown))
    for column in ("phase", "optimizer_label", "objective_metric", "objective_direction", "lr_space", *SETTING):
        if column not in runs:
            runs[column] = None
    runs["label"] = runs["optimizer_label"].where(runs["optimizer_label"].fillna("") != "", runs["optimizer"])
    runs["vary"] = runs["vary"].fillna(DEFAULT_VARY)  # runs from before `vary`: the seed varied init and order
    metric = runs["objective_metric"].where(runs["objective_metric"].fillna("") != "", DEFAULT_METRIC)
    directions = metric.map(default_direction)
    runs["objective_metric"] = metric
    runs["objective_direction"] = runs["objective_direction"].where(
        runs["objective_direction"].isin(["minimize", "maximize"]), directions)
    value = pd.Series([runs.at[i, f"final_{m}"] if f"final_{m}" in runs else np.nan
                       for i, m in zip(runs.index, metric)], index=runs.index, dtype="float64")
    finished = runs["status"] == "FINISHED"
    runs["objective"] = [objective_value(None if pd.isna(v) else v, d, direction) if done else np.nan
                         for v, d, direction, done in zip(value, runs["diverged"], runs["objective_direction"],
                                                          finished)]
    runs["rank"] = runs["objective"].where(runs["objective_direction"] == "minimize", -runs["objective"])
    for column in ("seed", "batch_size", "accumulate", "steps", "split_seed", "eval_every", "threads", "trial"):
        # whole numbers again once the sweep parents' empty params are gone: "seed 0", not "seed 0.0"
        if column in runs and runs[column].notna().all() and (runs[column] % 1 == 0).all():
            runs[column] = runs[column].astype("int64")
    options = option_columns(runs)
    runs["args"] = [args_text(dict(zip(options, values))) for values in runs[options].itertuples(index=False)] \
        if options else ""
    runs["config_key"] = [f"lr={key_text(lr)} {args}" for lr, args in zip(runs["lr"], runs["args"])]
    runs["setting_key"] = [" ".join(f"{c}={key_text(v)}" for c, v in zip(SETTING, values) if key_text(v))
                           for values in runs[list(SETTING)].itertuples(index=False)]
    return runs.copy()  # one block per dtype again: the columns added one by one fragment the frame


def _final_names(metric: pd.Series) -> list[str]:
    """Every final_* metric name in the frame: from the categories of a compact frame (no pass over
    the points), else from the distinct names."""
    names = metric.cat.categories if isinstance(metric.dtype, pd.CategoricalDtype) else pd.unique(metric)
    return sorted(str(name) for name in names if str(name).startswith("final_"))


# ---- best configurations ---------------------------------------------------------------------

def lr_range_text(lrs) -> str:
    if len(lrs) < 2:
        return f"{lrs[0]:g} only" if len(lrs) else "none"
    return f"{lrs[0]:g}..{lrs[-1]:g}, {len(lrs)} values"


def _lr_space(members: pd.DataFrame):
    """(low, high, log) of a search's lr range, from the tag optimstudy.lr_space; None for a grid."""
    for text in members["lr_space"].dropna():
        try:
            low, high, log = json.loads(text)
            return float(low), float(high), bool(log)
        except (ValueError, TypeError):
            continue
    return None


def edge_warning(row: dict, lrs, space=None, tied_lrs=()) -> str:
    """'' unless the best lr is at the edge of what was tried: then the optimum may lie outside it.
    `tied_lrs`: the lrs whose mean objective equals the best's (ties): another lr among them means the
    objective is flat there, and the edge is not strictly best, so the grid need not grow."""
    who = f"{row['problem']}/{row['optimizer']} ({row['experiment']})"
    lr = row["lr"]
    if not np.isfinite(lr) or any(not math.isclose(other, lr) for other in tied_lrs):
        return ""
    if space is not None:
        low, high, log = space
        position = math.log(lr / low) / math.log(high / low) if log else (lr - low) / (high - low)
        if EDGE <= position <= 1 - EDGE:
            return ""
        side, where = ("smallest", "below") if position < EDGE else ("largest", "above")
        return (f"{who}: best lr {lr:g} is near the {side} of the search range ({low:g}..{high:g}); "
                f"extend the range {where} it")
    if len(lrs) < 2 or not (math.isclose(lr, lrs[0]) or math.isclose(lr, lrs[-1])):
        return ""
    side, where = ("smallest", "below") if math.isclose(lr, lrs[0]) else ("largest", "above")
    return f"{who}: best lr {lr:g} is the {side} tried ({lr_range_text(lrs)}); extend the grid {where} it"


def argument_edge_warnings(row: dict, members: pd.DataFrame, options, tied=()) -> list[str]:
    """As edge_warning, for each numeric argument a grid varied (weight_decay = [0.0, 0.01, 0.1], a warm-up):
    the best value is the smallest or largest tried. A smallest value of 0 (no decay, no warm-up) is an
    end already, and a tie with another value of the argument means the objective is flat there."""
    who = f"{row['problem']}/{row['optimizer']} ({row['experiment']})"
    warnings = []
    for column in options:
        tried = pd.to_numeric(members[column], errors="coerce")
        if members[column].map(lambda v: isinstance(v, bool)).any() or tried.isna().any():
            continue  # not a number everywhere: a flag, a pair (betas), or unset in some runs
        if column == "rest.lr" and "rest.lr_ratio" in members and members["rest.lr_ratio"].notna().all():
            continue  # lr x rest.lr_ratio: it moves with lr, not an axis of its own; lr's warning speaks for it
        values = np.sort(tried.unique())
        best = pd.to_numeric(pd.Series([row.get(column)]), errors="coerce").iloc[0]
        others = pd.to_numeric(pd.Series([t[column] for t in tied]), errors="coerce")
        if len(values) < 2 or not np.isfinite(best) or any(not math.isclose(v, best) for v in others):
            continue
        name = column.removeprefix("opt.")
        tried_text = f"{values[0]:g}..{values[-1]:g}, {len(values)} values"
        if math.isclose(best, values[-1]):
            warnings.append(f"{who}: best {name} {best:g} is the largest tried ({tried_text}); "
                            "extend the grid above it")
        elif math.isclose(best, values[0]) and best != 0:
            warnings.append(f"{who}: best {name} {best:g} is the smallest tried ({tried_text}); "
                            "extend the grid below it")
    return warnings


def no_outcome(members: pd.DataFrame) -> str:
    """Why a group of runs has no best configuration: none ended with a value to rank. Said as
    such ("all 4 trials failed"), never as a divergence."""
    words = {"FAILED": "failed", "KILLED": "killed", "RUNNING": "still running", "SCHEDULED": "not started",
             "FINISHED": "finished without a final value (pruned)"}
    statuses = members["status"].fillna("").astype(str).value_counts()
    if list(statuses.index) == ["FAILED"]:
        return f"all {len(members)} trial{'s' if len(members) != 1 else ''} failed"
    return "no trial ended with a value: " + ", ".join(f"{count} {words.get(status, status.lower() or 'unknown')}"
                                                         for status, count in statuses.items())


def _tied(a: float, b: float) -> bool:
    """Two mean objectives are equal: exactly, or but for rounding in the sum (relative 1e-12)."""
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def best_configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, problem, optimizer label, setting): the configuration with the best
    mean objective over seeds. A configuration with a diverged seed ranks below every one without;
    confirm-phase runs never compete, and give confirm_mean/std/seeds of the chosen configuration."""
    options = option_columns(runs)
    rows = []
    competing = runs[~on_new_seeds(runs)]
    confirming = runs[on_new_seeds(runs) & runs["objective"].notna()]
    for key, members in competing.groupby(list(GROUP), sort=True):
        first = members.iloc[0]
        lrs = np.sort(members["lr"].dropna().unique())
        row = {"experiment": key[0], "problem": key[1], "optimizer": key[2], "setting_key": key[3],
               "optimizer_class": first["optimizer"], "metric": first["objective_metric"],
               "direction": first["objective_direction"], "trials": len(members), "lrs": list(lrs),
               **{c: first[c] for c in SETTING}}
        scored = members[members["rank"].notna()]
        configs = []
        for config_key, at in scored.groupby("config_key", sort=True):
            finite = at[np.isfinite(at["rank"])]
            configs.append((at["diverged"].mean() if len(at) else 1, finite["rank"].mean() if len(finite) else math.inf,
                            config_key, at, finite))
        if not configs:
            rows.append({**row, "lr": np.nan, "args": "", "config_key": "", "mean": np.nan, "std": np.nan, "seeds": 0,
                         "diverged_seeds": 0, "run_ids": [], "values": [], "all_diverged": False, "edge_warning": "",
                         "no_outcome": no_outcome(members)})
            continue
        diverged_share, _, config_key, at, finite = min(configs, key=lambda c: (c[0], c[1]))
        chosen = at.iloc[0]
        row.update({"lr": chosen["lr"], "args": chosen["args"], "config_key": config_key,
                    **{c: chosen[c] for c in options}, "mean": finite["objective"].mean(),
                    "std": finite["objective"].std(), "seeds": int(at["seed"].nunique()),
                    "diverged_seeds": int(at["diverged"].sum()), "run_ids": list(at["run_id"]),
                    "seed_values": dict(zip(at["seed"], at["objective"])), "values": list(at["objective"]),
                    "failed_seeds": failed_seeds(members[members["config_key"] == config_key]),
                    "configurations": len(configs),
                    "all_diverged": diverged_share == 1, "no_outcome": ""})
        if diverged_share == 1:
            row.update(lr=np.nan, edge_warning=f"{key[1]}/{key[2]} ({key[0]}): every lr tried "
                                                f"({lr_range_text(lrs)}) diverged; try smaller ones")
        else:
            best_mean = min(c[1] for c in configs if c[0] == diverged_share)
            tied = [c[3].iloc[0] for c in configs if c[0] == diverged_share and _tied(c[1], best_mean)]
            space = _lr_space(members)
            warnings = [edge_warning(row, lrs, space, [t["lr"] for t in tied]),
                        *([] if space else argument_edge_warnings(row, members, options, tied))]
            row["edge_warning"] = "; ".join(w for w in warnings if w)
        rows.append(row)
    best = pd.DataFrame(rows)
    if best.empty:
        return pd.DataFrame(columns=["experiment", "problem", "optimizer", "lr", "mean", "std", "seeds", "run_ids",
                                     "lrs", "trials", "edge_warning", "confirm_mean", "confirm_std",
                                     "confirm_seeds", "metric", "direction", "args", "setting_key"])
    confirm = confirming.groupby([*GROUP, "config_key"])["objective"].agg(["mean", "std", "count"])
    index = pd.MultiIndex.from_frame(best[["experiment", "problem", "optimizer", "setting_key", "config_key"]])
    found = confirm.reindex(index)
    best["confirm_mean"], best["confirm_std"] = found["mean"].to_numpy(), found["std"].to_numpy()
    best["confirm_seeds"] = found["count"].fillna(0).astype("int64").to_numpy()
    by_config = {key: dict(zip(at["seed"], at["objective"]))
                 for key, at in confirming.groupby([*GROUP, "config_key"], sort=False)}
    best["confirm_seed_values"] = [by_config.get(key, {}) for key in index]
    failed = {key: failed_seeds(at) for key, at in runs[on_new_seeds(runs)].groupby([*GROUP, "config_key"], sort=False)}
    best["confirm_failed_seeds"] = [failed.get(key, []) for key in index]
    added = runs[runs["phase"].fillna("") == "decide"].groupby([*GROUP, "config_key"]).size()
    best["decide_seeds"] = added.reindex(index).fillna(0).astype("int64").to_numpy()
    return best


def failed_seeds(runs: pd.DataFrame) -> list:
    """Seeds whose every run ended without a value (failed, killed): a verdict leaves them out, by name."""
    done = set(runs.loc[runs["objective"].notna(), "seed"])
    return sorted(set(runs.loc[runs["objective"].isna(), "seed"]) - done)


def edge_warnings(best: pd.DataFrame) -> list[str]:
    """Every best configuration whose lr is at the edge of the lrs tried for it (one wording)."""
    return [w for w in best.get("edge_warning", pd.Series(dtype=str)) if w]


def main_configurations(best: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The best configurations of the plain comparison: default loss, zero_grad on, no accumulation or
    clipping; per (experiment, problem, label) the setting with the most trials."""
    if best.empty:
        return best
    facts = problem_facts(runs)
    default_loss = best["problem"].map(lambda p: getattr(facts.get(p), "default_loss", None))
    plain = ((best["zero_grad"].fillna(True).astype(bool)) & (best["accumulate"].fillna(1) == 1)
             & (best["clip_grad_norm"].isna()) & (default_loss.isna() | (best["loss"] == default_loss)))
    chosen = best[plain & (best["seeds"] > 0)].sort_values("trials", ascending=False, kind="stable")
    return chosen.drop_duplicates(["experiment", "problem", "optimizer"]).sort_values(
        ["experiment", "problem", "optimizer"], ignore_index=True)


def group_runs(runs: pd.DataFrame, row) -> pd.DataFrame:
    """The competing runs of one best configuration's group (experiment, problem, label, setting)."""
    return runs[(runs["experiment"] == row["experiment"]) & (runs["problem"] == row["problem"])
                & (runs["label"] == row["optimizer"]) & (runs["setting_key"] == row["setting_key"])
                & ~on_new_seeds(runs)]
