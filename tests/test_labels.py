"""A spec's optimizer label is part of each trial's identity: two labels never merge into one trial."""
import json
import tomllib
from dataclasses import replace

import optuna
import pytest

from optimstudy import results
from optimstudy.run.config import RunConfig
from optimstudy.sweep.planning import plan
from optimstudy.sweep.spec import config_key
from optimstudy.sweep.spec_reader import parse_spec
from optimstudy.tracking.reader import load_runs
from optimstudy.sweep.queue import Queue, enqueue_missing

ONE_LABEL = """
name = "{name}"
problem = "linreg"
steps = 20
seeds = [0, 1]

[optimizers.sgd_a]
optimizer = "sgd"
lr = [0.01, 0.1]
"""
SECOND_LABEL = """
[optimizers.sgd_b]
optimizer = "sgd"
lr = [0.01, 0.1]
"""


def test_keys_of_configurations_labelled_by_their_optimizer_are_what_studies_stored_before():
    # the key text an earlier version queued for this configuration: a study keyed so resumes as it was
    before = ('{"accumulate": 1, "batch_size": 64, "clip_grad_norm": null, "compile": false, "device": "cpu", '
              '"diverge_factor": 100.0, "epochs": null, "eval_every": null, "loss": null, "lr": 0.05, '
              '"optimizer": "sgd", "problem": "linreg", "schedule": "constant", "schedule_every": null, "seed": 1, '
              '"shuffle": true, "split_seed": 0, "steps": 20, "threads": null, "val_fraction": 0.0625, '
              '"zero_grad": true}')
    config = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=20, seed=1, device="cpu")
    assert "vary" in config.params() and config_key(config, "sgd") == config_key(config) == before
    assert json.loads(config_key(config, "sgd_b"))["label"] == "sgd_b"


def journal_study(tmp_path, name):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal")))
    return optuna.create_study(study_name=name, storage=storage), storage


def test_a_study_queued_before_labels_were_keys_resumes_without_queueing_its_trials_again(tmp_path):
    objective = ("val_loss", "minimize")
    for name, text, newly in (("renamed", ONE_LABEL, []), ("twins", ONE_LABEL + SECOND_LABEL, ["sgd_b"] * 4)):
        spec = parse_spec(tomllib.loads(text.format(name=name)))
        planned, _ = plan(spec)
        study, storage = journal_study(tmp_path, name)
        # what the earlier version queued: keys without the label, so sgd_b's trials merged into sgd_a's
        queued_then = enqueue_missing(study, [replace(p, key=config_key(p.config)) for p in planned], objective)
        assert [p.label for p in queued_then] == ["sgd_a"] * 4
        added = enqueue_missing(study, planned, objective)
        assert [p.label for p in added] == newly, name  # sgd_a found as queued; sgd_b's trials queued now
        queue = Queue(spec, storage)
        queue.read()
        assert not queue.twinned and len(queue.waiting) == 4 + len(newly)


def write(folder, text, name="twins"):
    path = folder / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


@pytest.mark.slow
def test_two_labels_of_one_configuration_both_run_and_check_names_a_label_without_runs(cli, tmp_path):
    spec = write(tmp_path, ONE_LABEL)
    cli("sweep", spec, cwd=tmp_path, check_exit=0)
    spec = write(tmp_path, ONE_LABEL + SECOND_LABEL)  # a second label for the same configuration, not yet swept
    result = cli("check", spec, cwd=tmp_path)
    assert result.returncode == 1 and "label 'sgd_b' of the spec has no finished runs (its trials: none queued)" \
        in result.stdout, result.stdout

    summary = json.loads(cli("sweep", spec, "--json", cwd=tmp_path, check_exit=0).stdout.strip().splitlines()[-1])
    assert summary["new_trials"] == 4 and summary["trials"]["complete"] == 8
    runs = results.run_table(load_runs(summary["tracking_uri"], experiments=["twins"]))
    assert sorted(runs["label"].value_counts().items()) == [("sgd_a", 4), ("sgd_b", 4)]
    best = results.best_configurations(runs)
    assert sorted(best["optimizer"]) == ["sgd_a", "sgd_b"] and set(best["seeds"]) == {2}
    assert cli("check", spec, cwd=tmp_path).returncode == 0
