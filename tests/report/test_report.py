"""The report: known synthetic runs in a real MLflow store -> the results, every analysis script, the page.

Synthetic runs are written the way the training loop writes them (MlflowClient: create_run with
the sweep's tags, log_batch of RunConfig.params() and of metric points, set_terminated), with
values chosen so that the means, stds, best lrs, times to target and edge warnings are known.
The statistics (verdicts, intervals) are checked on real runs of the training loop, and the
spec examples of the README and docs/usage.md are swept and reported for real.
"""
import html
import json
import math
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import in_process, once_per_session
from matplotlib.image import imread

from optimstudy.facts import VALLEY_START
from optimstudy.problems.registry import PROBLEMS
from optimstudy.report.build import write_report
from optimstudy.report.scripts import BUILT_IN, load_scripts
from optimstudy.results import aggregates, comparison
from optimstudy.results.rankings import verdicts
from optimstudy.results.study import Study
from optimstudy.results.summary import target_for, time_to_target
from optimstudy.results.tables import best_configurations, edge_warnings, objective_value, run_table
from optimstudy.run.config import RunConfig
from optimstudy.tracking.client import experiment_id
from optimstudy.tracking.reader import load_runs

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (REPO / "src" / "optimstudy" / "report" / "figures").glob("*.py"))


# ---- writing synthetic runs -------------------------------------------------------------------

def new_sweep(client, uri, experiment: str, warnings=()) -> str:
    run = client.create_run(experiment_id(uri, experiment), run_name=f"sweep {experiment}", tags={
        "optimstudy.kind": "sweep", "optimstudy.study": experiment,
        "optimstudy.edge_warnings": json.dumps(list(warnings))})
    client.log_metric(run.info.run_id, "trials_complete", 1)  # as sweep.py does: parents hold metrics too
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_run(client, uri, experiment, *, parent=None, status="FINISHED", steps=20, eval_every=5, val=None,
            accuracy=None, final=None, diverge_at=None, extra=None, device_name="test CPU", trial=0, run_tags=None,
            **config):
    """One run as train() logs it. `val`: val_loss at steps 0, eval_every, ...; `final`: the final_* and
    other last-step metrics (defaults derived from `val`); `extra`: more per-step series {name: values}."""
    problem = config["problem"]
    config.setdefault("loss", PROBLEMS[problem].default_loss)
    config = RunConfig(steps=steps, threads=1, eval_every=eval_every, **config)
    tags = {"optimstudy.kind": "trial" if parent else "run", "device.name": device_name, "dataset": problem}
    if parent:
        tags.update({"mlflow.parentRunId": parent, "optimstudy.study": experiment, "optimstudy.trial": str(trial)})
    tags.update({k: str(v) for k, v in (run_tags or {}).items()})
    run_id = client.create_run(experiment_id(uri, experiment), tags=tags).info.run_id
    from mlflow.entities import Metric, Param

    client.log_batch(run_id, params=[Param(k, "None" if v is None else str(v)) for k, v in config.params().items()])
    last = diverge_at or steps
    step_values = np.arange(1, last + 1)
    train_loss = 1.0 / step_values
    if diverge_at:
        train_loss[-3:] = [50.0, 1e6, math.inf]
    series = {"train_loss": train_loss, "grad_norm": 2.0 / step_values, "update_norm": 0.1 / step_values,
              "lr": np.full(last, config.lr), **(extra or {})}
    metrics = [Metric(name, float(v), 0, int(s)) for name, values in series.items()
               for s, v in zip(step_values, values)]
    eval_steps = list(range(0, last + 1, eval_every))
    val = val if val is not None else np.linspace(1.0, 0.1, len(eval_steps))
    metrics += [Metric("val_loss", float(v), 0, s) for s, v in zip(eval_steps, val)]
    if accuracy is not None:
        metrics += [Metric("val_accuracy", float(v), 0, s) for s, v in zip(eval_steps, accuracy)]
    final = dict(final or {})
    if status == "FINISHED":
        final.setdefault("diverged", float(bool(diverge_at)))
        final.setdefault("wall_s", 2.0)
        final.setdefault("samples_per_s", 1000.0)
        if not diverge_at:
            final.setdefault("final_val_loss", float(val[-1]))
            if accuracy is not None:
                final.setdefault("final_val_accuracy", float(accuracy[-1]))
        else:
            final.setdefault("diverged_at_step", float(diverge_at))
    metrics += [Metric(name, float(v), 0, last) for name, v in final.items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    client.set_terminated(run_id, status)
    return run_id


def grid_runs(client, uri) -> str:
    """linreg, sgd and adam at lr 0.01, 0.1, 1 and seeds 0-2, with known finals (val_loss, lower is better).

    sgd: best lr 0.1 (0.05 + 0.01 * seed); at lr 1 seed 0 diverges, so the better mean of seeds 1-2
    (0.02) must not win. adam: best lr 1 (0.04 + 0.01 * seed), the largest tried: an edge warning.
    adam lr 1 reaches the target val_loss <= 0.02 at step 15 (seed 0), 10 (seed 1), never (seed 2).
    """
    parent = new_sweep(client, uri, "grid")
    finals = {("sgd", 0.01): 0.5, ("sgd", 0.1): 0.05, ("sgd", 1.0): 0.02,
              ("adam", 0.01): 0.9, ("adam", 0.1): 0.3, ("adam", 1.0): 0.04}
    adam_curves = {0: [1.0, 0.5, 0.1, 0.015], 1: [1.0, 0.5, 0.018, 0.03], 2: [1.0, 0.5, 0.2, 0.1]}
    trial = 0
    for (optimizer, lr), value in finals.items():
        for seed in range(3):
            final = value + 0.01 * seed
            val = [1.0, 0.8, 0.6, 0.4, final]
            if (optimizer, lr) == ("adam", 1.0):
                val = adam_curves[seed] + [final]
            diverge = 8 if (optimizer, lr, seed) == ("sgd", 1.0, 0) else None
            log_run(client, uri, "grid", parent=parent, problem="linreg", optimizer=optimizer, lr=lr, seed=seed,
                    val=val[:2] if diverge else val, diverge_at=diverge, trial=trial)
            trial += 1
    return parent



def classifier_runs(client, uri) -> None:
    """mnist_mlp with sgd: lr 0.1 has the higher accuracy (0.95, 0.97) but the higher val loss. In
    "mnist" the runs carry no objective tags (val_loss, minimize); in "mnist_acc" the sweep's tags
    say val_accuracy, maximize."""
    for experiment, tags in (("mnist", {}), ("mnist_acc", {"optimstudy.objective_metric": "val_accuracy",
                                                           "optimstudy.objective_direction": "maximize"})):
        for lr, accuracies in ((0.01, (0.90, 0.92)), (0.1, (0.95, 0.97))):
            for seed, final in enumerate(accuracies):
                log_run(client, uri, experiment, problem="mnist_mlp", optimizer="sgd", lr=lr, seed=seed,
                        val=[2.3, 0.4, 0.3, 0.2, 0.2 + lr], accuracy=[0.1, 0.8, 0.96, 0.9, final], run_tags=tags)


def labelled_runs(client, uri) -> None:
    """The README's spec shape: adam with betas beside plain sgd (opt.betas missing for sgd), adam also
    under a label; a search with an lr range; confirmation runs on new seeds that must not compete."""
    parent = new_sweep(client, uri, "readme")
    for label, optimizer, lr, opt, value in (("sgd", "sgd", 0.1, {}, 0.3), ("sgd", "sgd", 0.01, {}, 0.5),
                                             ("adam", "adam", 1e-3, {"betas": (0.9, 0.999)}, 0.2),
                                             ("adam", "adam", 1e-2, {"betas": (0.9, 0.999)}, 0.25),
                                             ("lion", "adam", 1e-3, {"betas": (0.9, 0.99)}, 0.22),
                                             ("lion", "adam", 1e-4, {"betas": (0.9, 0.99)}, 0.4)):
        for seed in (0, 1):
            log_run(client, uri, "readme", parent=parent, problem="linreg", optimizer=optimizer, lr=lr, opt=opt,
                    seed=seed, val=[1.0, 0.8, 0.6, 0.4, value + 0.01 * seed],
                    run_tags={"optimstudy.optimizer_label": label, "optimstudy.phase": "grid"})
    for seed in (5, 6):  # confirmation of adam lr 1e-3: far better values that must not make lr 1e-2 lose
        log_run(client, uri, "readme", parent=parent, problem="linreg", optimizer="adam", lr=1e-3,
                opt={"betas": (0.9, 0.999)}, seed=seed, val=[1.0, 0.8, 0.6, 0.4, 0.1 + 0.02 * seed],
                run_tags={"optimstudy.optimizer_label": "adam", "optimstudy.phase": "confirm"})
    log_run(client, uri, "readme", parent=parent, problem="linreg", optimizer="adam", lr=0.5, seed=0,
            opt={"betas": (0.9, 0.999)}, val=[1.0, 0.8, 0.6, 0.4, 0.0001],
            run_tags={"optimstudy.optimizer_label": "adam", "optimstudy.phase": "confirm"})
    parent = new_sweep(client, uri, "search")
    for trial, (lr, value) in enumerate(((1e-4, 0.5), (3e-3, 0.3), (0.09, 0.1))):
        log_run(client, uri, "search", parent=parent, problem="linreg", optimizer="sgd", lr=lr, seed=0, trial=trial,
                val=[1.0, 0.8, 0.6, 0.4, value],
                run_tags={"optimstudy.phase": "search", "optimstudy.lr_space": json.dumps([1e-5, 0.1, True])})



def every_figure_store(client, uri) -> None:
    """Runs for every figure, each a little odd: a NaN loss, inf values, a pruned and a failed trial."""
    grid_runs(client, uri)
    classifier_runs(client, uri)
    labelled_runs(client, uri)
    log_run(client, uri, "single", problem="linreg", optimizer="sgd", lr=0.1, seed=0)
    parent = new_sweep(client, uri, "zero_grad")
    steps = np.arange(1, 21)
    for seed in (0, 1):
        log_run(client, uri, "zero_grad", parent=parent, problem="mnist_mlp", optimizer="sgd", lr=0.1, seed=seed,
                accuracy=[0.1, 0.5, 0.7, 0.8, 0.9])
        log_run(client, uri, "zero_grad", parent=parent, problem="mnist_mlp", optimizer="sgd", lr=0.1, seed=seed,
                zero_grad=False, accuracy=[0.1, 0.3, 0.2, 0.2, 0.1], extra={"grad_norm": 2.0 * steps})
    log_run(client, uri, "zero_grad", parent=parent, problem="mnist_mlp", optimizer="sgd", lr=0.1, seed=0,
            accumulate=4, batch_size=16, accuracy=[0.1, 0.5, 0.7, 0.8, 0.9])
    parent = new_sweep(client, uri, "loss_functions")
    for loss in ("mse", "mean_error"):
        for lr in (0.01, 0.1):
            for seed in (0, 1):
                diverge = 12 if (loss, lr, seed) == ("mean_error", 0.1, 1) else None
                series = {"train_loss": -0.5 * steps} if loss == "mean_error" else None
                log_run(client, uri, "loss_functions", parent=parent, problem="linreg", optimizer="sgd", lr=lr,
                        seed=seed, loss=loss, extra=series, diverge_at=diverge,
                        final={"final_excess_loss": 40.0 * lr if loss == "mean_error" else 1e-4})
    parent = new_sweep(client, uri, "landscape")
    for optimizer, lr in (("sgd", 0.5), ("momentum", 0.05), ("adam", 0.2), ("adam", 0.02)):
        fraction = np.exp(-steps / (4 if optimizer == "sgd" else 8))
        wiggle = 0.3 * np.sin(steps) * fraction if optimizer == "momentum" else 0
        w1 = 1 + (VALLEY_START[0] - 1) * fraction + wiggle
        w2 = 1 + (VALLEY_START[1] - 1) * fraction
        log_run(client, uri, "landscape", parent=parent, problem="valley", optimizer=optimizer, lr=lr, seed=0,
                extra={"w1": w1, "w2": w2}, val=[10, 1, 0.1, 0.05, 0.01 + lr / 100])
    parent = new_sweep(client, uri, "devices")
    for device, speed in (("cpu", 3e4), ("cuda", 9e5)):
        for batch in (64, 256):
            log_run(client, uri, "devices", parent=parent, problem="mnist_mlp", optimizer="adam", lr=1e-3, seed=0,
                    device=device, batch_size=batch, device_name=f"{device} chip",
                    accuracy=[0.1, 0.8, 0.9, 0.95, 0.96], final={"samples_per_s": speed * batch / 64},
                    extra={"train_loss": 1.0 / steps + (1e-6 * steps if device == "cuda" else 0)})
    # odd runs: a NaN in the middle of a curve, a pruned trial, a failed one with no points at all
    log_run(client, uri, "odd", problem="linreg", optimizer="sgd", lr=0.1, seed=7,
            extra={"train_loss": np.where(steps == 5, np.nan, 1.0 / steps), "grad_norm": np.full(20, np.nan)})
    log_run(client, uri, "odd", problem="linreg", optimizer="adam", lr=0.5, seed=0, status="KILLED", steps=10,
            val=[1.0, 0.9])
    failed = client.create_run(experiment_id(uri, "odd"), tags={"optimstudy.kind": "run"})
    client.set_terminated(failed.info.run_id, "FAILED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the session, the pytest-xdist workers included (writing runs is most of the cost, and
    the tests only read it): every figure's runs, the grid among them."""
    def build(folder):
        from mlflow import MlflowClient

        uri = f"sqlite:///{folder / 'mlflow.db'}"
        every_figure_store(MlflowClient(uri), uri)

    return f"sqlite:///{once_per_session(tmp_path_factory, 'report-store', build) / 'mlflow.db'}"


@pytest.fixture(scope="module")
def grid_frame(store):
    return load_runs(store, experiments=["grid"])


def best_of(store, experiment) -> pd.DataFrame:
    return best_configurations(run_table(load_runs(store, experiments=[experiment]))).set_index("optimizer")



def test_a_store_whose_tables_differ_is_read_through_mlflow_with_the_same_result(store, monkeypatch):
    """The SQL reader knows MLflow's tables as they are today; where a query fails on a store that
    answers (another MLflow version), the reader falls back to MlflowClient and gets the same table."""
    from optimstudy.tracking import reader as stores

    by_sql = load_runs(store, experiments=["grid"])
    found_sql_tables = []

    def a_newer_schema(url, *args):
        with stores._sql_cursor(url) as (cursor, _):
            found_sql_tables.append(cursor.execute("SELECT count(*) FROM runs").fetchone()[0])
            cursor.execute("SELECT run_uuid, renamed_column FROM metrics")  # no such column here
    monkeypatch.setattr(stores, "_run_rows_by_sql", a_newer_schema)
    monkeypatch.setattr(stores, "_metric_points_by_sql", a_newer_schema)
    by_api = load_runs(store, experiments=["grid"])
    assert found_sql_tables, "the SQL path was tried first"
    key = ["run_id", "metric", "step"]
    pd.testing.assert_frame_equal(by_sql.sort_values(key).reset_index(drop=True)[by_api.columns],
                                  by_api.sort_values(key).reset_index(drop=True), check_dtype=False,
                                  check_categorical=False)
    import psycopg

    with pytest.raises(psycopg.OperationalError):  # a store that does not answer is an error, not a fallback
        stores._by_sql_unless_schema_differs(a_newer_schema, "postgresql+psycopg://nobody:pw@127.0.0.1:1/none")


def test_reading_a_store_that_is_missing_or_still_being_created_never_creates_it(tmp_path):
    """A reader polling a store that another command is creating must neither create the file nor
    run MLflow's migrations (MlflowClient would, racing the creator without its lock: one fails)."""
    import sqlite3

    path = tmp_path / "mlruns" / "mlflow.db"
    path.parent.mkdir()
    uri = f"sqlite:///{path}"
    assert load_runs(uri).empty and not path.exists()
    sqlite3.connect(path).close()  # the creator has opened the file, and made no table yet
    assert load_runs(uri).empty and load_runs(uri, with_metrics=False).empty
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


# ---- the numbers ----------------------------------------------------------------------------

def test_run_table_has_one_row_per_training_run(grid_frame):
    runs = run_table(grid_frame)
    assert len(runs) == 18  # the sweep's parent run is not a training run
    assert runs["diverged"].sum() == 1
    diverged = runs[runs["diverged"]].iloc[0]
    assert (diverged["label"], diverged["lr"], diverged["seed"]) == ("sgd", 1.0, 0)
    assert diverged["last_step"] == 8 and diverged["objective"] == math.inf
    assert set(runs["objective_metric"]) == {"val_loss"} and set(runs["objective_direction"]) == {"minimize"}


def test_objective_value_is_the_rule_the_sweep_uses():
    assert objective_value(0.3, False, "minimize") == 0.3
    assert objective_value(0.3, True, "minimize") == math.inf
    assert objective_value(None, False, "maximize") == -math.inf
    assert objective_value(math.nan, False, "minimize") == math.inf


def test_best_lr_mean_and_std_over_seeds(grid_frame):
    best = best_configurations(run_table(grid_frame)).set_index("optimizer")
    sgd, adam = best.loc["sgd"], best.loc["adam"]
    assert sgd["lr"] == 0.1  # lr 1 has a better mean over its finished seeds, but one seed diverged
    assert sgd["mean"] == pytest.approx(0.06) and sgd["std"] == pytest.approx(0.01)
    assert (sgd["seeds"], sgd["trials"], list(sgd["lrs"])) == (3, 9, [0.01, 0.1, 1.0])
    assert adam["lr"] == 1.0 and adam["mean"] == pytest.approx(0.05) and adam["std"] == pytest.approx(0.01)
    assert sgd["edge_warning"] == ""
    assert adam["edge_warning"] == ("linreg/adam (grid): best lr 1 is the largest tried (0.01..1, 3 values); "
                                    "extend the grid above it")


def test_edge_warning_only_for_the_optimizer_at_the_grid_edge(grid_frame):
    warnings = edge_warnings(best_configurations(run_table(grid_frame)))
    assert len(warnings) == 1 and warnings[0].startswith("linreg/adam")


def test_a_search_is_at_the_edge_of_its_lr_range_not_of_the_lrs_it_sampled(store):
    best = best_of(store, "search").loc["sgd"]
    assert best["lr"] == 0.09 and best["trials"] == 3
    # 0.09 is the largest lr sampled, but inside the range 1e-5..0.1 only 1% of its log width from the end
    assert best["edge_warning"] == ("linreg/sgd (search): best lr 0.09 is near the largest of the search range "
                                    "(1e-05..0.1); extend the range above it")


def test_the_readme_spec_shape_reports_without_a_nan_key(store):
    """[optimizers.adam] betas = [0.9, 0.999] beside a plain [optimizers.sgd]: was `KeyError: nan`."""
    best = best_of(store, "readme")
    assert set(best.index) == {"sgd", "adam", "lion"}  # the label, not the class: lion is an adam
    assert best.loc["sgd", "lr"] == 0.1 and best.loc["sgd", "args"] == ""
    assert best.loc["adam", "args"] == "betas=(0.9, 0.999)" and best.loc["lion", "args"] == "betas=(0.9, 0.99)"
    assert best.loc["lion", "optimizer_class"] == "adam"


def test_confirmation_runs_never_compete_and_are_reported_beside_the_best(store):
    adam = best_of(store, "readme").loc["adam"]
    assert adam["lr"] == 1e-3 and adam["seeds"] == 2 and adam["trials"] == 4  # the lr 0.5 confirm run is not a trial
    assert adam["confirm_seeds"] == 2 and adam["confirm_mean"] == pytest.approx(0.1 + 0.02 * 5.5)
    assert adam["confirm_seed_values"] == pytest.approx({5: 0.2, 6: 0.22})  # what the verdicts test
    assert adam["configurations"] == 2


def test_the_ranking_follows_the_objective_each_run_carries(store):
    untagged = best_of(store, "mnist").loc["sgd"]  # default: val_loss, minimize
    assert (untagged["lr"], untagged["metric"], untagged["direction"]) == (0.01, "val_loss", "minimize")
    tagged = best_of(store, "mnist_acc").loc["sgd"]
    assert (tagged["lr"], tagged["metric"], tagged["direction"]) == (0.1, "val_accuracy", "maximize")
    assert tagged["mean"] == pytest.approx(0.96) and tagged["std"] == pytest.approx(0.02 / math.sqrt(2))


def test_time_to_target_counts_a_missed_target_as_not_reached(grid_frame):
    study = Study(grid_frame)
    runs = study.runs
    reach = time_to_target(study).merge(runs[["run_id", "label", "lr", "seed"]], on="run_id")
    adam = reach[(reach["label"] == "adam") & (reach["lr"] == 1.0)].set_index("seed")
    assert adam.loc[0, "steps_to_target"] == 15 and adam.loc[1, "steps_to_target"] == 10
    assert math.isnan(adam.loc[2, "steps_to_target"])
    assert adam.loc[0, "seconds_to_target"] == pytest.approx(2.0 * 15 / 20)  # prorated from wall_s = 2 s
    summary = study.summary.set_index("optimizer")
    assert summary.loc["adam", "steps_to_target"] == 15  # median of 15, 10 and never
    assert summary.loc["adam", "seconds_to_target"] == pytest.approx(1.5)
    assert summary.loc["adam", "target_reached"] == "2/3 seeds"
    assert math.isnan(summary.loc["sgd", "steps_to_target"])  # no seed at lr 0.1 reaches 0.02
    assert summary.loc["sgd", "target_reached"] == "0/3 seeds"
    assert summary.loc["adam", "target"] == "val_loss <= 0.02"


def test_a_val_loss_target_applies_only_to_runs_trained_on_the_problems_own_loss():
    assert target_for("linreg", "mse") == PROBLEMS["linreg"].target
    assert target_for("linreg", "mean_error") is None  # its val_loss is a mean error: can be negative
    assert target_for("mnist_mlp", "cross_entropy") == PROBLEMS["mnist_mlp"].target  # accuracy needs no loss
    assert target_for("nowhere.module:problem") is None  # a problem that does not import here has none


def test_the_reports_torch_free_tables_match_the_registries():
    """The report never imports torch: what it knows of built-in problems, optimizers and the lesson's
    numbers without it must equal the real thing."""
    import importlib.util

    from optimstudy.facts import BUILTIN_OPTIMIZERS, BUILTIN_PROBLEMS, ProblemFacts
    from optimstudy.problems.losses import LESSON_PAIRS, lesson_numbers
    from optimstudy.problems.optimizers import OPTIMIZERS

    assert BUILTIN_PROBLEMS == {name: ProblemFacts(p.task, p.default_loss, p.target, p.has_optimum)
                                for name, p in PROBLEMS.items()}  # has_optimum: the registry's optimum
    import torch

    registered = tuple(name for name in BUILTIN_OPTIMIZERS if name != "muon" or hasattr(torch.optim, "Muon"))
    assert list(BUILTIN_PROBLEMS) == list(PROBLEMS) and registered == tuple(OPTIMIZERS)
    spec = importlib.util.spec_from_file_location(
        "loss_functions_script", REPO / "src" / "optimstudy" / "report" / "figures" / "loss_functions.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.LESSON_PAIRS == LESSON_PAIRS
    expected = lesson_numbers()
    assert script.lesson_numbers() == {key: pytest.approx(expected[key], rel=1e-9) for key in script.lesson_numbers()}
    import seaborn as sns  # the figures' style, copied so that the report does not import seaborn (and scipy)

    from optimstudy.report import plotting

    assert plotting.WHITEGRID == {k: v for k, v in sns.axes_style("whitegrid").items() if k != "image.cmap"}
    assert plotting.NOTEBOOK_085 == sns.plotting_context("notebook", font_scale=0.85)
    for name, colors in (("tab10", 10), ("Dark2", 8), ("Set2", 2)):
        assert plotting.palette(name, colors) == sns.color_palette(name, colors)


def test_the_summary_shows_the_median_the_t_interval_of_the_mean_and_the_robust_lr_range(grid_frame):
    from scipy import stats

    summary = Study(grid_frame).summary.set_index("optimizer")
    sgd = summary.loc["sgd"]
    assert sgd["median"] == pytest.approx(0.06) and sgd["seeds"] == 3
    half = stats.t.ppf(0.975, 2) * sgd["std"] / math.sqrt(3)  # 3 seeds: Student's t, not the min..max
    assert (sgd["ci_low"], sgd["ci_high"]) == pytest.approx((sgd["mean"] - half, sgd["mean"] + half))
    assert sgd["ci_kind"] == "t" and sgd["ci_low"] < 0.05 and sgd["ci_high"] > 0.07
    assert sgd["robust_lr_range"] == "0.1..0.1" and sgd["robust_decades"] == 0  # lr 0.01 is 8x worse


# ---- statistics -----------------------------------------------------------------------------

def test_mean_interval_agrees_with_scipy_and_two_seeds_give_a_range():
    from scipy import stats

    values = np.array([0.912, 0.925, 0.918, 0.931, 0.909, 0.927, 0.915])
    low, high, kind = comparison.mean_interval(values)
    reference = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert kind == "t" and (low, high) == pytest.approx(reference)
    assert comparison.mean_interval([0.5, 0.7]) == (0.5, 0.7, "range")  # two seeds: no 95% interval
    assert all(math.isnan(v) for v in comparison.mean_interval([0.5])[:2])  # one seed: nothing


def test_paired_difference_interval_and_p_agree_with_scipy():
    from scipy import stats

    a = {seed: 0.30 + 0.01 * seed + 0.003 * (-1) ** seed for seed in range(5)}
    b = {seed: 0.20 + 0.012 * seed for seed in range(5)}
    found = comparison.compare(a, b, "minimize", ("sgd", "adam"))
    differences = np.array([a[s] - b[s] for s in range(5)])
    reference = stats.ttest_rel(list(a.values()), list(b.values()))
    assert found["test"] == "paired t-test" and found["p_value"] == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert found["difference"] == pytest.approx(differences.mean()) and found["better"] == "adam"


def test_unmatched_seeds_use_a_rank_test_and_few_seeds_decide_nothing():
    found = comparison.compare({0: 0.9, 1: 0.91, 2: 0.92, 3: 0.93}, {5: 0.5, 6: 0.52, 7: 0.51, 8: 0.53}, "maximize",
                               ("a", "b"))
    assert found["test"] == "Mann-Whitney" and found["p_value"] == pytest.approx(2 / 70) and found["better"] == "a"
    two = comparison.decide(pd.DataFrame([comparison.compare({0: 0.9, 1: 0.91}, {0: 0.5, 1: 0.52}, "maximize",
                                                             ("a", "b"))]))
    assert two["verdict"].iloc[0] == "not distinguishable with 2 seeds"
    assert two["seeds_needed"].iloc[0] == comparison.MIN_SEEDS


def test_performance_profiles_count_a_problem_never_solved_as_a_failure():
    best = pd.DataFrame({"experiment": "e", "problem": ["p1", "p1", "p2", "p2"], "optimizer": ["a", "b", "a", "b"],
                         "run_ids": [["a1"], ["b1"], ["a2"], ["b2"]]})
    reach = pd.DataFrame({"run_id": ["a1", "b1", "a2", "b2"], "target": 0.9,
                          "steps_to_target": [10, 20, 30, np.nan], "seconds_to_target": [1.0, 1.5, 3.0, np.nan]})
    profiles = aggregates.performance_profiles(best, reach, taus=[1, 1.5, 2, 64])
    steps = profiles[profiles["unit"] == "steps"].pivot_table(index="optimizer", columns="tau", values="solved")
    assert steps.loc["a"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert steps.loc["b"].tolist() == [0.0, 0.0, 0.5, 0.5]  # 2x slower on p1, never on p2
    seconds = profiles[profiles["unit"] == "seconds"].pivot_table(index="optimizer", columns="tau", values="solved")
    assert seconds.loc["b"].tolist() == [0.0, 0.5, 0.5, 0.5]


def test_tuning_curves_end_at_the_best_configuration(grid_frame):
    study = Study(grid_frame)
    curves = aggregates.tuning_curves(study.runs, study.best).set_index(["optimizer", "configurations"])
    assert curves.loc[("sgd", 3), "median"] == pytest.approx(0.06)  # all 3 lrs tried: the best one's mean
    assert curves.loc[("sgd", 1), "low"] <= curves.loc[("sgd", 1), "median"] <= curves.loc[("sgd", 1), "high"]
    assert curves.loc[("adam", 1), "high"] > curves.loc[("adam", 3), "median"]  # one lr at random is worse


def test_a_figure_script_can_say_why_it_drew_nothing(grid_frame, tmp_path):
    from optimstudy.report.build import draw
    from optimstudy.report.scripts import load_scripts

    section, figure = next(item for item in load_scripts(REPO / "src" / "optimstudy" / "report" / "figures")
                           if item[0].name == "across_problems")
    section = draw(section, figure, Study(grid_frame), tmp_path)
    assert section.note.startswith("one problem only (") and "needs two or more" in section.note
    assert not list(tmp_path.glob("across_problems.*")) and not section.error


def real_runs(tracking_uri, experiment, runs) -> None:
    """Real tiny linreg runs through the training loop and the MLflow writer: (label, optimizer, lr, seed)."""
    from optimstudy.run.runner import Tracking, execute
    from optimstudy.tracking.client import ensure_store
    from optimstudy.tracking.writer_handle import stop_writers

    ensure_store(tracking_uri)
    for label, optimizer, lr, seed in runs:
        execute(RunConfig(problem="linreg", optimizer=optimizer, lr=lr, seed=seed, steps=50, eval_every=25,
                          threads=1),
                Tracking(tracking_uri, experiment, tags={"optimstudy.kind": "trial", "optimstudy.phase": "grid",
                                                         "optimstudy.optimizer_label": label}))
    stop_writers()


@pytest.mark.slow
def test_verdicts_on_real_runs(tracking_uri):
    """Two labels of one configuration run bit-identical runs seed by seed: the seeds vary, the difference
    never does, so there is no verdict (not a 'better' from a difference of 0 or of rounding). One with far
    too small an lr loses. (That noise alone never names a winner is test_verdicts' end-to-end test.)"""
    seeds = range(4)
    real_runs(tracking_uri, "twins", [(label, "sgd", 0.05, seed) for label in ("sgd_a", "sgd_b") for seed in seeds])
    real_runs(tracking_uri, "broken",
              [("sgd", "sgd", 0.05, s) for s in seeds] + [("slow", "sgd", 1e-5, s) for s in seeds])
    twins = verdicts(run_table(load_runs(tracking_uri, experiments=["twins"]))).iloc[0]
    assert (twins["a"], twins["b"]) == ("sgd_a", "sgd_b")
    assert twins["outcome"] == "no variation" and twins["difference"] == 0 and not twins["decided"]
    broken = verdicts(run_table(load_runs(tracking_uri, experiments=["broken"]))).iloc[0]
    assert broken["verdict"] == "sgd better" and broken["test"] == "paired t-test" and broken["p_value"] < 0.05
    assert broken["ci_high"] < 0  # sgd's val_loss minus the broken one's: clearly below zero


# ---- the analysis scripts and the page --------------------------------------------------------

@pytest.fixture(scope="module")
def full_report(store, tmp_path_factory):
    """Every figure of the store, drawn once per session (the pytest-xdist workers included): the tests
    only read the folder, the sections and the frame it was drawn from."""
    def build(folder):
        frame = load_runs(store, compact=True)
        sections = write_report(frame, folder, analysis=REPO / "src" / "optimstudy" / "report" / "figures",
                                tracking_uri=store)
        (folder / "drawn.pickle").write_bytes(pickle.dumps((sections, frame)))

    folder = once_per_session(tmp_path_factory, "report-analysis", build)
    sections, frame = pickle.loads((folder / "drawn.pickle").read_bytes())
    return folder, sections, frame


def assert_real_png(path: Path) -> None:
    assert path.exists(), path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05, f"{path.name} is (nearly) blank"


def test_every_script_in_analysis_draws_a_real_png(full_report):
    out, sections, _ = full_report
    assert sorted(s.name for s in sections) == SCRIPTS
    assert {"optimizer_curves", "lr_sensitivity", "lr_matters", "gradient_norms", "zero_grad", "loss_functions",
            "valley", "devices", "performance_profiles", "tuning_budget"} <= set(SCRIPTS)
    for section in sections:
        assert not section.error, (section.name, section.error)
        assert section.caption, section.name
        assert_real_png(out / "figures" / f"{section.name}.png")
        assert (out / "figures" / f"{section.name}.svg").stat().st_size > 1000


def test_the_page_shows_every_figure_the_tables_and_each_warning_once(full_report):
    out, sections, _ = full_report
    page = (out / "report.html").read_text()
    for section in sections:
        assert f"<img src='figures/{section.name}.png'" in page
        assert html.escape(section.caption) in page
    assert "experiment &#x27;grid&#x27;" in page and "experiment &#x27;landscape&#x27; (4 runs)" in page
    warning = "linreg/adam (grid): best lr 1 is the largest tried"
    assert page.count(f"<li class='warn'>{warning}") == 1
    assert "summary.csv" in page and "95% interval of the mean" in page and "lion" in page
    assert "Verdicts" in page and "not distinguishable with" in page and "Holm p" in page
    assert page.index("<h2>The answer</h2>") < page.index("<h2>Runs</h2>")  # the page leads with the answer
    assert re.search(r"<li><b>linreg \(grid[^<]*</b>, val_loss: <b>[^<]*(adam|sgd|lion)", page)
    assert "τ = 2" in page  # the performance-profile table under its figure
    assert "<script" not in page and all(src.startswith("figures/") for src in re.findall(r"src='([^']+)'", page))
    assert "Not shown" not in page  # every section has data here: all of them numbered, in order
    assert re.findall(r"<h2>(\d+)\. ", page) == [str(n) for n in range(1, len(sections) + 1)]


def test_summary_csv_is_written_with_a_row_per_group(full_report):
    out, _, _ = full_report
    summary = pd.read_csv(out / "summary.csv")
    grid = summary[(summary["experiment"] == "grid") & (summary["optimizer"] == "sgd")].iloc[0]
    assert grid["best_lr"] == 0.1 and grid["trials"] == 9 and grid["ci_low"] <= grid["mean"] <= grid["ci_high"]
    odd = summary[summary["experiment"] == "odd"].set_index("optimizer")
    assert odd.loc["sgd", "best_lr"] == 0.1  # the run with a NaN loss still counts
    assert odd.loc["adam", "trials"] == 1 and np.isnan(odd.loc["adam", "best_lr"])  # killed: no outcome
    zero = summary[summary["experiment"] == "zero_grad"]
    assert set(zero["setting"]) == {"batch_size=64 accumulate=1 zero_grad=True",
                                    "batch_size=64 accumulate=1 zero_grad=False",
                                    "batch_size=16 accumulate=4 zero_grad=True"}


def test_figures_tolerate_nan_values_and_diverged_runs(full_report):
    out, sections, frame = full_report
    runs = run_table(frame)
    assert runs["diverged"].sum() == 2  # sgd lr 1 seed 0, and a mean_error run
    assert frame["value"].isna().any()  # the NaN loss and NaN gradient norms arrived
    assert np.isinf(frame["value"]).any()  # MLflow's infinity, as inf again
    assert "KILLED" in set(runs["status"])


def test_missing_data_leaves_a_figure_out_with_the_spec_that_fills_it(store, tmp_path):
    frame = load_runs(store, experiments=["single"])  # one linreg run
    sections = {s.name: s for s in write_report(frame, tmp_path,
                                                analysis=REPO / "src" / "optimstudy" / "report" / "figures", svg=False)}
    assert sections["lr_sensitivity"].note == (
        "no runs for it yet: run `optimstudy sweep experiments/lr_sensitivity.toml`")
    assert not (tmp_path / "figures" / "lr_sensitivity.png").exists()
    assert "experiments/zero_grad.toml" in sections["zero_grad"].note
    assert "experiments/landscape.toml" in sections["valley"].note  # drawn, without trajectories
    assert "only one device" in sections["devices"].note
    assert_real_png(tmp_path / "figures" / "optimizer_curves.png")
    page = (tmp_path / "report.html").read_text()
    assert "experiments/lr_sensitivity.toml" in page and "experiments/loss_functions.toml" in page


EMPTY_USER_SCRIPT = '''
TITLE = "Runs <per> problem & more"


def figure(study):
    return "needs <two> problems & a SPEC"
'''


def test_sections_without_data_are_listed_unnumbered_at_the_end_with_their_command(store, tmp_path, capsys):
    """One linreg run: the sections it cannot fill leave the numbering for one block at the page's end."""
    from optimstudy.report.build import report_command

    folder = tmp_path / "analysis"
    shutil.copytree(BUILT_IN, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "runs_per_problem.py").write_text(EMPTY_USER_SCRIPT)  # no SPEC: its own words instead
    assert report_command(store, ["single"], tmp_path / "out", analysis=folder, log_to_store=False) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    numbered = re.findall(r"<h2>(\d+)\. ([^<]*)</h2>", page)
    assert [int(number) for number, _ in numbered] == list(range(1, len(numbered) + 1))
    titles = [html.unescape(title) for _, title in numbered]
    # with data: the curves of the one run, and its throughput (one device); never in the block
    assert {"Optimizers compared at their best learning rates", "Devices: throughput and agreement"} <= set(titles)
    block = page[page.index("<h2>Not shown: no runs for these yet</h2>"):]
    assert page.count("Not shown: no runs for these yet") == 1 and block.endswith("</ul>\n</body></html>")
    listed = dict(re.findall(r"<li>([^<]*) — (.*)</li>", block))
    expected = {"Learning-rate sensitivity": "experiments/lr_sensitivity.toml",
                "The learning rate matters: too small, good, too large": "experiments/lr_sensitivity.toml",
                "Forgetting zero_grad(), and gradient accumulation": "experiments/zero_grad.toml",
                "Loss functions: what the measure rewards": "experiments/loss_functions.toml",  # lesson numbers only
                "The loss landscape: steps down a valley": "experiments/landscape.toml",  # generated data only
                "Across problems: interquartile mean and probability of improvement": "experiments/quickstart.toml"}
    for title, spec in expected.items():
        assert listed[html.escape(title)] == f"<code>optimstudy sweep {spec}</code>", title
        assert block.count(f"<li>{html.escape(title)} — ") == 1 and title not in titles
    assert listed["Runs &lt;per&gt; problem &amp; more"] == "needs &lt;two&gt; problems &amp; a SPEC"  # escaped
    assert set(titles).isdisjoint(html.unescape(title) for title in listed)
    assert len(titles) + len(listed) == len(load_scripts(folder))
    assert "figures/zero_grad.png" not in page and "figures/valley.png" not in page
    err = capsys.readouterr().err  # the terminal lists the same sections, once, in the same words
    summary = err[err.index("note: not shown, no runs for these yet:"):]
    for title, spec in expected.items():
        assert summary.count(f"  {title} — optimstudy sweep {spec}\n") == 1
        assert f"note: {title}:" not in err
    assert "note: Devices: throughput and agreement: only one device" in err
    assert f"; {len(titles)} figures from" in err


USER_SCRIPT = '''
from optimstudy.report import plotting

TITLE = "Runs per optimizer (a user's own figure)"
SPEC = "experiments/quickstart.toml"


def figure(study):
    counts = study.runs["label"].value_counts().sort_index()
    fig = plotting.new_figure(6, 3.5)
    ax = fig.subplots()
    ax.bar(counts.index, counts.to_numpy())
    ax.set_ylabel("runs")
    return plotting.Drawn(fig, "How many runs each optimizer label has.", list(study.runs["run_id"]))


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
'''


def test_a_script_dropped_into_analysis_appears_on_the_page(store, tmp_path):
    folder = tmp_path / "analysis"
    folder.mkdir()
    for name in ("optimizer_curves", "devices"):  # two built-in scripts (the rest would only cost drawing)
        shutil.copy(BUILT_IN / f"{name}.py", folder)
    (folder / "runs_per_optimizer.py").write_text(USER_SCRIPT)
    (folder / "broken.py").write_text("import no_such_module\n\n\ndef figure(study):\n    pass\n")
    sections = {s.name: s for s in write_report(load_runs(store, experiments=["grid"]), tmp_path / "out",
                                                analysis=folder, svg=False)}
    assert sections["runs_per_optimizer"].caption == "How many runs each optimizer label has."
    assert_real_png(tmp_path / "out" / "figures" / "runs_per_optimizer.png")
    assert "No module named 'no_such_module'" in sections["broken"].error  # its own section, not the page
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Runs per optimizer (a user&#x27;s own figure)" in page and "figures/runs_per_optimizer.png" in page
    order = [s.name for s, _ in load_scripts(folder)]
    assert order.index("optimizer_curves") < order.index("devices") < order.index("runs_per_optimizer")


def run_script(*args, check_exit):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == check_exit, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.mark.slow
def test_an_analysis_script_runs_alone(store, tmp_path):
    script = REPO / "src" / "optimstudy" / "report" / "figures" / "lr_sensitivity.py"
    result = run_script(script, "--tracking-uri", store, "--experiment", "grid", "--out", tmp_path, check_exit=0)
    assert "lr_sensitivity.png" in result.stdout
    assert_real_png(tmp_path / "lr_sensitivity.png")
    # a misspelt experiment is refused by the same main, here in this process (its subject is the input)
    import contextlib
    import importlib.util
    import io

    from optimstudy.cli import analysis_script_main

    loaded = importlib.util.spec_from_file_location("lr_sensitivity_alone", script)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = analysis_script_main(module.figure, ["--tracking-uri", store, "--experiment", "gird", "--out",
                                                    str(tmp_path)])
    assert code == 2 and "did you mean 'grid'" in stderr.getvalue() and "Traceback" not in stderr.getvalue()


def test_the_package_finds_its_built_in_scripts():
    assert BUILT_IN == REPO / "src" / "optimstudy" / "report" / "figures" and len(SCRIPTS) >= 10


# ---- the command ----------------------------------------------------------------------------

def test_report_on_an_empty_store_exits_2_naming_the_quickstart(tracking_uri, tmp_path):
    """A refusal of the input, run in this process (exit 2 with no Traceback from a real report process:
    test_report_with_an_analysis_folder_without_scripts_exits_2)."""
    from optimstudy.errors import UsageError
    from optimstudy.report.build import report_command
    from optimstudy.tracking.client import ensure_store

    result = in_process("report", "--tracking-uri", tracking_uri, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "optimstudy report: error: no tracking store at" in result.stderr
    assert "optimstudy sweep experiments/quickstart.toml" in result.stderr
    assert not Path(tracking_uri[len("sqlite:///"):]).exists()  # reporting never creates a store
    ensure_store(tracking_uri)
    with pytest.raises(UsageError, match="no runs in the tracking store .*`optimstudy sweep experiments/quickstart"):
        report_command(tracking_uri, None, tmp_path / "out")


def test_report_of_an_unknown_experiment_names_the_known_ones(store, tmp_path):
    from optimstudy.errors import UsageError
    from optimstudy.report.build import report_command

    known = "experiments with runs: devices, grid, landscape"
    with pytest.raises(UsageError, match=f"'gird' \\(did you mean 'grid'\\?\\).*{known}"):
        report_command(store, ["gird"], tmp_path)


def test_report_with_an_analysis_folder_without_scripts_exits_2(cli, store, tmp_path):
    result = cli("report", "--tracking-uri", store, "--out", tmp_path / "out", "--analysis", tmp_path, check_exit=2)
    assert "holds no analysis scripts" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_report_end_to_end_on_real_runs_logs_the_figures_to_the_sweep(cli, tracking_uri, tmp_path):
    """Real tiny runs through the training loop and the MLflow writer, then `optimstudy report`."""
    from mlflow import MlflowClient

    from optimstudy.run.runner import Tracking, execute
    from optimstudy.tracking.client import ensure_store
    from optimstudy.tracking.writer_handle import stop_writers

    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    parent = new_sweep(client, tracking_uri, "tiny")
    trial = 0
    for problem, optimizer, lr in (("linreg", "sgd", 0.03), ("linreg", "sgd", 0.3), ("linreg", "sgd", 3.0),
                                   ("linreg", "adam", 0.1), ("valley", "sgd", 0.5), ("valley", "adam", 0.1)):
        execute(RunConfig(problem=problem, optimizer=optimizer, lr=lr, steps=60, eval_every=10, threads=1),
                Tracking(tracking_uri, "tiny", parent_run_id=parent,
                         tags={"optimstudy.kind": "trial", "optimstudy.study": "tiny", "optimstudy.trial": trial}))
        trial += 1
    stop_writers()
    # -X importtime in every process of the report, the forks that draw included: torch is never imported
    result = cli("report", "--tracking-uri", tracking_uri, "--out", tmp_path / "analysis", check_exit=0, cwd=REPO,
                 env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "report.html" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    assert "optimstudy.report" in imported and "matplotlib" in imported  # the timing covers the command
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]
    valley = next(r for r in client.search_runs([client.get_run(parent).info.experiment_id])
                  if r.data.params.get("problem") == "valley")
    assert json.loads(valley.data.tags["optimstudy.problem.target"]) == ["val_loss", 0.02]
    assert "as its runs measured it" in (tmp_path / "analysis" / "report.html").read_text()
    for name in ("optimizer_curves", "lr_sensitivity", "lr_matters", "gradient_norms", "valley"):
        assert_real_png(tmp_path / "analysis" / "figures" / f"{name}.png")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/summary.csv", "report/figures"} <= logged
    assert "report/figures/valley.png" in {a.path for a in client.list_artifacts(parent, "report/figures")}
    summary = (tmp_path / "analysis" / "summary.csv").read_text()
    assert "valley" in summary and "linreg" in summary


def readme_specs() -> list[str]:
    """The complete TOML spec examples (those with a name) of the README and docs/usage.md, as written."""
    text = (REPO / "README.md").read_text() + (REPO / "docs" / "usage.md").read_text()
    return [block for block in re.findall(r"```toml\n(.*?)```", text, re.S) if re.search(r"^name\s*=", block, re.M)]


def shrink(spec: str) -> str:
    """The same spec at test size: 10 steps, at most 2 seeds (its first two: a spec of one seed keeps
    it, as its user runs it), 2 lrs per grid, 1 confirmation seed."""
    spec = re.sub(r"^(epochs|steps)\s*=.*$", "steps = 10", spec, flags=re.M)
    spec = re.sub(r"^seeds\s*=\s*\[([^,\]]+)(,\s*[^,\]]+)?[^\]]*\]", r"seeds = [\1\2]", spec, flags=re.M)
    spec = re.sub(r"^seeds\s*=\s*\d+", "seeds = 1", spec, flags=re.M)  # [confirm]
    spec = re.sub(r"points\s*=\s*\d+", "points = 2", spec)
    spec = re.sub(r"^lr\s*=\s*\[([^,\]]+),\s*([^,\]]+)[^\]]*\]", r"lr = [\1, \2]", spec, flags=re.M)
    spec = re.sub(r"^batch_size\s*=.*$", "batch_size = 64", spec, flags=re.M)
    return spec


def first_images(source: Path, folder: Path, train: int = 500, test: int = 200) -> None:
    """FOLDER/MNIST/raw: the first TRAIN training and TEST test images (and labels) of the IDX files in
    SOURCE/MNIST/raw, their headers' counts rewritten: real MNIST in torchvision's layout, small enough
    that a spec shrunk to 10 steps is not dominated by evaluating whole splits (the pytorch example
    evaluates its CNN on all of its training split: 8,000 images of the fixture, twice). 500 images
    are 8 steps of 64: 10 steps still cross an epoch, where that example's StepLR steps."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, count in (("train-images-idx3-ubyte", train), ("train-labels-idx1-ubyte", train),
                        ("t10k-images-idx3-ubyte", test), ("t10k-labels-idx1-ubyte", test)):
        data = (source / "MNIST" / "raw" / name).read_bytes()
        dims = data[3]
        item = math.prod(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(1, dims))
        assert int.from_bytes(data[4:8], "big") >= count, name
        start = 4 + 4 * dims
        (raw / name).write_bytes(data[:4] + count.to_bytes(4, "big") + data[8:start] + data[start:start + count * item])


@pytest.fixture
def small_mnist(mnist_dir, tmp_path_factory) -> str:
    return str(once_per_session(tmp_path_factory, "mnist-500", lambda folder: first_images(Path(mnist_dir), folder)))


@pytest.mark.slow
@pytest.mark.study
@pytest.mark.parametrize("index", range(len(readme_specs())))
def test_the_readmes_spec_examples_sweep_and_report(index, cli, small_mnist, tmp_path):
    spec = tmp_path / "readme.toml"
    spec.write_text(shrink(readme_specs()[index]))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {"OPTIMSTUDY_DATA_DIR": small_mnist, "PYTHONPATH": str(REPO)}  # REPO: examples.* problems import
    swept = cli("sweep", spec, "--tracking-uri", uri, "--json", check_exit=0, cwd=tmp_path, env=env, timeout=600)
    result = cli("report", "--tracking-uri", uri, "--out", tmp_path / "out",
                 "--analysis", REPO / "src" / "optimstudy" / "report" / "figures",
                 check_exit=0, cwd=tmp_path, env=env)
    assert "failed" not in result.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["best_lr"].notna().all()
    # the sweep and the report agree: the same best lr per problem x optimizer, the same warnings, each once
    sweep = json.loads(swept.stdout.strip().splitlines()[-1])
    from_sweep = sorted((b["problem"], b["optimizer"], b["lr"]) for b in sweep["best"])
    from_report = sorted(zip(summary["problem"], summary["optimizer"], summary["best_lr"]))
    assert from_sweep == from_report
    warnings = list(summary["edge_warning"].dropna())
    assert sorted(sweep["edge_warnings"]) == sorted(warnings) and len(set(warnings)) == len(warnings)
    page = (tmp_path / "out" / "report.html").read_text()
    assert all(page.count(html.escape(w)) == 1 for w in warnings)


# ---- a folder of other scripts, a read-only store, an optimizer whose trials all failed ----------

def test_an_analysis_folder_of_other_scripts_is_never_run_and_the_built_in_figures_are_drawn(tmp_path, monkeypatch):
    from optimstudy.report.scripts import analysis_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "analysis").mkdir()
    ran = tmp_path / "ran"
    (tmp_path / "analysis" / "train.py").write_text(f"open({str(ran)!r}, 'w').write('top-level code ran')\n")
    (tmp_path / "analysis" / "old.py").write_text("print 'python 2'\n")
    chosen = analysis_folder()
    assert chosen.path == BUILT_IN and len(chosen.scripts) == len(SCRIPTS)
    assert "./analysis holds no figure scripts (2 *.py" in chosen.note and str(BUILT_IN) in chosen.note
    (tmp_path / "analysis" / "mine.py").write_text(USER_SCRIPT)  # a figure script: added to the built-in ones
    (tmp_path / "analysis" / "zero_grad.py").write_text(USER_SCRIPT)  # one named like a built-in: replaces it
    chosen = analysis_folder()
    assert chosen.path == Path("analysis")
    assert sorted(p.name for p in chosen.scripts) == sorted({f"{name}.py" for name in SCRIPTS} | {"mine.py"})
    assert {p.name: p.parent for p in chosen.scripts}["zero_grad.py"] == Path("analysis")
    assert {p.name: p.parent for p in chosen.scripts}["lr_sensitivity.py"] == BUILT_IN
    assert "adds 1 figure script(s)" in chosen.note and "replaces the built-in zero_grad" in chosen.note
    assert dict(chosen.skipped)["train.py"] == "no top-level figure(study) function"
    assert dict(chosen.skipped)["old.py"].startswith("does not parse: SyntaxError")
    loaded = {section.name: section for section, _ in load_scripts(chosen)}
    assert set(loaded) == set(SCRIPTS) | {"mine"}
    assert loaded["zero_grad"].title == loaded["mine"].title  # the user's script, not the built-in one
    assert not ran.exists()


@pytest.fixture(scope="module")
def failed_store(tmp_path_factory):
    """A sweep whose sgd trials finished and whose adam trials all FAILED; its note is stale, so a report
    must write to the store."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("failed") / "mlruns"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = new_sweep(client, uri, "mixed")
    for trial, (optimizer, seed, status) in enumerate([("sgd", 0, "FINISHED"), ("adam", 0, "FAILED"),
                                                       ("adam", 1, "FAILED")]):
        log_run(client, uri, "mixed", parent=parent, problem="linreg", optimizer=optimizer, lr=0.1, seed=seed,
                status=status, steps=10, trial=trial)
    client.set_tag(parent, "mlflow.note.content", "stale")
    return uri


def test_an_optimizer_whose_trials_all_failed_is_said_so_not_called_diverged(failed_store):
    from types import SimpleNamespace

    from optimstudy.sweep.output import format_table

    summary = Study(load_runs(failed_store, experiments=["mixed"])).summary.set_index("optimizer")
    assert summary.at["adam", "no_outcome"] == "all 2 trials failed" and summary.at["sgd", "no_outcome"] == ""
    table = format_table(summary.reset_index().to_dict("records"), [], SimpleNamespace(metric="val_loss"))
    adam = next(line for line in table.splitlines() if line.startswith("linreg          adam"))
    assert adam.endswith("all 2 trials failed") and "diverged" not in adam, table


def test_report_on_a_read_only_store_writes_the_page_and_says_nothing_was_attached(failed_store, tmp_path):
    """The store's folder read-only: by a bind mount in a mount namespace of the report's own (root
    ignores file modes), else by its modes."""
    import os
    import subprocess
    import sys

    store = Path(failed_store[len("sqlite:///"):]).parent
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "runs_per_optimizer.py").write_text(USER_SCRIPT)  # one quick figure
    command = [sys.executable, "-m", "optimstudy", "report", "--tracking-uri", failed_store, "--out",
               str(tmp_path / "out"), "--analysis", str(tmp_path / "figures")]
    if os.geteuid() == 0:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0"', str(store)],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root, and no read-only bind mount here: {probe.stderr.strip()[:200]}")
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(store), *command]
    else:
        for path in (store, *store.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        for path in (store, *store.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: the tracking store is read-only (" in result.stderr and "readonly database" in result.stderr
    assert "nothing was attached to the sweep runs; pass --no-log-to-store" in result.stderr
    assert "[SQL:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "all 2 trials failed" in (tmp_path / "out" / "report.html").read_text()
    assert_real_png(tmp_path / "out" / "figures" / "runs_per_optimizer.png")
    from mlflow import MlflowClient

    parent = MlflowClient(failed_store).search_runs(
        [experiment_id(failed_store, "mixed")], "tags.`optimstudy.kind` = 'sweep'")[0]
    assert parent.data.tags["mlflow.note.content"] == "stale"  # the store is as it was
