"""The report: known synthetic runs in a real MLflow store -> the numbers, every figure, the page.

Synthetic runs are written the way the training loop writes them (MlflowClient: create_run with
the sweep's tags, log_batch of RunConfig.params() and of metric points, set_terminated), with
values chosen so that the means, stds, best lrs, times to target and edge warnings are known.
"""
import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from optimstudy.config import RunConfig
from optimstudy.figures import FIGURES
from optimstudy.problems import PROBLEMS, VALLEY_START
from optimstudy.report import best_configs, edge_warnings, run_table, summary_table, time_to_target, write_report
from optimstudy.tidy import load_runs
from optimstudy.tracking import experiment_id

SWEEP_WARNING = "linreg/adam: best lr 1 is the largest tried (0.01..1); widen the grid past it"


# ---- writing synthetic runs -------------------------------------------------------------------

def new_sweep(client, uri, experiment: str, warnings=()) -> str:
    run = client.create_run(experiment_id(uri, experiment), run_name=f"sweep {experiment}", tags={
        "optimstudy.kind": "sweep", "optimstudy.study": experiment,
        "optimstudy.edge_warnings": json.dumps(list(warnings))})
    client.log_metric(run.info.run_id, "trials_complete", 1)  # as sweep.py does: parents hold metrics too
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_run(client, uri, experiment, *, parent=None, status="FINISHED", steps=20, eval_every=5, val=None,
            accuracy=None, final=None, diverge_at=None, extra=None, device_name="test CPU", trial=0, **config):
    """One run as train() logs it. `val`: val_loss at steps 0, eval_every, ...; `final`: the final_* and
    other last-step metrics (defaults derived from `val`); `extra`: more per-step series {name: values}."""
    problem = config["problem"]
    config.setdefault("loss", PROBLEMS[problem].default_loss)
    config = RunConfig(steps=steps, threads=1, eval_every=eval_every, **config)
    tags = {"optimstudy.kind": "trial" if parent else "run", "device.name": device_name, "dataset": problem}
    if parent:
        tags.update({"mlflow.parentRunId": parent, "optimstudy.study": experiment, "optimstudy.trial": str(trial)})
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
    parent = new_sweep(client, uri, "grid", [SWEEP_WARNING])
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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (writing runs is most of the cost): every figure's runs, the grid among them."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    every_figure_store(MlflowClient(uri), uri)
    return uri


@pytest.fixture(scope="module")
def grid_frame(store):
    return load_runs(store, experiments=["grid"])


# ---- the numbers ----------------------------------------------------------------------------

def test_run_table_has_one_row_per_training_run(grid_frame):
    runs = run_table(grid_frame)
    assert len(runs) == 18  # the sweep's parent run is not a training run
    assert runs["diverged"].sum() == 1
    diverged = runs[runs["diverged"]].iloc[0]
    assert (diverged["optimizer"], diverged["lr"], diverged["seed"]) == ("sgd", 1.0, 0)
    assert diverged["last_step"] == 8 and diverged["badness"] == math.inf
    assert set(runs["score_metric"]) == {"val_loss"}


def test_best_lr_mean_and_std_over_seeds(grid_frame):
    best = best_configs(run_table(grid_frame)).set_index("optimizer")
    sgd, adam = best.loc["sgd"], best.loc["adam"]
    assert sgd["lr"] == 0.1  # lr 1 has a better mean over its finished seeds, but one seed diverged
    assert sgd["mean"] == pytest.approx(0.06) and sgd["std"] == pytest.approx(0.01)
    assert (sgd["seeds"], sgd["trials"], list(sgd["lrs"])) == (3, 9, [0.01, 0.1, 1.0])
    assert adam["lr"] == 1.0 and adam["mean"] == pytest.approx(0.05) and adam["std"] == pytest.approx(0.01)
    assert sgd["edge"] == ""
    assert "largest" in adam["edge"] and "1" in adam["edge"]


def test_edge_warning_only_for_the_optimizer_at_the_grid_edge(grid_frame):
    warnings = edge_warnings(grid_frame)
    assert len(warnings) == 1 and warnings[0].startswith("linreg/adam")


def test_time_to_target_counts_a_missed_target_as_not_reached(grid_frame):
    runs = run_table(grid_frame)
    reach = time_to_target(grid_frame, runs).merge(runs[["run_id", "optimizer", "lr", "seed"]], on="run_id")
    adam = reach[(reach["optimizer"] == "adam") & (reach["lr"] == 1.0)].set_index("seed")
    assert adam.loc[0, "steps_to_target"] == 15 and adam.loc[1, "steps_to_target"] == 10
    assert math.isnan(adam.loc[2, "steps_to_target"])
    assert adam.loc[0, "seconds_to_target"] == pytest.approx(2.0 * 15 / 20)  # prorated from wall_s = 2 s
    summary = summary_table(grid_frame).set_index("optimizer")
    assert summary.loc["adam", "steps_to_target"] == 15  # median of 15, 10 and never
    assert summary.loc["adam", "seconds_to_target"] == pytest.approx(1.5)
    assert summary.loc["adam", "target_reached"] == "2/3 seeds"
    assert math.isnan(summary.loc["sgd", "steps_to_target"])  # no seed at lr 0.1 reaches 0.02
    assert summary.loc["sgd", "target_reached"] == "0/3 seeds"
    assert summary.loc["adam", "target"] == "val_loss <= 0.02"


def classifier_runs(client, uri) -> None:
    """mnist_mlp with sgd: lr 0.1 has the higher accuracy (0.95, 0.97) but the higher val loss."""
    for lr, accuracies in ((0.01, (0.90, 0.92)), (0.1, (0.95, 0.97))):
        for seed, final in enumerate(accuracies):
            log_run(client, uri, "mnist", problem="mnist_mlp", optimizer="sgd", lr=lr, seed=seed,
                    val=[2.3, 0.4, 0.3, 0.2, 0.2 + lr], accuracy=[0.1, 0.8, 0.96, 0.9, final])


def test_classification_picks_the_highest_accuracy(store):
    summary = summary_table(load_runs(store, experiments=["mnist"])).iloc[0]
    assert summary["best_lr"] == 0.1 and summary["metric"] == "val_accuracy"
    assert summary["mean"] == pytest.approx(0.96) and summary["std"] == pytest.approx(0.02 / math.sqrt(2))
    assert summary["steps_to_target"] == 10  # val_accuracy >= 0.95 first at step 10 for both seeds
    assert "smallest" not in summary["edge_warning"] and "largest" in summary["edge_warning"]


# ---- the figures and the page -------------------------------------------------------------------

def every_figure_store(client, uri) -> None:
    """Runs for every figure, each a little odd: a NaN loss, inf values, a pruned and a failed trial."""
    grid_runs(client, uri)
    classifier_runs(client, uri)
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
def full_report(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysis")
    frame = load_runs(store)
    sections = write_report(frame, folder, tracking_uri=store, sweep_warnings=[SWEEP_WARNING])
    return folder, sections, frame


def assert_real_png(path: Path) -> None:
    assert path.exists(), path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05, f"{path.name} is (nearly) blank"


def test_every_figure_is_drawn_as_a_real_png(full_report):
    out, sections, _ = full_report
    assert [s.name for s in sections] == list(FIGURES)
    for section in sections:
        assert not section.error, (section.name, section.error)
        assert section.caption, section.name
        assert_real_png(out / "figures" / f"{section.name}.png")
        assert (out / "figures" / f"{section.name}.svg").stat().st_size > 1000


def test_the_page_references_every_figure_the_table_and_its_sources(full_report):
    out, sections, _ = full_report
    page = (out / "report.html").read_text()
    for section in sections:
        assert f"<img src='figures/{section.name}.png'" in page
        assert html.escape(section.caption) in page
    assert "experiment &#x27;grid&#x27;" in page and "experiment &#x27;landscape&#x27; (3 runs)" in page
    assert "linreg/adam (grid): best lr 1 is the largest tried" in page
    assert "recorded by the sweep" in page and "summary.csv" in page
    assert "<script" not in page and all(src.startswith("figures/") for src in re.findall(r"src='([^']+)'", page))


def test_summary_csv_is_written_with_a_row_per_group(full_report):
    import pandas as pd

    out, _, _ = full_report
    summary = pd.read_csv(out / "summary.csv")
    grid = summary[(summary["experiment"] == "grid") & (summary["optimizer"] == "sgd")].iloc[0]
    assert grid["best_lr"] == 0.1 and grid["trials"] == 9
    odd = summary[summary["experiment"] == "odd"].set_index("optimizer")
    assert odd.loc["sgd", "best_lr"] == 0.1  # the run with a NaN loss still counts
    assert odd.loc["adam", "trials"] == 1 and np.isnan(odd.loc["adam", "best_lr"])  # pruned: no outcome
    zero = summary[summary["experiment"] == "zero_grad"]
    assert set(zero["setting"]) == {"batch_size=64 accumulate=1 zero_grad=True",
                                    "batch_size=64 accumulate=1 zero_grad=False",
                                    "batch_size=16 accumulate=4 zero_grad=True"}


def test_figures_tolerate_nan_values_and_diverged_runs(full_report):
    out, sections, frame = full_report
    runs = run_table(frame)
    assert runs["diverged"].sum() == 2  # sgd lr 1 seed 0, and a mean_error run
    assert frame["value"].isna().any()  # the NaN loss and NaN gradient norms arrived
    assert (frame["value"].abs() > 1e300).any()  # MLflow's infinity
    assert "KILLED" in set(runs["status"])
    for section in sections:
        assert not section.error, section.error


def test_missing_data_leaves_a_figure_out_with_the_spec_that_fills_it(store, tmp_path):
    frame = load_runs(store, experiments=["single"])  # one linreg run
    sections = {s.name: s for s in write_report(frame, tmp_path, tracking_uri=store, svg=False)}
    assert sections["lr_sensitivity"].note == (
        "no runs for it yet: run `optimstudy sweep experiments/lr_sensitivity.toml`")
    assert not (tmp_path / "figures" / "lr_sensitivity.png").exists()
    assert "experiments/zero_grad.toml" in sections["zero_grad"].note
    assert "experiments/landscape.toml" in sections["valley"].note  # drawn, without trajectories
    assert "only one device" in sections["devices"].note
    assert_real_png(tmp_path / "figures" / "optimizer_curves.png")
    page = (tmp_path / "report.html").read_text()
    assert "experiments/lr_sensitivity.toml" in page and "experiments/loss_functions.toml" in page


# ---- the command ----------------------------------------------------------------------------

def report_args(tracking_uri, out, experiments=None):
    from argparse import Namespace

    return Namespace(experiments=experiments, tracking_uri=tracking_uri, out=str(out), debug=False)


def test_report_on_an_empty_store_exits_2_naming_the_quickstart(cli, tracking_uri, tmp_path):
    from optimstudy.errors import UsageError
    from optimstudy.report import report_command
    from optimstudy.tracking import ensure_store

    result = cli("report", "--tracking-uri", tracking_uri, "--out", tmp_path / "out", check_exit=2)
    assert "optimstudy report: error: no tracking store at" in result.stderr
    assert "optimstudy sweep experiments/quickstart.toml" in result.stderr
    assert not Path(tracking_uri[len("sqlite:///"):]).exists()  # reporting never creates a store
    ensure_store(tracking_uri)
    with pytest.raises(UsageError, match="no runs in the tracking store .*`optimstudy sweep experiments/quickstart"):
        report_command(report_args(tracking_uri, tmp_path / "out"))


def test_report_of_an_unknown_experiment_names_the_known_ones(store, tmp_path):
    from optimstudy.errors import UsageError
    from optimstudy.report import report_command

    known = "experiments with runs: devices, grid, landscape"
    with pytest.raises(UsageError, match=f"'gird' \\(did you mean 'grid'\\?\\).*{known}"):
        report_command(report_args(store, tmp_path, ["gird"]))


@pytest.mark.slow
def test_report_end_to_end_on_real_runs_logs_the_figures_to_the_sweep(cli, tracking_uri, tmp_path):
    """Real tiny runs through the training loop and the MLflow writer, then `optimstudy report`."""
    from mlflow import MlflowClient

    from optimstudy.runner import Tracking, execute
    from optimstudy.tracking import ensure_store, stop_writers

    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    parent = new_sweep(client, tracking_uri, "tiny")
    trial = 0
    for problem, optimizer, lr in (("linreg", "sgd", 0.03), ("linreg", "sgd", 0.3), ("linreg", "sgd", 3.0),
                                   ("linreg", "adam", 0.1), ("valley", "sgd", 0.5), ("valley", "adam", 0.1)):
        execute(RunConfig(problem=problem, optimizer=optimizer, lr=lr, steps=60, eval_every=10, threads=1),
                Tracking(tracking_uri, "tiny"), parent_run_id=parent,
                tags={"optimstudy.kind": "trial", "optimstudy.study": "tiny", "optimstudy.trial": trial})
        trial += 1
    stop_writers()
    result = cli("report", "--tracking-uri", tracking_uri, "--out", tmp_path / "analysis", check_exit=0)
    assert "report.html" in result.stdout
    for name in ("optimizer_curves", "lr_sensitivity", "lr_matters", "gradient_norms", "valley"):
        assert_real_png(tmp_path / "analysis" / "figures" / f"{name}.png")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/summary.csv", "report/figures"} <= logged
    assert "report/figures/valley.png" in {a.path for a in client.list_artifacts(parent, "report/figures")}
    summary = (tmp_path / "analysis" / "summary.csv").read_text()
    assert "valley" in summary and "linreg" in summary


@pytest.mark.slow
def test_report_on_real_mnist_runs(mnist_dir, tracking_uri, tmp_path):
    """A few real MNIST steps per optimizer: classifiers are ranked by accuracy, curves drawn."""
    from optimstudy.runner import Tracking, execute
    from optimstudy.tracking import ensure_store, stop_writers

    ensure_store(tracking_uri)
    for optimizer, lr in (("sgd", 0.1), ("sgd", 0.01), ("adam", 1e-3)):
        execute(RunConfig(problem="mnist_logreg", optimizer=optimizer, lr=lr, steps=30, eval_every=10, threads=1),
                Tracking(tracking_uri, "mnist"), data_dir=mnist_dir, tags={"optimstudy.kind": "run"})
    stop_writers()
    frame = load_runs(tracking_uri)
    sections = {s.name: s for s in write_report(frame, tmp_path, tracking_uri=tracking_uri, svg=False)}
    assert not any(s.error for s in sections.values())
    assert_real_png(tmp_path / "figures" / "optimizer_curves.png")
    summary = summary_table(frame).set_index("optimizer")
    assert summary.loc["sgd", "metric"] == "val_accuracy" and 0.5 < summary.loc["sgd", "mean"] <= 1


def test_a_val_loss_target_applies_only_to_runs_trained_on_the_problems_own_loss():
    from optimstudy.report import TARGETS, target_for

    assert target_for("linreg", "mse") == TARGETS["linreg"]
    assert target_for("linreg", "mean_error") is None  # its val_loss is a mean error: can be negative
    assert target_for("mnist_mlp", "cross_entropy") == TARGETS["mnist_mlp"]  # accuracy needs no loss
