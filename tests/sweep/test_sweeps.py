"""Sweeps: specs as Optuna studies with one MLflow child run per trial; real stores."""
import json
import textwrap

import optuna
import pytest
from helpers import in_process
from mlflow import MlflowClient
from optuna.trial import TrialState

from optimstudy.tracking.reader import load_runs

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


def sweep_in_process(spec, cwd, *extra):
    """`sweep` for a test about what a one-worker sweep writes, not about its process: run by this
    process (a new interpreter costs ~5-10 s to start on 2 busy cores); its trials train here."""
    result = in_process("sweep", spec, "--json", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def study_of(cwd, name):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cwd / "mlruns" / "optuna" / f"{name}.journal"))))


def test_grid_runs_every_trial_once_as_children_of_one_parent_and_resumes(cli, tmp_path):
    spec = write_spec(tmp_path)
    # a real `optimstudy sweep` process, as a user starts it (this file's other one-worker sweeps run in process)
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

    again, result = sweep_in_process(spec, tmp_path)  # nothing to run
    assert again["new_trials"] == 0 and again["trials"]["complete"] == 8
    assert "nothing to run" in result.stderr
    assert len(load_runs(uri, experiments=["grid"], with_metrics=False)) == 9  # no new runs
    assert again["parent_run_id"] == summary["parent_run_id"]


def test_best_lr_table_edge_warning_and_confirmation(tmp_path):
    body = GRID + "weight_decay = [0.0, 0.1]  # adam's: a grid axis beside lr\n\n[confirm]\nseeds = 2\n"
    spec = write_spec(tmp_path, "confirmed", body)
    summary, result = sweep_in_process(spec, tmp_path)
    assert summary["trials"]["complete"] == 4 + 8 + 2 * 2  # the best of each optimizer on 2 new seeds
    study = study_of(tmp_path, "confirmed")
    confirm = [t for t in study.trials if t.user_attrs["optimstudy.phase"] == "confirm"]
    best = {row["optimizer"]: row["lr"] for row in summary["best"]}
    assert {(t.user_attrs["optimizer"], t.user_attrs["seed"]) for t in confirm} == {
        (o, s) for o in ("sgd", "adam") for s in (2, 3)}
    assert all(t.user_attrs["optimstudy.config"]["lr"] == best[t.user_attrs["optimizer"]] for t in confirm)
    adam = {}  # (lr, weight_decay) -> the objective of each seed, from the Optuna study alone
    for trial in study.trials:
        config = trial.user_attrs["optimstudy.config"]
        if trial.user_attrs["optimstudy.phase"] == "grid" and config["optimizer"] == "adam":
            adam.setdefault((config["lr"], config["opt"]["weight_decay"]), []).append(trial.value)
    assert set(adam) == {(lr, decay) for lr in (0.001, 0.01) for decay in (0.0, 0.1)}
    best_adam = min(adam, key=lambda k: sum(adam[k]) / len(adam[k]))
    assert {(t.user_attrs["optimstudy.config"]["lr"], t.user_attrs["optimstudy.config"]["opt"]["weight_decay"])
            for t in confirm if t.user_attrs["optimizer"] == "adam"} == {best_adam}
    # every best lr here sits on an edge of its 2-point grid, so each must be warned about
    assert len(summary["edge_warnings"]) == 2 and "extend the grid" in result.stderr
    parent = MlflowClient(summary["tracking_uri"]).get_run(summary["parent_run_id"])
    assert json.loads(parent.data.tags["optimstudy.edge_warnings"]) == summary["edge_warnings"]
    assert "best lr" in result.stdout


def test_absent_device_is_skipped_and_counted(tmp_path):
    spec = write_spec(tmp_path, "devices", devices='["cpu", "cuda:7"]')
    summary, result = sweep_in_process(spec, tmp_path)
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


def test_search_gives_equal_budgets_and_records_pruning_in_both_stores(tmp_path):
    spec = write_spec(tmp_path, "search", SEARCH)
    summary, _ = sweep_in_process(spec, tmp_path)
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
    tags = client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).data.tags  # contract 1 of coord.md
    assert tags["optimstudy.objective_metric"] == "val_loss" and tags["optimstudy.objective_direction"] == "minimize"
    assert json.loads(tags["optimstudy.lr_space"]) == [1e-5, 0.5, True]
    assert tags["optimstudy.phase"] == "search" and tags["optimstudy.optimizer_label"] in ("sgd", "adam")


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
    assert in_process("check", spec, cwd=tmp_path).returncode == 0


SAMPLED = """
name = "{name}"
problem = "linreg"
steps = 20
seeds = [0]

[search]
sampler = "{sampler}"
trials = 6

[optimizers.sgd.search]
lr = {{ low = 1e-3, high = 1.0, log = true }}

[optimizers.adam.search]
lr = {{ low = 1e-4, high = 0.1, log = true }}
"""


@pytest.mark.parametrize("sampler", ["random", "gp", "tpe"])
def test_a_search_samples_different_values_trial_to_trial(tmp_path, sampler):
    spec = tmp_path / f"{sampler}.toml"
    spec.write_text(SAMPLED.format(name=sampler, sampler=sampler))
    sweep_in_process(spec, tmp_path)
    sampled = {}
    for trial in study_of(tmp_path, sampler).trials:
        sampled.setdefault(trial.user_attrs["optimizer"], []).append(next(iter(trial.params.values())))
    for optimizer, values in sampled.items():  # one seed for every trial made all 6 the same value
        assert len(values) == 6 and len(set(values)) >= 5, (optimizer, values)
    assert in_process("check", spec, cwd=tmp_path).returncode == 0


def test_confirmation_trials_are_never_pruned(tmp_path):
    body = SEARCH.replace('sampler = "tpe"', 'sampler = "random"').replace("trials = 10", "trials = 6")
    spec = write_spec(tmp_path, "confirm-pruning", body + "\n[confirm]\nseeds = 3\n")
    summary, _ = sweep_in_process(spec, tmp_path)
    trials = study_of(tmp_path, "confirm-pruning").trials
    confirm = [t for t in trials if t.user_attrs["optimstudy.phase"] == "confirm"]
    assert len(confirm) == 2 * 3 and all(t.state == TrialState.COMPLETE for t in confirm)
    assert all(t.intermediate_values == {} for t in confirm)  # never reported, so never compared
    assert all(row["seeds"] >= 1 for row in summary["best"])


@pytest.mark.slow
def test_a_spec_name_is_its_study_identity(tmp_path):
    """Every sweep in this process: its subject is the study, and `new_trials` counts only the trials
    each sweep ran, though the three share a pid."""
    body = GRID.replace("seeds = [0, 1]", "seeds = [0]").replace("[0.001, 0.01]", "[0.01]")
    spec = write_spec(tmp_path, "identity", body)
    first, _ = sweep_in_process(spec, tmp_path)
    assert first["trials"]["complete"] == 3

    # an extension (a new lr, a new seed) is queued, recorded on the parent run and reported
    spec.write_text(spec.read_text().replace("seeds = [0]", "seeds = [0, 1]").replace("[0.01]", "[0.01, 0.03]"))
    extended, result = sweep_in_process(spec, tmp_path)
    assert extended["parent_run_id"] == first["parent_run_id"]
    assert extended["new_trials"] == 8 - 3 and extended["trials"]["complete"] == 8
    assert "added" in result.stderr and "optimizers.adam.lr 0.03" in result.stderr and "seeds 1" in result.stderr
    parent = MlflowClient(first["tracking_uri"]).get_run(first["parent_run_id"])
    assert "optimizers.adam.lr 0.03" in parent.data.tags["optimstudy.extensions"]
    artifact = MlflowClient(first["tracking_uri"]).download_artifacts(parent.info.run_id, "spec.toml", str(tmp_path))
    assert "0.03" in open(artifact).read()

    # any other change (the budget, the direction) under the same name is refused, naming the keys
    changed = spec.read_text().replace("steps = 40", "steps = 50")
    spec.write_text(changed.replace('problem = "linreg"', 'problem = "linreg"\ndirection = "maximize"'))
    result = in_process("sweep", spec, cwd=tmp_path)  # refused before any work: no new process needed
    assert result.returncode == 2, result.stderr[-3000:]
    assert "budget" in result.stderr and "direction" in result.stderr and "--restart" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(study_of(tmp_path, "identity").trials) == 8  # nothing queued

    restarted, result = sweep_in_process(spec, tmp_path, "--restart")
    assert restarted["trials"]["complete"] == 8 and restarted["new_trials"] == 8
    assert restarted["parent_run_id"] != first["parent_run_id"]
    assert "identity.replaced-" in result.stderr
    runs = load_runs(first["tracking_uri"], experiments=["identity"], with_metrics=False)
    assert len(runs) == 9 and set(runs["parent_run_id"].dropna()) == {restarted["parent_run_id"]}


def test_check_finds_double_queueing_a_split_parent_run_and_repeated_samples(tmp_path):
    spec = tmp_path / "broken.toml"
    spec.write_text(SAMPLED.format(name="broken", sampler="random").replace("trials = 6", "trials = 2"))
    summary, _ = sweep_in_process(spec, tmp_path)
    assert in_process("check", spec, cwd=tmp_path).returncode == 0
    study = study_of(tmp_path, "broken")
    first = study.trials[0]
    # what two planners at once and a seed-per-claim sampler used to leave behind:
    study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                              value=first.value, user_attrs=first.user_attrs))
    client = MlflowClient(summary["tracking_uri"])
    experiment = client.get_experiment_by_name("broken").experiment_id
    client.set_terminated(client.create_run(experiment, tags={"optimstudy.kind": "sweep",
                                                              "optimstudy.study": "broken"}).info.run_id)
    result = in_process("check", spec, cwd=tmp_path)
    assert result.returncode == 1
    assert "queued 2 times" in result.stdout
    assert "2 parent runs for one study" in result.stdout
    assert "sampled identical values" in result.stdout


@pytest.mark.slow
def test_report_can_leave_the_store_untouched(tmp_path):
    """What the report writes, not its process: the sweep and the report both run in this process."""
    spec = write_spec(tmp_path, "readonly", GRID.replace("seeds = [0, 1]", "seeds = [0]"))
    summary, _ = sweep_in_process(spec, tmp_path)
    reported = in_process("report", "--experiment", "readonly", "--no-log-to-store", "--out", tmp_path / "page",
                          cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    artifacts = [a.path for a in MlflowClient(summary["tracking_uri"]).list_artifacts(summary["parent_run_id"])]
    assert artifacts == ["spec.toml"]  # the page was written to --out only
    assert (tmp_path / "page" / "report.html").exists()


@pytest.mark.slow
def test_a_deleted_experiment_is_refused_not_restored_silently(tmp_path, tracking_uri, monkeypatch, capsys):
    """Issue 21.7: a sweep after its experiment was deleted (and its journal removed) used to restore
    the experiment silently, old runs and all (a trial with two FINISHED runs). Now the sweep, and
    `optimstudy run` into that name, exit 2 naming both ways out, and write nothing; the restore
    command the message gives works."""
    import re
    import shlex

    from mlflow.entities import ViewType

    from optimstudy.cli import main
    from optimstudy.tracking.client import experiment_id

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, "gone", 'name = "{name}"\nproblem = "linreg"\nsteps = 5\nseeds = [0]\n\n'
                                        '[optimizers.sgd]\nlr = [0.1]\n')
    assert main(["sweep", str(spec), "--tracking-uri", tracking_uri]) == 0
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("gone").experiment_id
    runs = sorted(r.info.run_id for r in client.search_runs([experiment], run_view_type=ViewType.ALL))
    client.delete_experiment(experiment)
    journal = tmp_path / "mlruns" / "optuna" / "gone.journal"
    journal.unlink()
    capsys.readouterr()
    for argv in (["sweep", str(spec)], ["run", "--problem", "linreg", "--steps", "5", "--experiment", "gone"]):
        assert main([*argv, "--tracking-uri", tracking_uri]) == 2
        error = capsys.readouterr().err
        assert "experiment 'gone'" in error and "was deleted" in error and "Traceback" not in error, error
        assert "a new `name`" in error and "--experiment NEW" in error, error
        restore = re.search(r"`(MLFLOW_TRACKING_URI=\S+ mlflow experiments restore --experiment-id \d+)`", error)
        assert restore is not None, error
    assert client.get_experiment(experiment).lifecycle_stage == "deleted"
    assert sorted(r.info.run_id for r in client.search_runs([experiment], run_view_type=ViewType.ALL)) == runs
    assert optuna.get_all_study_names(optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))) == []  # no study written
    # the way out the message names, run as printed (MLflow's CLI, in process: a new interpreter costs ~5 s)
    from click.testing import CliRunner
    from mlflow.cli import cli as mlflow_cli

    env_assignment, program, *arguments = shlex.split(restore.group(1))
    assert program == "mlflow"
    restored = CliRunner().invoke(mlflow_cli, arguments, env=dict([env_assignment.split("=", 1)]))
    assert restored.exit_code == 0, restored.output
    assert client.get_experiment(experiment).lifecycle_stage == "active"
    assert experiment_id(tracking_uri, "gone") == experiment
