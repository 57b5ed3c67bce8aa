"""The MLflow writer under faults: killed mid-sweep, stopped (SIGSTOP), its store locked or refusing writes.

Real writer processes, real signals, a real SQLite store held by a real `BEGIN EXCLUSIVE`. The
trainer side is driven in-process (MlflowLogger + tracked_run, as runner.execute uses them) so
that a test costs a writer start-up, not a torch one; the kill test runs the real CLI sweep.
"""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import optuna
import pytest
from helpers import write_tiny_spec
from mlflow import MlflowClient
from optuna.trial import TrialState

from optimstudy.cli import main
from optimstudy.sweep.queue import requeue
from optimstudy.tracking.client import ensure_store
from optimstudy.tracking.connectivity import sqlite_path
from optimstudy.tracking.mlflow_logger import MlflowLogger, tracked_run
from optimstudy.tracking.writer_handle import StoreError, WriterStalled, start_writer, stop_writers


def open_run(store: str, experiment: str) -> MlflowLogger:
    ensure_store(store, start_writer(store))
    logger = MlflowLogger(store, experiment, {"lr": 0.1}, {})
    logger.start()
    return logger


def train(logger, steps, until=None, after=0):
    """Log `steps` steps of 4 metrics after step `after` (50 steps a block, as the training loop ships
    them; ~0.4 ms a step), or steps until `until()` holds; returns the last step logged."""
    step = after
    while (until is None and step < after + steps) or (until is not None and not until()):
        block = range(step + 1, step + 51)
        logger.log_steps(list(block), {name: [1.0 / s for s in block]
                                       for name in ("train_loss", "grad_norm", "update_norm", "lr")})
        step += 50
        time.sleep(0.02)
    return step


def stored_steps(store, run_id) -> list[int]:
    return [m.step for m in MlflowClient(store).get_metric_history(run_id, "train_loss")]


def lock_the_store(store: str) -> sqlite3.Connection:
    """What a `sqlite3 mlflow.db` shell or a long reader does: hold the database so no one writes."""
    holder = sqlite3.connect(sqlite_path(store), isolation_level=None, timeout=30, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


@pytest.mark.slow  # a writer start-up and seconds of waiting on purpose
@pytest.mark.parametrize("schema", ["compared", "not compared"])
def test_a_writer_killed_before_it_stored_the_run_leaves_no_running_run(store, monkeypatch, schema):
    """The writer dies with the run's creation still in its socket: the trainer creates the run itself
    (under its own id, through the direct writes) and ends it FAILED; on a schema revision those writes
    were not compared on it cannot, so no run exists, and the death is still raised, not a crash."""
    from mlflow.exceptions import MlflowException

    from optimstudy.compat import mlflow as mlflow_internals
    from optimstudy.tracking.client import experiment_id
    from optimstudy.tracking.writer_handle import WriterDied

    writer = start_writer(store)
    ensure_store(store, writer)
    known = experiment_id(store, "never-stored")
    os.kill(writer.pid, signal.SIGSTOP)  # it takes nothing more: the creation waits in its socket
    logger = MlflowLogger(store, "never-stored", {"lr": 0.1}, {}, known_experiment_id=known)
    os.kill(writer.pid, signal.SIGKILL)
    writer.process.wait()
    if schema == "not compared":
        monkeypatch.setattr(mlflow_internals, "VERIFIED_SCHEMA_REVISIONS", frozenset({"another revision"}))
    with pytest.raises(WriterDied):
        logger.close("FINISHED")
    client = MlflowClient(store)
    if schema == "compared":
        run = client.get_run(logger.run_id)
        assert run.info.status == "FAILED" and "writer" in run.data.tags["optimstudy.error"]
        assert run.data.params == {"lr": "0.1"}
    else:
        with pytest.raises(MlflowException):
            client.get_run(logger.run_id)
    assert not client.search_runs([known], "attributes.status = 'RUNNING'")


def test_a_stalled_writer_is_warned_about_once_then_the_run_fails_naming_it(store, monkeypatch, capfd):
    monkeypatch.setenv("OPTIMSTUDY_WRITER_TIMEOUT_S", "3")
    logger = open_run(store, "stalled")
    last = train(logger, 0, until=lambda: len(stored_steps(store, logger.run_id)) >= 100)
    writer = logger.writer
    os.kill(writer.pid, signal.SIGSTOP)  # `kill -STOP`: alive, reading nothing
    stopped = time.monotonic()
    try:
        with pytest.raises(WriterStalled, match=rf"writer \(pid {writer.pid}\) has taken nothing for \d+ s .*=3"):
            with tracked_run(logger):
                train(logger, 0, until=lambda: time.monotonic() - stopped > 60, after=last)
        failed_after = time.monotonic() - stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer.pid, signal.SIGCONT)
    assert 3 <= failed_after < 3 + 5  # the timeout, then a few seconds to end the run from here
    err = capfd.readouterr().err
    assert err.count(f"the MLflow writer (pid {writer.pid}) has taken nothing") == 1, err  # once, not every batch
    assert "metric points wait in this process" in err
    assert writer.process.wait(timeout=10) == -signal.SIGKILL  # stopped for good: it cannot end our run over us
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "FAILED" and f"pid {writer.pid}" in run.data.tags["optimstudy.error"]
    assert stored_steps(store, logger.run_id)[:100] == list(range(1, 101))  # what it stored before it stopped
    assert not writer.alive()  # so start_writer replaces it: the next run in this process gets a new writer


@pytest.mark.slow  # a writer start-up and seconds of waiting on purpose
def test_a_store_locked_past_the_retries_stops_the_run_within_seconds(store, monkeypatch, capfd):
    monkeypatch.setenv("OPTIMSTUDY_LOCK_RETRY_S", "2")  # the writer's environment: 60 s by default
    logger = open_run(store, "locked-out")
    last = train(logger, 0, until=lambda: len(stored_steps(store, logger.run_id)) >= 100)
    holder = lock_the_store(store)
    locked = time.monotonic()
    try:
        with pytest.raises(StoreError, match=f"tracking store '{store}'.*stayed locked"):
            with tracked_run(logger):
                train(logger, 0, until=lambda: time.monotonic() - locked > 60, after=last)
        stopped_after = time.monotonic() - locked
    finally:
        holder.rollback()
        holder.close()
    assert stopped_after < 2 * 2 + 5  # the metrics' retries, then the end's, not the run's remaining minute
    stop_writers()  # the writer ends the run as asked, now that the store takes it
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "FAILED" and "stayed locked" in run.data.tags["optimstudy.error"]
    assert capfd.readouterr().err.count("the tracking store is locked by another process") == 1


@pytest.mark.slow  # a writer start-up and seconds of waiting on purpose
def test_a_store_locked_for_less_than_the_retries_loses_nothing(store, capfd):
    logger = open_run(store, "locked-briefly")
    last = train(logger, 0, until=lambda: len(stored_steps(store, logger.run_id)) >= 100)
    holder = lock_the_store(store)
    threading.Timer(2.5, holder.rollback).start()  # longer than one write waits (1 s): the writer retries
    with tracked_run(logger):
        last = train(logger, 0, until=lambda: holder.in_transaction is False, after=last)
        last = train(logger, 200, after=last)
    holder.close()
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert stored_steps(store, logger.run_id) == list(range(1, last + 1))  # every step, once
    assert "the tracking store is locked by another process" in capfd.readouterr().err


def test_a_trial_failed_by_its_writer_is_queued_again_with_its_parameters_once(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    queued = {"optimstudy.key": "grid {lr 0.1}", "optimstudy.phase": "grid",
              "optimstudy.config": {"optimizer": "sgd", "lr": 0.1}, "optimizer": "sgd", "problem": "linreg",
              "seed": 0, "device": "cpu", "objective_metric": "val_loss", "objective_direction": "minimize"}
    study.enqueue_trial(params={"sgd.lr": 0.1}, user_attrs=queued)
    trial = study.ask()
    trial.suggest_float("sgd.lr", 0.1, 0.1, log=True)
    trial.set_user_attr("pid", 123)  # what the run added: not carried over
    trial.set_user_attr("optimstudy.error", "the MLflow writer died mid-trial")
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[0]
    assert requeue(study, failed) and not requeue(study, failed)  # once: the second finds it queued
    again = study.trials[1]
    assert again.state == TrialState.WAITING and again.user_attrs == queued
    assert again.system_attrs["fixed_params"] == {"sgd.lr": 0.1}  # the same configuration runs again




def journal(folder):
    return optuna.load_study(study_name="writer-killed", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "mlruns" / "optuna" / "writer-killed.journal"))))


def writer_of(pid: int) -> int | None:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if (int(stat.read().rsplit(")", 1)[1].split()[1]) == pid
                        and b"optimstudy.tracking.writer" in cmdline.read()):
                    return int(entry)
        except (OSError, ValueError):
            continue
    return None


def running_with_steps(folder) -> bool:
    try:
        trials = journal(folder).trials
    except (FileNotFoundError, KeyError):
        return False
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    return any(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
               and MlflowClient(uri).get_metric_history(t.user_attrs["mlflow_run_id"], "train_loss") for t in trials)


@pytest.mark.slow
def test_a_writer_killed_mid_sweep_is_replaced_and_every_trial_completes_in_that_sweep(tmp_path, monkeypatch, capsys):
    spec = write_tiny_spec(tmp_path, "writer-killed", steps=4000)
    sweep = subprocess.Popen([sys.executable, "-m", "optimstudy", "sweep", spec, "--workers", "2"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not running_with_steps(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(writer_of(sweep.pid), signal.SIGKILL)  # the one writer both workers share
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "the MLflow writer died mid-trial; queued again, with a new writer" in err
    trials = journal(tmp_path).trials
    complete = {t.user_attrs["optimstudy.key"] for t in trials if t.state == TrialState.COMPLETE}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 4 and failed  # every configuration, in this sweep; the interrupted ones ran again
    assert all("writer process exited" in t.user_attrs["optimstudy.error"] for t in failed)
    monkeypatch.chdir(tmp_path)  # `optimstudy check` in this process finds the store from the folder, as the sweep did
    assert main(["check", str(spec)]) == 0, capsys.readouterr()
