"""The report: the tracking store -> figures, a summary table and one HTML page.

Everything here is a function of the tidy frame from `optimstudy.tidy.load_runs`, never of a
run's in-memory state, so a report can be redrawn at any time from what the store holds:

    optimstudy report --experiment quickstart          # -> analysis/report.html

    from optimstudy.tidy import load_runs
    from optimstudy.report import run_table, best_configs, summary_table
    frame = load_runs("sqlite:///mlruns/mlflow.db")
    best_configs(run_table(frame))     # each optimizer's best lr per problem, mean ± std over seeds

The numbers live here (one row per run, best configurations, time to target, edge-of-grid
warnings); the pictures live in optimstudy/figures.py, one function per figure.
"""
import html
import json
import math
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optimstudy.errors import UsageError, near
from optimstudy.problems import PROBLEMS

QUICKSTART = "experiments/quickstart.toml"
# MLflow's SQL store keeps +-inf as +-1.8e308; anything this large is a blown-up run
HUGE = 1e300

# logged once per run, at its last step
RUN_METRICS = ("final_train_loss", "final_val_loss", "final_val_accuracy", "final_test_loss",
               "final_test_accuracy", "final_excess_loss", "diverged", "diverged_at_step", "wall_s",
               "samples_per_s")
STEP_METRICS = ("train_loss", "grad_norm", "update_norm", "lr", "w1", "w2")
# what, besides the optimizer and its hyperparameters, makes two runs different experiments
SETTING = ("batch_size", "accumulate", "zero_grad", "loss", "schedule", "clip_grad_norm", "steps", "epochs",
           "device", "split_seed", "val_fraction", "diverge_factor")
GROUP = ("experiment", "problem", "optimizer")

# Time to target, as in AlgoPerf: a fixed validation target per problem, set a little below what
# a tuned optimizer reaches in the study's budgets, so that the steps (and seconds) to reach it
# compare optimizers on speed. Regression targets are 2x the noise floor (noise std 0.1 -> MSE 0.01).
TARGETS = {
    "mnist_logreg": ("val_accuracy", 0.90),
    "mnist_mlp": ("val_accuracy", 0.95),
    "mnist_cnn": ("val_accuracy", 0.97),
    "fashion_logreg": ("val_accuracy", 0.80),
    "fashion_mlp": ("val_accuracy", 0.84),
    "fashion_cnn": ("val_accuracy", 0.86),
    "linreg": ("val_loss", 0.02),
    "regression_mlp": ("val_loss", 0.05),
    "valley": ("val_loss", 0.02),
}


# ---- one row per run ------------------------------------------------------------------------

_cache: dict = {}


def _cached(name: str, frame: pd.DataFrame, compute):
    """One result per frame object, so that every figure can start from the frame alone."""
    held = _cache.get(name)
    if held is not None and held[0]() is frame:
        return held[1]
    value = compute(frame)
    _cache[name] = (weakref.ref(frame), value)
    return value


def run_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training run: params, tags, final metrics and what the report derives.

    Derived: task, score_metric (val_accuracy for classifiers, else val_loss), score (its final
    value), diverged (as logged; for a run that logged no flag, a training loss that is not
    finite), badness (lower is better; inf for a diverged run, NaN for a run with no final
    outcome, e.g. pruned), last_step. Sweep parent runs are left out.
    """
    return _cached("runs", frame, _run_table)


def _run_table(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "problem" not in frame:
        return pd.DataFrame(columns=["run_id", *GROUP, "lr", "seed", "score", "badness", "diverged"])
    runs = frame.drop_duplicates("run_id").drop(columns=["step", "metric", "value"]).reset_index(drop=True)
    runs = runs[runs["problem"].notna() & runs["optimizer"].notna()]
    if "kind" in runs:
        runs = runs[runs["kind"].fillna("") != "sweep"]
    finals = frame[frame["metric"].isin(RUN_METRICS)]
    wide = finals.pivot_table(index="run_id", columns="metric", values="value", aggfunc="last")
    wide = wide.reindex(columns=list(RUN_METRICS))
    wide = wide.where(wide.abs() < HUGE, np.inf * np.sign(wide))
    runs = runs.join(wide, on="run_id")
    train = frame[frame["metric"] == "train_loss"]
    last = train.groupby("run_id")["step"].max().rename("last_step")
    blown = train.loc[~np.isfinite(train["value"]) | (train["value"].abs() >= HUGE), "run_id"].unique()
    runs = runs.join(last, on="run_id")
    runs["last_step"] = runs["last_step"].fillna(0).astype("int64")
    # the logged flag decides; a run without one (killed mid-run) counts as diverged if its loss blew up
    runs["diverged"] = runs["diverged"].eq(1) | (runs["diverged"].isna() & runs["run_id"].isin(blown))
    accuracy_runs = set(frame.loc[frame["metric"] == "val_accuracy", "run_id"].unique())
    runs["task"] = [
        PROBLEMS[p].task if p in PROBLEMS else ("classification" if r in accuracy_runs else "regression")
        for p, r in zip(runs["problem"], runs["run_id"])]
    classifier = runs["task"] == "classification"
    runs["score_metric"] = np.where(classifier, "val_accuracy", "val_loss")
    score = runs["final_val_accuracy"].where(classifier, runs["final_val_loss"])
    runs["score"] = score.where(np.isfinite(score))
    outcome = runs["score"].notna() | runs["diverged"]
    badness = runs["score"].where(~classifier, -runs["score"]).where(~runs["diverged"], np.inf)
    runs["badness"] = badness.where(outcome)
    for column in SETTING:
        if column not in runs:
            runs[column] = np.nan
    for column in ("seed", "batch_size", "accumulate", "steps", "split_seed", "eval_every", "threads", "trial"):
        # whole numbers again once the sweep parents' empty params are gone: "seed 0", not "seed 0.0"
        if column in runs and runs[column].notna().all() and (runs[column] % 1 == 0).all():
            runs[column] = runs[column].astype("int64")
    return runs.reset_index(drop=True)


def run_slices(frame: pd.DataFrame) -> dict | None:
    """run_id -> the slice of rows holding its points; None when the frame is not grouped by run
    (load_runs sorts by run, metric, step, so the lookup is one slice, not a scan of every row)."""
    def compute(frame):
        run_ids = frame["run_id"].to_numpy()
        cuts = np.flatnonzero(run_ids[1:] != run_ids[:-1]) + 1 if len(run_ids) else np.array([], int)
        bounds = np.concatenate([[0], cuts, [len(run_ids)]]) if len(run_ids) else np.array([0])
        slices = {run_ids[a]: slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])}
        return slices if len(slices) == len(bounds) - 1 else None
    return _cached("slices", frame, compute)


def points(frame: pd.DataFrame, run_ids, metrics) -> pd.DataFrame:
    """The (run_id, step, metric, value) points of some runs, fast on a frame of millions of rows.

    Values MLflow stored as +-1.8e308 (its infinity) come back as +-inf.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    run_ids = list(dict.fromkeys(run_ids))
    index = run_slices(frame)
    if index is None:
        chosen = frame[frame["run_id"].isin(run_ids)]
    else:
        parts = [frame.iloc[index[run_id]] for run_id in run_ids if run_id in index]
        chosen = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
    chosen = chosen.loc[chosen["metric"].isin(metrics), ["run_id", "step", "metric", "value"]]
    chosen = chosen.assign(value=chosen["value"].where(chosen["value"].abs() < HUGE, np.inf * np.sign(chosen["value"])))
    return chosen.reset_index(drop=True)


# ---- best configurations --------------------------------------------------------------------

def option_columns(runs: pd.DataFrame) -> list[str]:
    return sorted(c for c in runs.columns if c.startswith("opt."))


def group_columns(runs: pd.DataFrame) -> list[str]:
    return [*GROUP, *SETTING]


def best_configs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, problem, optimizer, setting): the lr (and optimizer arguments) with the best
    mean final validation metric over seeds, with its mean, std, seed count and run ids.

    A configuration with a diverged seed ranks below every one without (its mean badness is inf).
    Also: lrs (every lr tried in the group, pruned and failed trials included), trials, edge.
    """
    group, options = group_columns(runs), option_columns(runs)
    config = [*group, "lr", *options]
    if runs.empty:
        return pd.DataFrame(columns=[*config, "mean", "std", "seeds", "run_ids", "lrs", "trials", "edge"])
    rows = []
    for key, members in runs.groupby(group, dropna=False, sort=True):
        lrs = np.sort(members["lr"].dropna().unique())
        scored = members[members["badness"].notna()]
        row = dict(zip(group, key))
        row.update(trials=len(members), lrs=lrs, score_metric=members["score_metric"].iloc[0],
                   task=members["task"].iloc[0])
        if scored.empty:
            rows.append({**row, "lr": np.nan, "mean": np.nan, "std": np.nan, "seeds": 0, "diverged_seeds": 0,
                         "run_ids": [], "all_diverged": False, "edge": ""})
            continue
        per_config = scored.groupby(["lr", *options], dropna=False, sort=True).agg(
            badness=("badness", "mean"), mean=("score", "mean"), std=("score", "std"),
            seeds=("seed", "nunique"), diverged_seeds=("diverged", "sum"), run_ids=("run_id", list))
        best = per_config["badness"].idxmin() if np.isfinite(per_config["badness"]).any() else None
        if best is None:
            rows.append({**row, "lr": np.nan, "mean": np.nan, "std": np.nan, "seeds": scored["seed"].nunique(),
                         "diverged_seeds": int(scored["diverged"].sum()), "run_ids": [], "all_diverged": True,
                         "edge": f"every lr tried ({_lr_range(lrs)}) diverged: try smaller ones"})
            continue
        chosen = per_config.loc[best]
        best_key = best if isinstance(best, tuple) else (best,)
        row.update(dict(zip(["lr", *options], best_key)))
        row.update(mean=chosen["mean"], std=chosen["std"], seeds=int(chosen["seeds"]),
                   diverged_seeds=int(chosen["diverged_seeds"]), run_ids=chosen["run_ids"], all_diverged=False)
        row["edge"] = edge_warning(row, lrs)
        rows.append(row)
    return pd.DataFrame(rows)


def _lr_range(lrs) -> str:
    if len(lrs) < 2:
        return f"{lrs[0]:g} only" if len(lrs) else "none"
    return f"{lrs[0]:g}..{lrs[-1]:g}, {len(lrs)} values"


def edge_warning(row: dict, lrs) -> str:
    """'' unless the best lr is the smallest or largest tried: then the optimum may lie outside the grid."""
    if len(lrs) < 2 or not np.isfinite(row["lr"]):
        return ""
    side = "smallest" if math.isclose(row["lr"], lrs[0]) else "largest" if math.isclose(row["lr"], lrs[-1]) else ""
    if not side:
        return ""
    direction = "below" if side == "smallest" else "above"
    return (f"{row['problem']}/{row['optimizer']} ({row['experiment']}): best lr {row['lr']:g} is the {side} "
            f"tried ({_lr_range(lrs)}); extend the grid {direction} it")


def main_configs(runs: pd.DataFrame) -> pd.DataFrame:
    """The best configs of the plain comparison: default loss, zero_grad on, no accumulation or
    clipping; per (experiment, problem, optimizer) the setting with the most trials (e.g. one
    device or batch size of a devices sweep)."""
    best = best_configs(runs)
    if best.empty:
        return best
    default_loss = best["problem"].map(lambda p: PROBLEMS[p].default_loss if p in PROBLEMS else None)
    plain = ((best["zero_grad"].fillna(True).astype(bool)) & (best["accumulate"].fillna(1) == 1)
             & (best["clip_grad_norm"].isna()) & (default_loss.isna() | (best["loss"] == default_loss)))
    best = best[plain & (best["seeds"] > 0)]
    best = best.sort_values("trials", ascending=False, kind="stable")
    return best.drop_duplicates(list(GROUP)).sort_values(list(GROUP), ignore_index=True)


def panel_sources(main: pd.DataFrame, need_lrs: int = 1) -> dict:
    """problem -> the experiment that shows it best (most optimizers, then most trials)."""
    if main.empty:
        return {}
    usable = main[main["lrs"].map(len) >= need_lrs]
    chosen = {}
    for problem, rows in usable.groupby("problem", sort=False):
        scores = rows.groupby("experiment").agg(optimizers=("optimizer", "nunique"), trials=("trials", "sum"))
        chosen[problem] = scores.sort_values(["optimizers", "trials"], ascending=False).index[0]
    order = {name: i for i, name in enumerate(PROBLEMS)}
    return dict(sorted(chosen.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


# ---- time to target ------------------------------------------------------------------------

def target_for(problem: str, loss=None):
    """(metric, value) of the problem's validation target, or None when none is set.

    A val_loss target is stated in the problem's own loss: a run trained on another loss
    (mean_error, say) reports its val_loss in that loss, so it has no target.
    """
    target = TARGETS.get(problem)
    default = PROBLEMS[problem].default_loss if problem in PROBLEMS else None
    if target and target[0] == "val_loss" and isinstance(loss, str) and default and loss != default:
        return None
    return target


def time_to_target(frame: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run: the first evaluation step at which the validation metric reached its problem's
    target (NaN when never), and the seconds to it, prorated from the run's wall time."""
    runs = run_table(frame) if runs is None else runs
    rows = []
    by_metric = {}
    losses = runs["loss"] if "loss" in runs else pd.Series(None, index=runs.index, dtype=object)
    for (problem, loss), members in runs.assign(loss=losses.fillna("")).groupby(["problem", "loss"]):
        target = target_for(problem, loss or None)
        if target:
            by_metric.setdefault(target, []).extend(members["run_id"])
    for (metric, value), run_ids in by_metric.items():
        values = points(frame, run_ids, metric)
        values = values[np.isfinite(values["value"])]
        hit = values[values["value"] >= value] if metric.endswith("accuracy") else values[values["value"] <= value]
        first = hit.groupby("run_id")["step"].min()
        for run_id in run_ids:
            rows.append({"run_id": run_id, "target_metric": metric, "target": value,
                         "steps_to_target": first.get(run_id, np.nan)})
    found = pd.DataFrame(rows, columns=["run_id", "target_metric", "target", "steps_to_target"])
    found = found.merge(runs[["run_id", "wall_s", "last_step"]], on="run_id", how="left")
    found["seconds_to_target"] = found["wall_s"] * found["steps_to_target"] / found["last_step"].clip(lower=1)
    return found[["run_id", "target_metric", "target", "steps_to_target", "seconds_to_target"]]


def _median_with_misses(values: pd.Series) -> float:
    """Median over seeds where a seed that never reached the target counts as infinitely slow."""
    if values.empty:
        return np.nan
    median = float(np.median(values.fillna(np.inf)))
    return median if np.isfinite(median) else np.nan


# ---- the summary table ----------------------------------------------------------------------

SUMMARY_COLUMNS = ["experiment", "problem", "optimizer", "setting", "best_lr", "optimizer_args", "metric", "mean",
                   "std", "seeds", "diverged_seeds", "lrs_tried", "lr_range", "trials", "target",
                   "steps_to_target", "seconds_to_target", "target_reached", "edge_warning"]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per experiment x problem x optimizer (x setting where one varies): best lr, final metric
    mean ± std over seeds, seeds, trials spent, median steps and seconds to target, edge warning."""
    runs = run_table(frame)
    best = best_configs(runs)
    if best.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    reach = time_to_target(frame, runs).set_index("run_id")
    options = option_columns(runs)
    settings = _varying_settings(best)
    rows = []
    for _, row in best.iterrows():
        target = target_for(row["problem"], row.get("loss"))
        at_best = reach.reindex(row["run_ids"])
        reached = int(at_best["steps_to_target"].notna().sum())
        args = {c[4:]: row[c] for c in options if c in row and pd.notna(row[c]) and str(row[c]) != "None"}
        rows.append({
            "experiment": row["experiment"], "problem": row["problem"], "optimizer": row["optimizer"],
            "setting": " ".join(f"{c}={_plain(row[c])}" for c in settings.get((row["experiment"], row["problem"]), [])),
            "best_lr": row["lr"], "optimizer_args": " ".join(f"{k}={v}" for k, v in args.items()),
            "metric": row["score_metric"], "mean": row["mean"], "std": row["std"], "seeds": row["seeds"],
            "diverged_seeds": row["diverged_seeds"], "lrs_tried": len(row["lrs"]), "lr_range": _lr_range(row["lrs"]),
            "trials": row["trials"],
            "target": f"{target[0]} {'>=' if target[0].endswith('accuracy') else '<='} {target[1]:g}" if target else "",
            "steps_to_target": _median_with_misses(at_best["steps_to_target"]) if target else np.nan,
            "seconds_to_target": _median_with_misses(at_best["seconds_to_target"]) if target else np.nan,
            "target_reached": f"{reached}/{len(at_best)} seeds" if target and len(at_best) else "",
            "edge_warning": row["edge"],
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _varying_settings(best: pd.DataFrame) -> dict:
    varying = {}
    for key, rows in best.groupby(["experiment", "problem"]):
        varying[key] = [c for c in SETTING if rows[c].astype(str).nunique() > 1]
    return varying


def _plain(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def edge_warnings(frame: pd.DataFrame) -> list[str]:
    """Every group whose best lr is at the edge of the lrs tried for it."""
    best = best_configs(run_table(frame))
    return [w for w in best.get("edge", pd.Series(dtype=str)) if w]


# ---- the command ----------------------------------------------------------------------------

@dataclass
class Section:
    name: str  # file stem under figures/
    title: str
    spec: str  # the experiment spec whose sweep fills it
    caption: str = ""
    run_ids: tuple = ()
    note: str = ""  # why it is missing or partly empty
    error: str = ""


def load_frame(tracking_uri: str, experiments=None) -> pd.DataFrame:
    """The store's runs, or a UsageError saying what to run first."""
    from optimstudy.tidy import load_runs

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise UsageError(f"no tracking store at '{tracking_uri[len('sqlite:///'):]}'; run "
                         f"`optimstudy sweep {QUICKSTART}` first, or pass --tracking-uri")
    frame = load_runs(tracking_uri, experiments=experiments)
    if "problem" in frame:
        trained = frame["problem"].notna() & (frame["kind"].fillna("") != "sweep")
        if trained.any():
            return frame
    if experiments:
        known = sorted(set(load_runs(tracking_uri, with_metrics=False)["experiment"].dropna()))
        missing = ", ".join(f"'{name}'{near(name, known)}" for name in experiments)
        raise UsageError(f"no runs in experiment {missing} of '{tracking_uri}'; experiments with runs: "
                         f"{', '.join(known) or 'none'}. Run `optimstudy sweep {QUICKSTART}` to make some")
    raise UsageError(f"no runs in the tracking store '{tracking_uri}'; run `optimstudy sweep {QUICKSTART}` "
                     "first (or `optimstudy run`), then `optimstudy report`")


def report_command(args) -> int:
    import matplotlib

    from optimstudy.tracking import resolve_tracking_uri

    matplotlib.use("Agg")
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    started = time.perf_counter()
    frame = load_frame(tracking_uri, args.experiments)
    loaded = time.perf_counter() - started
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write the report to '{out}': {error.strerror}") from None
    sweep_warnings = sweep_edge_warnings(tracking_uri, sweep_parents(frame))
    sections = write_report(frame, out, tracking_uri=tracking_uri, sweep_warnings=sweep_warnings,
                            debug=getattr(args, "debug", False))
    logged = log_to_sweeps(tracking_uri, sweep_parents(frame), out)
    runs = run_table(frame)
    drawn = sum(bool(s.caption) for s in sections)
    print(f"report: {len(runs)} runs from {runs['experiment'].nunique()} experiment(s); {drawn} figures in "
          f"{out / 'figures'}; table in {out / 'summary.csv'} (loaded in {loaded:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    for section in sections:
        if section.note and not section.error:
            print(f"note: {section.title}: {section.note}", file=sys.stderr)
        if section.error:
            print(f"error: figure '{section.name}' failed: {section.error}", file=sys.stderr)
    if logged:
        print(f"logged the report as artifacts of {logged} sweep parent run(s) (artifact folder 'report')",
              file=sys.stderr)
    print(f"open {(out / 'report.html').resolve().as_uri()}")
    return 1 if any(s.error for s in sections) else 0


def sweep_parents(frame: pd.DataFrame) -> list[str]:
    """Sweep parent runs in the frame: the parents of its trials, and runs tagged kind=sweep."""
    parents = set(frame["parent_run_id"].dropna().unique()) if "parent_run_id" in frame else set()
    if "kind" in frame:
        parents |= set(frame.loc[frame["kind"] == "sweep", "run_id"].unique())
    return sorted(parents)


def sweep_edge_warnings(tracking_uri: str, parents: list[str]) -> list[str]:
    """The edge warnings each sweep recorded on its parent run (tag optimstudy.edge_warnings)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, found = MlflowClient(tracking_uri), []
    for run_id in parents:
        try:
            text = client.get_run(run_id).data.tags.get("optimstudy.edge_warnings")
        except MlflowException:
            continue  # a parent deleted from the store: its children are still reported
        try:
            found.extend(str(w) for w in json.loads(text or "[]"))
        except (json.JSONDecodeError, TypeError):
            found.append(f"(run {run_id}: unreadable optimstudy.edge_warnings tag {text[:80]!r})")
    return found


def log_to_sweeps(tracking_uri: str, parents: list[str], out: Path) -> int:
    """Attach the page, table and figures to each sweep's parent run (artifact folder 'report')."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, logged = MlflowClient(tracking_uri), 0
    for run_id in parents:
        try:
            client.log_artifacts(run_id, str(out / "figures"), artifact_path="report/figures")
            for name in ("report.html", "summary.csv"):
                client.log_artifact(run_id, str(out / name), artifact_path="report")
            logged += 1
        except (MlflowException, OSError) as error:
            print(f"warning: could not log the report to sweep run {run_id}: {str(error)[:200]}", file=sys.stderr)
    return logged


def write_report(frame: pd.DataFrame, out, *, tracking_uri: str = "", sweep_warnings=(), debug=False,
                 svg=True) -> list[Section]:
    """Every figure (PNG, and SVG unless svg=False) under out/figures, out/summary.csv and out/report.html."""
    from optimstudy import figures

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections = []
    for name, (function, title, spec) in figures.FIGURES.items():
        section = Section(name, title, spec)
        for stale in (out / "figures").glob(f"{name}.*"):
            stale.unlink()
        try:
            drawn = function(frame)
        except Exception as error:  # one broken figure must not cost the others; the page says so
            if debug:
                raise
            section.error = f"{type(error).__name__}: {error}"
            sections.append(section)
            continue
        if drawn is None:
            section.note = f"no runs for it yet: run `optimstudy sweep {spec}`"
        else:
            figures.save(drawn.figure, out / "figures" / name, svg=svg)
            section.caption, section.run_ids, section.note = drawn.caption, tuple(drawn.run_ids), drawn.note
        sections.append(section)
    summary = summary_table(frame)
    summary.to_csv(out / "summary.csv", index=False)
    warnings = [w for w in summary["edge_warning"] if w]
    page = render_page(frame, sections, summary, warnings, list(sweep_warnings), tracking_uri)
    (out / "report.html").write_text(page, encoding="utf-8")
    return sections


# ---- the page -------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
.note { color: #8a5a00; } .error { color: #b00020; } .warn { color: #8a5a00; }
.source { color: #555; font-size: 0.9em; }
"""


def render_page(frame, sections, summary, warnings, sweep_warnings, tracking_uri) -> str:
    runs = run_table(frame)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>optimstudy report</title>"
             f"<style>{PAGE_STYLE}</style></head><body>",
             "<h1>optimstudy report: how optimizers and learning rates shape training</h1>",
             f"<p class='source'>Drawn from the tracking store <code>{e(tracking_uri)}</code> on "
             f"{time.strftime('%Y-%m-%d %H:%M')}; regenerate with <code>optimstudy report</code>.</p>",
             "<h2>Runs</h2>", _runs_overview(runs)]
    parts.append("<h2>Summary: each optimizer at its best learning rate</h2>")
    parts.append("<p>Best lr = best mean final validation metric over seeds (val accuracy for classifiers, val "
                 "loss otherwise); a learning rate with a diverged seed ranks below every one without. Time to "
                 "target (as in AlgoPerf): the median over seeds of the first evaluation step at which the "
                 "validation metric reached the problem's fixed target, a seed that never reached it counting as "
                 "infinitely slow; seconds are prorated from each run's wall time. Also in "
                 "<a href='summary.csv'>summary.csv</a>.</p>")
    parts.append(_summary_html(summary))
    if warnings or sweep_warnings:
        parts.append("<h3>Edge-of-grid warnings</h3><p>The best lr at the edge of the grid means the true optimum "
                     "may lie outside it: the comparison is not yet fair to that optimizer.</p><ul>")
        parts += [f"<li class='warn'>{e(w)}</li>" for w in warnings]
        parts += [f"<li class='warn'>recorded by the sweep: {e(w)}</li>" for w in sweep_warnings
                  if w not in warnings]
        parts.append("</ul>")
    else:
        parts.append("<p>No edge-of-grid warnings: every best lr lies inside the range tried.</p>")
    for number, section in enumerate(sections, start=1):
        parts.append(f"<h2>{number}. {e(section.title)}</h2>")
        if section.error:
            parts.append(f"<p class='error'>This figure failed: {e(section.error)}. Rerun with "
                         "<code>optimstudy --debug report</code> for the traceback.</p>")
            continue
        if section.caption:
            parts.append(f"<p><img src='figures/{section.name}.png' alt='{e(section.title)}'></p>")
            parts.append(f"<p>{e(section.caption)}</p>")
            parts.append(f"<p class='source'>Drawn from {e(_sources(runs, section.run_ids))}.</p>")
        if section.note:
            parts.append(f"<p class='note'>{e(section.note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _sources(runs: pd.DataFrame, run_ids) -> str:
    used = runs[runs["run_id"].isin(set(run_ids))]
    if used.empty:
        return "no runs (computed from the lesson's numbers and generated data)"
    counts = used["experiment"].value_counts().sort_index()
    return ", ".join(f"experiment '{name}' ({count} run{'s' if count != 1 else ''})" for name, count in counts.items())


def _runs_overview(runs: pd.DataFrame) -> str:
    table = runs.groupby("experiment").agg(
        runs=("run_id", "size"), finished=("status", lambda s: int((s == "FINISHED").sum())),
        diverged=("diverged", "sum"), failed=("status", lambda s: int((s == "FAILED").sum())),
        killed_or_pruned=("status", lambda s: int((s == "KILLED").sum())),
        problems=("problem", lambda s: ", ".join(sorted(s.unique()))),
        optimizers=("optimizer", lambda s: ", ".join(sorted(s.unique()))))
    return _html_table(table.reset_index(), text_columns={"experiment", "problems", "optimizers"})


def _summary_html(summary: pd.DataFrame) -> str:
    shown = summary.copy()
    shown["final metric (mean ± std)"] = [
        _mean_std(m, s, metric) for m, s, metric in zip(summary["mean"], summary["std"], summary["metric"])]
    shown["best_lr"] = [f"{v:.3g}" if pd.notna(v) else "all diverged" if d else "no finished run"
                        for v, d in zip(summary["best_lr"], summary["diverged_seeds"])]
    shown["steps_to_target"] = [
        f"{v:,.0f}" if pd.notna(v) else ("not reached" if t else "no target")
        for v, t in zip(summary["steps_to_target"], summary["target"])]
    shown["seconds_to_target"] = summary["seconds_to_target"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
    columns = ["experiment", "problem", "optimizer", "setting", "best_lr", "optimizer_args", "metric",
               "final metric (mean ± std)", "seeds", "diverged_seeds", "lrs_tried", "lr_range", "trials", "target",
               "steps_to_target", "seconds_to_target", "target_reached", "edge_warning"]
    shown = shown[[c for c in columns if c not in ("setting", "optimizer_args") or shown[c].astype(bool).any()]]
    return _html_table(shown, text_columns={"experiment", "problem", "optimizer", "setting", "optimizer_args",
                                            "metric", "lr_range", "target", "edge_warning"})


def _mean_std(mean, std, metric) -> str:
    if pd.isna(mean):
        return "n/a"
    if metric.endswith("accuracy"):
        return f"{mean:.2%} ± {std:.2%}" if pd.notna(std) else f"{mean:.2%} (one seed)"
    return f"{mean:.4g} ± {std:.2g}" if pd.notna(std) else f"{mean:.4g} (one seed)"


def _html_table(table: pd.DataFrame, text_columns=()) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for column in table.columns:
            value = row[column]
            text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            css = " class='text'" if column in text_columns else ""
            cells.append(f"<td{css}>{e(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div class=\"wide\"><table><tr>{head}</tr>{''.join(body)}</table></div>"
