"""Sweeps: specs as Optuna studies with one MLflow child run per trial; real stores."""
import json
import subprocess
import sys
import textwrap

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from optimstudy.tidy import load_runs
from optimstudy.tracking import ensure_store

GRID = """
name = "{name}"
problem = "linreg"
steps = 40
seeds = [0, 1]
devices = {devices}

[optimizers.sgd]
lr = [0.01, 0.1]

[optimizers.adam]
lr = [0.001, 0.01]
"""


def write_spec(folder, name="grid", body=GRID, **values):
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(body).format(name=name, devices=values.get("devices", '["cpu"]')))
    return path


def sweep(cli, spec, cwd, *extra, check_exit=0):
    result = cli("sweep", spec, "--json", *extra, cwd=cwd, check_exit=check_exit)
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def study_of(cwd, name):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cwd / "mlruns" / "optuna" / f"{name}.journal"))))


def test_grid_runs_every_trial_once_as_children_of_one_parent_and_resumes(cli, tmp_path):
    spec = write_spec(tmp_path)
    summary, _ = sweep(cli, spec, tmp_path)
    assert summary["trials"] == {"complete": 8, "pruned": 0, "failed": 0, "skipped": 0}
    uri = summary["tracking_uri"]
    runs = load_runs(uri, experiments=["grid"], with_metrics=False)
    children = runs[runs["parent_run_id"] == summary["parent_run_id"]]
    assert len(children) == 8 and set(children["status"]) == {"FINISHED"}
    assert set(runs.loc[runs["run_id"] == summary["parent_run_id"], "kind"]) == {"sweep"}
    study = study_of(tmp_path, "grid")
    by_run = dict(zip(children["run_id"], children["trial"]))
    for trial in study.trials:  # each trial links its run, and the run names its trial and study
        assert by_run[trial.user_attrs["mlflow_run_id"]] == trial.number
    assert set(children["study"]) == {"grid"}
    configs = {(r.optimizer, r.lr, r.seed) for r in children.itertuples()}
    assert len(configs) == 8

    again, result = sweep(cli, spec, tmp_path)
    assert again["new_trials"] == 0 and again["trials"]["complete"] == 8
    assert "nothing to run" in result.stderr
    assert len(load_runs(uri, experiments=["grid"], with_metrics=False)) == 9  # no new runs
    assert again["parent_run_id"] == summary["parent_run_id"]


def test_best_lr_table_edge_warning_and_confirmation(cli, tmp_path):
    body = GRID + "\n[confirm]\nseeds = 2\n"
    spec = write_spec(tmp_path, "confirmed", body)
    summary, result = sweep(cli, spec, tmp_path)
    assert summary["trials"]["complete"] == 8 + 2 * 2  # the best lr of each optimizer on 2 new seeds
    study = study_of(tmp_path, "confirmed")
    confirm = [t for t in study.trials if t.user_attrs["optimstudy.phase"] == "confirm"]
    best = {row["optimizer"]: row["lr"] for row in summary["best"]}
    assert {(t.user_attrs["optimizer"], t.user_attrs["seed"]) for t in confirm} == {
        (o, s) for o in ("sgd", "adam") for s in (2, 3)}
    assert all(t.user_attrs["optimstudy.config"]["lr"] == best[t.user_attrs["optimizer"]] for t in confirm)
    # every best lr here sits on an edge of its 2-point grid, so each must be warned about
    assert len(summary["edge_warnings"]) == 2 and "widen" in result.stderr
    parent = MlflowClient(summary["tracking_uri"]).get_run(summary["parent_run_id"])
    assert json.loads(parent.data.tags["optimstudy.edge_warnings"]) == summary["edge_warnings"]
    assert "best lr" in result.stdout


def test_absent_device_is_skipped_and_counted(cli, tmp_path):
    spec = write_spec(tmp_path, "devices", devices='["cpu", "cuda:7"]')
    summary, result = sweep(cli, spec, tmp_path)
    assert summary["trials"]["complete"] == 8 and summary["trials"]["skipped"] == 8
    assert "cuda:7" in result.stderr and "not available" in result.stderr


SEARCH = """
name = "{name}"
problem = "linreg"
steps = 60
eval_every = 10
seeds = [0]

[search]
sampler = "tpe"
trials = 10
pruner = "median"

[optimizers.sgd.search]
lr = {{ low = 1e-5, high = 0.5, log = true }}

[optimizers.adam.search]
lr = {{ low = 1e-5, high = 0.5, log = true }}
"""


def test_search_gives_equal_budgets_and_records_pruning_in_both_stores(cli, tmp_path):
    spec = write_spec(tmp_path, "search", SEARCH)
    summary, _ = sweep(cli, spec, tmp_path)
    study = study_of(tmp_path, "search")
    per_optimizer = {}
    for trial in study.trials:
        per_optimizer[trial.user_attrs["optimizer"]] = per_optimizer.get(trial.user_attrs["optimizer"], 0) + 1
        assert len(trial.params) == 1 and list(trial.params)[0].endswith(".lr")
    assert per_optimizer == {"sgd": 10, "adam": 10}
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and summary["trials"]["pruned"] == len(pruned)
    client = MlflowClient(summary["tracking_uri"])
    for trial in pruned:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["optimstudy.pruned"].startswith("pruned at step")


@pytest.mark.slow
def test_four_workers_on_the_default_store_run_each_configuration_once(cli, tmp_path):
    body = GRID.replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]")
    spec = write_spec(tmp_path, "workers", body)
    summary, result = sweep(cli, spec, tmp_path, "--workers", "4")
    assert summary["trials"]["complete"] == 16 and summary["trials"]["failed"] == 0
    assert "locked" not in result.stderr and "already exists" not in result.stderr
    study = study_of(tmp_path, "workers")
    keys = [t.user_attrs["optimstudy.key"] for t in study.trials]
    assert len(keys) == len(set(keys)) == 16
    assert len({t.user_attrs["pid"] for t in study.trials}) > 1  # the work really was shared
    runs = load_runs(summary["tracking_uri"], experiments=["workers"], with_metrics=False)
    assert (runs["status"] == "FINISHED").sum() == 17
    assert cli("check", spec, cwd=tmp_path).returncode == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_share_one_study_on_postgresql(tmp_path, postgres_database):
    optuna_url, mlflow_url = postgres_database(), postgres_database()  # each needs its own database
    body = GRID.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
    spec = write_spec(tmp_path, "shared", body)
    ensure_store(mlflow_url)  # the tracking server's database, as it would exist before the sweep
    optuna.storages.RDBStorage(optuna_url)
    machines = []
    for index in range(2):  # two "machines": separate folders, same storage and tracking store
        folder = tmp_path / f"machine{index}"
        folder.mkdir()
        machines.append(subprocess.Popen(
            [sys.executable, "-m", "optimstudy", "sweep", str(spec), "--storage", optuna_url,
             "--tracking-uri", mlflow_url, "--json"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    outputs = [m.communicate(timeout=300) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], [err[-2000:] for _, err in outputs]
    study = optuna.load_study(study_name="shared", storage=optuna_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["optimstudy.key"] for t in complete]
    assert len(keys) == len(set(keys)) == 12
    hosts_pids = {t.user_attrs["pid"] for t in complete}
    assert len(hosts_pids) == 2  # both machines did part of the work
    runs = load_runs(mlflow_url, experiments=["shared"], with_metrics=False)
    assert (runs[runs["kind"] == "trial"]["status"] == "FINISHED").sum() == 12
