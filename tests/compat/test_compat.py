"""Other libraries' private APIs (optimstudy.compat), each checked as optimstudy relies on it.

Real libraries, real stores: a test here fails when an upgrade renames, removes or changes one,
before a user's sweep finds out. The writer's path on an unverified MLflow schema is compared
row by row in tests/tracking/test_writer.py.
"""
import atexit
import logging
import subprocess
import sys

import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from optimstudy.compat import mlflow as mlflow_internals
from optimstudy.compat.optuna import cached_storage, trial_of
from optimstudy.compat.torch import (
    drop_unheard_compile_report,
    foreach_copy_,
    foreach_norm,
    foreach_sub_,
    import_dynamo,
)
from optimstudy.tracking.sql_writes import FastWrites


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}")


# ---- MLflow ----

def test_the_sql_store_behind_the_client_is_found_and_its_schema_is_one_we_compared(client):
    store = mlflow_internals.sql_store(client)
    assert store is not None and store.engine.dialect.name == "sqlite"
    revision = mlflow_internals.schema_revision(store.engine)
    assert revision in mlflow_internals.VERIFIED_SCHEMA_REVISIONS, (
        f"MLflow's schema is now {revision}: run tests/tracking/test_writer.py's comparison with it added to "
        "optimstudy.compat.mlflow.VERIFIED_SCHEMA_REVISIONS, and keep it only if the rows match")
    assert mlflow_internals.sql_store(MlflowClient("http://127.0.0.1:9")) is None  # a tracking server: no SQL


def test_the_name_checks_refuse_what_mlflows_log_batch_refuses(client):
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    for name in ("optimstudy.error", "a/b", "a b"):
        mlflow_internals.check_tag_name(name)
        mlflow_internals.check_metric_name(name)
        client.log_batch(run_id, tags=[RunTag(name, "v")])
    for name in ("../up", "/absolute", ""):
        for check in (mlflow_internals.check_tag_name, mlflow_internals.check_metric_name):
            with pytest.raises(MlflowException):
                check(name)
        with pytest.raises(MlflowException):
            client.log_batch(run_id, tags=[RunTag(name, "v")])


def test_every_name_the_checks_skip_is_one_mlflow_accepts_and_odd_names_are_checked():
    import random
    import string

    from mlflow.utils.validation import _validate_metric_name, _validate_tag_name

    from optimstudy import tag_names

    generator = random.Random(0)
    parts = string.ascii_letters + string.digits + "_"
    sampled = ["".join(generator.choice(parts) for _ in range(generator.randint(1, 6))) for _ in range(2000)]
    names = [value for key, value in vars(tag_names).items() if key.isupper() and isinstance(value, str)]
    names += ["train_loss", "system/cpu_utilization_percentage", "val-acc", "a" * 250, "0", "_"]
    names += [generator.choice("./-").join(generator.sample(sampled, generator.randint(1, 8))) for _ in range(2000)]
    for name in names:
        assert mlflow_internals.is_plain_name(name), name
        _validate_tag_name(name)
        _validate_metric_name(name)
    for odd in ("a b", "a:b", "../up", "/absolute", "a//b", "a/", "./a", ".", "", "é", "a" * 251, None, 3):
        assert not mlflow_internals.is_plain_name(odd)  # MLflow's own checks decide these


def test_the_direct_writes_run_only_on_a_verified_schema(client, monkeypatch):
    assert isinstance(FastWrites.for_client(client), FastWrites)
    monkeypatch.setattr(mlflow_internals, "VERIFIED_SCHEMA_REVISIONS", frozenset({"another revision"}))
    assert FastWrites.for_client(client) is None
    assert FastWrites.for_client(MlflowClient("http://127.0.0.1:9")) is None


# ---- Optuna ----

def test_a_cached_storage_is_made_once_and_a_trial_taken_from_it_runs(tmp_path):
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    cached = cached_storage(rdb)
    assert cached is not rdb and isinstance(cached, optuna.storages.BaseStorage)
    assert cached_storage(cached) is cached  # what load_study does with it: no second cache
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    assert cached_storage(journal) is journal

    study = optuna.create_study(study_name="queue", storage=cached)
    study.enqueue_trial(params={"x": 0.25})
    trial_id = cached.get_trial_id_from_study_id_trial_number(cached.get_study_id_from_name("queue"), 0)
    assert cached.set_trial_state_values(trial_id, state=TrialState.RUNNING)  # what the queue's take() does
    trial = trial_of(optuna.load_study(study_name="queue", storage=cached), trial_id)
    assert trial.number == 0 and trial.suggest_float("x", 0.0, 1.0) == 0.25  # the queued value
    study.tell(trial, 1.5)
    stored = rdb.get_trial(trial_id)
    assert stored.state == TrialState.COMPLETE and stored.params == {"x": 0.25} and stored.value == 1.5


# ---- torch ----

def test_the_fused_list_ops_compute_what_the_diagnostics_use():
    a, b = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 4.0]])], [torch.ones(2), torch.ones(2, 2)]
    assert [norm.item() for norm in foreach_norm(a)] == [5.0, 5.0]
    copies = [torch.zeros(2), torch.zeros(2, 2)]
    foreach_copy_(copies, a)
    foreach_sub_(copies, b)
    assert all(torch.equal(c, x - y) for c, x, y in zip(copies, a, b)) and a[0].tolist() == [3.0, 4.0]


def test_dynamo_imports_ahead_of_the_first_step():
    dynamo = import_dynamo()
    assert dynamo.__name__ == "torch._dynamo" and sys.modules["torch._dynamo"] is dynamo
    assert callable(dynamo.graph_break)  # what torch.optim's step calls from it


def test_an_exit_skips_dynamos_compile_report_only_where_its_log_drops_it():
    """Seen in this process: atexit holds a reference to each handler it will run, so unregistering
    dynamo's drops the handler's reference count by one (a new interpreter for each case would cost
    more than the whole suite saves by it)."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports torch._dynamo, as a command's first one
    utils = sys.modules["torch._dynamo.utils"]
    logger, level = utils.log, utils.log.level
    try:
        logger.setLevel(logging.INFO)  # TORCH_LOGS or the user's logging asks for it: the report stays
        registered = sys.getrefcount(utils.dump_compile_times)
        drop_unheard_compile_report()
        kept = sys.getrefcount(utils.dump_compile_times)  # (counted outside an assert: pytest's holds one more)
        logger.setLevel(logging.WARNING)  # as torch's default logging leaves it: the report would be dropped
        drop_unheard_compile_report()
        dropped = sys.getrefcount(utils.dump_compile_times)
        assert (kept, dropped) == (registered, registered - 1)
    finally:
        logger.setLevel(level)
        atexit.unregister(utils.dump_compile_times)
        atexit.register(utils.dump_compile_times)  # this process's exit as it was


# ---- CPython ----

def test_exit_handlers_run_before_a_quick_exit():
    code = ("import atexit, os, sys; from optimstudy.compat.python import run_exit_handlers; "
            "atexit.register(print, 'handler ran'); run_exit_handlers(); sys.stdout.flush(); os._exit(3)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "handler ran\n", "")


def test_the_writers_compat_module_starts_without_torch_or_the_package():
    code = ("import sys; import optimstudy.compat.mlflow; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'optuna', 'optimstudy')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "['optimstudy', 'optimstudy.compat', 'optimstudy.compat.mlflow']", result.stderr


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_trials_added_in_bulk_are_the_trials_enqueue_trial_makes(tmp_path, kind):
    from optuna.trial import create_trial

    from optimstudy.compat.optuna import add_trials

    def storage(name):
        if kind == "journal":
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / name)))
        return f"sqlite:///{tmp_path / name}"

    queued = [({"sgd.lr": 0.1 * (index + 1)}, {"optimstudy.key": f"k{index}", "config": {"lr": index, "opt": [1, 2]}})
              for index in range(7)]
    one_by_one = optuna.create_study(study_name="s", storage=storage("one"))
    for params, attrs in queued:
        one_by_one.enqueue_trial(params=params, user_attrs=attrs)
    in_bulk = optuna.create_study(study_name="s", storage=storage("bulk"))
    add_trials(in_bulk, [create_trial(state=TrialState.WAITING, user_attrs=attrs, system_attrs={"fixed_params": params})
                         for params, attrs in queued], len(queued), chunk=3)
    # read back through a fresh storage: what is on disk, not the writer's cache
    reread = optuna.load_study(study_name="s", storage=storage("bulk"))
    for expected, got in zip(one_by_one.get_trials(), reread.get_trials(), strict=True):
        assert (got.number, got.state, got.params, got.user_attrs, got.system_attrs, got.datetime_start) == \
            (expected.number, expected.state, expected.params, expected.user_attrs, expected.system_attrs,
             expected.datetime_start)
    # and a worker takes them as it takes enqueued ones: the fixed params become the trial's params
    trial = reread.ask()
    assert trial.number == 0 and trial.suggest_float("sgd.lr", 0.01, 1.0) == pytest.approx(0.1)
