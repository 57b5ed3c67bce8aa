"""Workers die with their sweep (issue 29, part 7): `kill -9` of a sweep's process group leaves no
worker behind, and a resume started at once succeeds. Real processes, real signals, a real
SQLite Optuna storage (the one that met a leftover worker: "database is locked") and MLflow store.
"""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from helpers import in_process, run_cli, write_tiny_spec
from optuna.trial import TrialState
from test_reliability import wait_for


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (a killed child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="a parent-death signal is Linux's (elsewhere workers stop "
                                                    "after their trial)")
def test_kill_9_of_a_sweeps_group_leaves_no_worker_and_a_resume_at_once_succeeds(tmp_path):
    # 4 trials of 1000 steps (1-3 s each on 2 busy cores): the group is killed within a poll (0.2 s) of a
    # look (a millisecond SQLite read) that sees a worker's trial running, so both processes are still in
    # their first trials, and a resume that redoes them is short
    write_tiny_spec(tmp_path, "orphans", steps=1000)
    database = tmp_path / "optuna.db"
    storage = f"sqlite:///{database}"
    sweep = subprocess.Popen([sys.executable, "-m", "optimstudy", "sweep", "orphans.toml", "--workers", "2",
                              "--storage", storage], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def running_pids():
        """The pids of the RUNNING trials, read straight from Optuna's tables: a look through
        optuna.load_study costs far more, and a trial could end between it and the kill."""
        if not database.exists():
            return set()
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
                rows = connection.execute(
                    "SELECT a.value_json FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'pid' "
                    "WHERE s.study_name = 'orphans' AND t.state = 'RUNNING'").fetchall()
        except sqlite3.Error:  # not created yet
            return set()
        return {json.loads(value) for (value,) in rows}

    workers = set()

    def a_worker_runs_a_trial():
        workers.update(running_pids() - {sweep.pid})
        return bool(workers)

    try:
        assert wait_for(a_worker_runs_a_trial, 180), sweep.stderr.read()[-3000:] \
            if sweep.poll() is not None else "no worker started a trial"
        assert all(alive(pid) for pid in workers)  # the workers this look found, killed right after it
        os.killpg(sweep.pid, signal.SIGKILL)  # the sweep's own group: the workers have their own sessions
        sweep.wait(timeout=30)
        killed_at = time.monotonic()
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 5)
        gone_after = time.monotonic() - killed_at
        assert gone_after < 1.5, gone_after
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)

    # at once: nothing left holds the storage, and the interrupted trials run again
    resumed = run_cli("sweep", "orphans.toml", "--storage", storage, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "OperationalError" not in resumed.stderr and "Traceback" not in resumed.stderr
    assert "recovered: trial" in resumed.stderr
    trials = optuna.load_study(study_name="orphans", storage=storage).trials
    complete = {t.user_attrs["optimstudy.key"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == 4


@pytest.mark.slow
def test_a_locked_sqlite_storage_is_waited_for_with_one_line(tmp_path):
    write_tiny_spec(tmp_path, "locked", steps=20)
    database = tmp_path / "optuna.db"
    storage = f"sqlite:///{database}"
    made = in_process("sweep", "locked.toml", "--storage", storage, cwd=tmp_path)  # only makes the storage
    assert made.returncode == 0, made.stderr[-3000:]

    holder = sqlite3.connect(str(database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held until the sweep says it waits
    sweep = subprocess.Popen([sys.executable, "-m", "optimstudy", "sweep", "locked.toml", "--storage", storage],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in sweep.stderr:
            lines.append(line)
            if "is locked by another process" in line:
                time.sleep(2)  # it waits, and does not fail meanwhile
                assert sweep.poll() is None
                break
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    lines += sweep.stderr.readlines()
    sweep.wait(timeout=300)
    err = "".join(lines)
    assert sweep.returncode == 0, err[-3000:]
    assert err.count("is locked by another process") == 1, err[-3000:]
    assert "OperationalError" not in err and "Traceback" not in err


def test_a_trial_taken_by_a_worker_killed_before_it_marked_it_is_recovered_by_a_resume_at_once(tmp_path,
                                                                                               monkeypatch):
    """A worker killed between taking a trial (WAITING -> RUNNING, Queue.take's compare-and-set) and
    marking it as its own (queue.mark_owner) leaves a RUNNING trial with no owner on record. A sweep's
    start leaves it (another machine's worker may be marking it); a worker whose queue ran dry fails it
    once UNMARKED_GRACE_S has passed with no mark, so a resume started at once runs its configuration;
    a trial whose live worker marks it within the grace is left running. (The kill -9
    test above met this: its resume once left a configuration to a worker that was dead.)"""
    import threading

    from optimstudy.sweep import trials
    from optimstudy.sweep.planning import plan
    from optimstudy.sweep.queue import enqueue_missing, fail_if_running, mark_owner
    from optimstudy.sweep.spec_reader import load_spec
    from optimstudy.sweep.storages import open_storage, open_study

    monkeypatch.setattr(trials, "UNMARKED_GRACE_S", 1.0)  # the rule, not its 5 s: a live worker marks in ms
    path = write_tiny_spec(tmp_path, "unmarked", steps=20)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec, storage = load_spec(path), open_storage(url)
    study = open_study(spec, storage, create=True)
    enqueue_missing(study, plan(spec)[0], (spec.metric, spec.direction))
    study_id = storage.get_study_id_from_name(spec.name)
    killed, slow, killed_later = (storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in range(3))
    for trial_id in (killed, slow):
        assert storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)  # taken, not yet marked
    started = time.monotonic()
    assert trials.recover_dead_trials(study, storage, None) == []  # a sweep's start: no wait, nothing failed
    assert time.monotonic() - started < 1.0
    marking = threading.Timer(0.2, mark_owner, (storage, slow))  # a live worker that marks its trial late
    marking.start()
    changed = trials.recover_dead_trials(study, storage, None, wait_for_unmarked=True)  # a worker's empty queue
    marking.join()
    assert changed == ["trial 0: worker (unmarked) is gone; marked FAIL"]
    assert storage.get_trial(killed).state == TrialState.FAIL and storage.get_trial(slow).state == TrialState.RUNNING
    assert fail_if_running(storage, slow, "interrupted")  # that worker, stopped: its trial is queued again on resume

    assert storage.set_trial_state_values(killed_later, state=TrialState.RUNNING)
    resumed = in_process("sweep", path, "--storage", url, cwd=tmp_path)  # its queue runs dry, then it waits
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert storage.get_trial(killed_later).state == TrialState.FAIL
    assert storage.get_trial(killed_later).user_attrs["optimstudy.error"] == "its worker died mid-trial"
    trials_now = optuna.load_study(study_name=spec.name, storage=url).trials
    assert len({t.user_attrs["optimstudy.key"] for t in trials_now if t.state == TrialState.COMPLETE}) == 4
