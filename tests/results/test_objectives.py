"""The objective: any metric a run logs at its end may rank runs; a test_* one is warned about; an
edge lr tied with an inner one is a flat optimum, not an edge; the curves figure without a
validation split. Real training, real sweeps on a tiny user problem, real MLflow and Optuna stores.
"""
import importlib.util
import json
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from optimstudy.problems.registry import Problem, linear
from optimstudy.report.page import render_page
from optimstudy.results.objectives import evaluation_metric, final_metric_names
from optimstudy.results.study import Study
from optimstudy.results.summary import SUMMARY_COLUMNS
from optimstudy.results.tables import best_configurations, run_table
from optimstudy.run.config import RunConfig
from optimstudy.run.training import train
from optimstudy.tracking.reader import load_runs, load_study

REPO = Path(__file__).resolve().parents[2]

# ±1 labels with label noise: error rates differ from lr to lr (a separable set would tie at 0)
NOISY_BINARY = '''
import torch
from optimstudy.problems.registry import Problem, linear

def make(generator):
    x = torch.randn(600, 4, generator=generator)
    noise = 0.8 * torch.randn(600, generator=generator)
    return x, torch.where(x[:, 0] + x[:, 1] + noise > 0, 1.0, -1.0)

noisy = Problem(data=make, make_model=linear, task="binary")
'''

SPEC = '''
name = "{name}"
problem = "binaryproblem:noisy"
steps = 30
batch_size = 32
seeds = [0, 1]
metric = "{metric}"
{extra}

[optimizers.sgd]
lr = [0.01, 0.3]

[optimizers.adam]
lr = [0.001, 0.05]
'''


def sweep_in(folder: Path, cli, name: str, metric: str, extra: str = ""):
    (folder / "binaryproblem.py").write_text(NOISY_BINARY)
    (folder / f"{name}.toml").write_text(SPEC.format(name=name, metric=metric, extra=extra))
    result = cli("sweep", f"{name}.toml", "--json", cwd=folder, check_exit=0)
    uri = json.loads(result.stdout.strip().splitlines()[-1])["tracking_uri"]
    return uri, result


# ---- which metrics a run logs at its end ------------------------------------------------------

def two_blobs(generator):
    x = torch.randn(300, 2, generator=generator)
    return x, (x[:, 0] > 0).long()


def plus_minus(generator):
    x = torch.randn(300, 2, generator=generator)
    return x, torch.where(x[:, 0] > 0, 1.0, -1.0)


@pytest.mark.parametrize("problem", ["linreg", Problem(two_blobs, linear, "classification"),
                                     Problem(plus_minus, linear, "binary")], ids=["regression", "classes", "binary"])
@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_the_names_the_spec_accepts_are_the_final_metrics_training_logs(problem, val_fraction, monkeypatch):
    if isinstance(problem, Problem):  # a user problem, by import path as a spec names it
        module = types.ModuleType("users_problem")
        module.problem = problem
        monkeypatch.setitem(sys.modules, "users_problem", module)
        name = "users_problem:problem"
    else:
        name = problem
    history = train(RunConfig(problem=name, optimizer="sgd", lr=0.1, steps=3, val_fraction=val_fraction))
    from optimstudy.problems.registry import resolve_problem

    resolved = resolve_problem(name)
    names = final_metric_names(resolved.task, resolved.has_optimum, val_fraction > 0)
    assert {k for k, v in history.final.items() if v is not None} == set(names)
    # what a pruner sees: each val_* (or, without a validation split, train_*) name at every evaluation
    at_evaluation = {evaluation_metric(name, val_fraction > 0) for name in names} - {None}
    assert at_evaluation == set(history.evals[-1]) - {"step"} and len(history.evals) > 1


# ---- ranking by any final metric (a constructed tidy frame) ------------------------------------

def tidy(runs: list[dict]) -> pd.DataFrame:
    """A tidy frame as tracking.reader.load_runs returns it: each run's final points, with its run columns."""
    rows = []
    for index, run in enumerate(runs):
        run = dict(run)
        finals = {**run.pop("finals"), "diverged": 0.0, "train_loss": 0.5}
        columns = {"run_id": f"run{index}", "experiment": "e", "status": "FINISHED", "problem": "linreg",
                   "optimizer": "sgd", **run}
        rows += [{**columns, "step": 10, "metric": metric, "value": value} for metric, value in finals.items()]
    return pd.DataFrame(rows)


def grid(values_by_lr: dict, metric: str, direction: str | None = None) -> pd.Series:
    runs = [{"lr": lr, "seed": seed, "objective_metric": metric, "objective_direction": direction,
             "finals": {"final_val_loss": 1.0 + lr, f"final_{metric}": value}}
            for lr, values in values_by_lr.items() for seed, value in enumerate(values)]
    best = best_configurations(run_table(tidy(runs)))
    assert len(best) == 1
    return best.iloc[0]


def test_runs_rank_by_whichever_final_metric_they_name():
    # val_loss (1 + lr) would pick lr 0.001; the error rate picks 0.01, the lowest mean
    best = grid({0.001: [0.30, 0.32], 0.01: [0.10, 0.12], 0.1: [0.20, 0.22]}, "val_error_rate")
    assert (best["lr"], best["direction"], best["mean"]) == (0.01, "minimize", pytest.approx(0.11))
    # a final metric no built-in problem logs: found in the frame all the same
    best = grid({0.001: [0.5, 0.6], 0.01: [0.9, 0.8], 0.1: [0.7, 0.7]}, "val_auc", direction="maximize")
    assert (best["lr"], best["mean"]) == (0.01, pytest.approx(0.85))
    best = grid({0.001: [0.5, 0.6], 0.01: [0.9, 0.8], 0.1: [0.7, 0.7]}, "train_accuracy")  # was never loaded
    assert (best["lr"], best["direction"]) == (0.01, "maximize")


# ---- ties at the edge of the grid ------------------------------------------------------------

def test_an_edge_lr_tied_with_an_inner_one_is_flat_not_an_edge():
    tied = grid({0.001: [0.97, 0.98], 0.01: [0.98, 0.97], 0.1: [0.90, 0.91]}, "val_accuracy")
    assert tied["edge_warning"] == ""
    strict = grid({0.001: [0.97, 0.98], 0.01: [0.96, 0.97], 0.1: [0.90, 0.91]}, "val_accuracy")
    assert strict["lr"] == 0.001 and "best lr 0.001 is the smallest tried" in strict["edge_warning"]
    # the same three values summed in another order differ in the last bit: still a tie
    rounded = grid({0.001: [0.3, 0.2, 0.1], 0.01: [0.1, 0.2, 0.3], 0.1: [0.5, 0.6, 0.7]}, "val_loss")
    assert rounded["lr"] == 0.001 and rounded["edge_warning"] == ""
    largest = grid({0.001: [0.5, 0.5], 0.01: [0.2, 0.2], 0.1: [0.1, 0.1]}, "val_loss")
    assert "largest tried" in largest["edge_warning"]


# ---- the spec names its metric; a bad one exits 2 --------------------------------------------

def test_a_metric_no_run_logs_exits_2_naming_the_valid_ones(tmp_path, monkeypatch, capsys):
    from optimstudy.cli import main  # in this process: no interpreter start-up

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(textwrap.dedent('''
        name = "bad"
        problem = "mnist_mlp"
        steps = 5
        metric = "val_error_rate"
        [optimizers.sgd]
        lr = [0.1]
    '''))
    assert main(["sweep", "bad.toml"]) == 2
    error = capsys.readouterr().err
    assert ("bad.toml: key 'metric' (line 5): got 'val_error_rate'; expected a metric that classification problem "
            "'mnist_mlp' logs at the end of a run: train_loss, train_accuracy, val_loss, val_accuracy, test_loss, "
            "test_accuracy") in error
    assert "Traceback" not in error and not (tmp_path / "mlruns").exists()


def test_a_pruner_needs_a_metric_measured_at_each_evaluation():
    from optimstudy.sweep.spec import SpecError
    from optimstudy.sweep.spec_reader import parse_spec

    base = {"name": "x", "problem": "linreg", "steps": 5, "optimizers": {"sgd": {"search": {
        "lr": {"low": 1e-3, "high": 1.0, "log": True}}}}}
    with pytest.raises(SpecError, match="key 'search.pruner'.*\"none\" with metric test_loss"):
        parse_spec({**base, "search": {"pruner": "median", "metric": "test_loss"}})
    assert parse_spec({**base, "search": {"pruner": "none", "metric": "test_loss"}}).metric == "test_loss"
    assert parse_spec({**base, "val_fraction": 0, "search": {"pruner": "median"}}).metric == "train_loss"


# ---- real sweeps on a tiny user problem -------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_ranks_by_the_validation_error_rate_and_reports_test_metrics(cli, tmp_path):
    uri, result = sweep_in(tmp_path, cli, "by-error", "val_error_rate", extra="val_fraction = 0.25")
    assert "test split" not in result.stderr  # no leak warning for a validation metric
    frame = load_runs(uri, experiments=["by-error"])
    finals = frame[frame["metric"].str.startswith("final_")].pivot_table(
        index=["optimizer", "lr", "seed"], columns="metric", values="value")
    means = finals.groupby(["optimizer", "lr"]).mean()
    summary = Study(load_study(uri, ["by-error"])).summary.set_index("optimizer")
    assert {"test_loss", "test_accuracy", "test_error_rate"} <= set(SUMMARY_COLUMNS)
    for optimizer in ("sgd", "adam"):
        errors = means.loc[optimizer, "final_val_error_rate"]
        row = summary.loc[optimizer]
        assert row["metric"] == "val_error_rate" and row["direction"] == "minimize"
        assert errors[row["best_lr"]] == row["mean"] == pytest.approx(errors.min())  # the lowest (or a tie)
        for name in ("test_loss", "test_accuracy", "test_error_rate"):  # the best lr's own test numbers
            assert row[name] == pytest.approx(means.loc[(optimizer, row["best_lr"]), f"final_{name}"])


@pytest.mark.slow
def test_ranking_by_a_test_metric_warns_and_the_curves_show_the_training_split(cli, tmp_path):
    uri, result = sweep_in(tmp_path, cli, "by-test", "test_accuracy", extra="val_fraction = 0")
    warning = "the objective test_accuracy is measured on the test split"
    assert result.stderr.count(warning) == 2  # before the sweep spends anything, and beside the table
    study = Study(load_study(uri, ["by-test"]))
    summary = study.summary
    assert set(summary["metric"]) == {"test_accuracy"} and set(summary["direction"]) == {"maximize"}
    assert np.allclose(summary["mean"], summary["test_accuracy"])
    assert render_page(study, [], uri).count(warning) == 1

    # without a validation split the lower panel shows the loss over the whole training split
    spec = importlib.util.spec_from_file_location(
        "optimizer_curves", REPO / "src" / "optimstudy" / "report" / "figures" / "optimizer_curves.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    drawn = script.figure(study)
    lower = drawn.figure.axes[1]
    assert "whole training split" in lower.get_title() and "no validation split" in lower.get_title()
    curves = [line for line in lower.get_lines() if len(line.get_xdata()) > 1]
    assert len(curves) == 2 and all(np.isfinite(line.get_ydata()).all() for line in curves)
    from optimstudy.report import plotting

    plotting.save(drawn.figure, tmp_path / "optimizer_curves", svg=False)
    assert (tmp_path / "optimizer_curves.png").stat().st_size > 10_000
