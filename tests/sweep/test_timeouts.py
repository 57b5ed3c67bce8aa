"""Trial timeouts (issue 29, part 1): a problem whose model never returns does not hang `run` or a
sweep. Real processes, real signals, a real MLflow SQLite store and a real Optuna journal.

The user's problem hangs in `forward` only on training batches of 32 rows, so the up-front model
check (2 rows) and the evaluations pass and a grid over batch_size = [16, 32] has one trial that
hangs and one that finishes.
"""
import os
import subprocess
import sys
import time

import optuna
import pytest
from helpers import in_process, run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.waits  # each waits out a timeout or a hung trial

HANGING_MODULE = '''
import os
import signal
import os
import subprocess
import sys
import time

import torch
from torch import nn

from optimstudy.problems.registry import Problem


def two_halves(generator):
    x = torch.randn(400, 2, generator=generator)
    return x, (x[:, 0] > 0).long()


class HangsOn32(nn.Module):
    def __init__(self, data):
        super().__init__()
        self.net = nn.Linear(data.input_size, data.outputs)

    def forward(self, x):
        if self.training and x.shape[0] == 32:
            if os.environ.get("HANG_DEAF"):  # no signal reaches this thread: as if stuck inside C code
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            time.sleep(10 ** 6)
        return self.net(x)


problem = Problem(data=two_halves, make_model=HangsOn32, task="classification")
'''

SPEC = '''
name = "hangs"
problem = "hanging:problem"
steps = 30
batch_size = [16, 32]
seeds = [0]
trial_timeout_s = 3

[optimizers.sgd]
lr = [0.1]
'''


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "hanging.py").write_text(HANGING_MODULE)
    return tmp_path


def runs_of(store: str, experiment: str):
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id])


def timed_cli(*args, cwd, env=None, timeout=120):
    started = time.monotonic()
    result = run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    return result, time.monotonic() - started


@pytest.mark.slow
def test_run_past_its_trial_timeout_ends_failed_and_says_why(scratch):
    store = f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}"
    result, took = timed_cli("run", "--problem", "hanging:problem", "--batch-size", "32", "--steps", "20",
                             "--trial-timeout", "5", "--tracking-uri", store, "--experiment", "hang", cwd=scratch)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "timed out" in result.stderr and "limit of 5 s" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert took < 60, took  # the imports (~10 s on 2 busy cores), 5 s, then at most one grace period
    [run] = runs_of(store, "hang")
    assert run.info.status == "FAILED"
    assert "TrialTimeout" in run.data.tags["optimstudy.error"] and "timed out" in run.data.tags["optimstudy.error"]


@pytest.mark.slow
def test_the_stall_guard_ends_a_hung_run_without_any_timeout_given(scratch):
    result, took = timed_cli("run", "--problem", "hanging:problem", "--batch-size", "32", "--steps", "20",
                             "--no-track", cwd=scratch, env={"OPTIMSTUDY_STALL_TIMEOUT_S": "3"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "stalled" in result.stderr and "no training step for 3 s" in result.stderr, result.stderr[-2000:]
    assert took < 60, took


@pytest.mark.slow
def test_a_run_stuck_where_no_signal_reaches_is_failed_and_its_process_ended(scratch):
    store = f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}"
    result, took = timed_cli("run", "--problem", "hanging:problem", "--batch-size", "32", "--steps", "20",
                             "--trial-timeout", "3", "--tracking-uri", store, "--experiment", "deaf", cwd=scratch,
                             env={"HANG_DEAF": "1"})
    assert result.returncode == 124, (result.returncode, result.stderr[-2000:])
    assert "does not respond" in result.stderr and "timed out" in result.stderr, result.stderr[-2000:]
    assert took < 60, took
    [run] = runs_of(store, "deaf")
    assert run.info.status == "FAILED"
    assert "TrialTimeout" in run.data.tags["optimstudy.error"]



def test_a_bad_trial_timeout_is_refused_before_anything_is_written(scratch, monkeypatch):
    for args, env in ((["--trial-timeout", "0"], {}), (["--trial-timeout", "-3"], {}),
                      ([], {"OPTIMSTUDY_STALL_TIMEOUT_S": "soon"})):
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            refused = in_process("run", "--problem", "linreg", "--steps", "5", *args, cwd=scratch)
        code, err = refused.returncode, refused.stderr
        assert code == 2, err[-2000:]
        assert "--trial-timeout" in err or "OPTIMSTUDY_STALL_TIMEOUT_S" in err
        assert "Traceback" not in err
    (scratch / "bad.toml").write_text(SPEC.replace("trial_timeout_s = 3", "trial_timeout_s = -1"))
    refused = in_process("sweep", "bad.toml", cwd=scratch)
    assert refused.returncode == 2 and "trial_timeout_s" in refused.stderr, refused.stderr[-2000:]
    assert not (scratch / "mlruns").exists()


@pytest.mark.slow
def test_a_sweep_fails_the_hung_trial_in_both_stores_and_finishes_the_other(scratch):
    store = f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}"
    (scratch / "hangs.toml").write_text(SPEC)
    result, took = timed_cli("sweep", "hangs.toml", "--tracking-uri", store, cwd=scratch, timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    assert took < 120, took
    assert "failed: 1 trial(s)" in result.stderr and "timed out" in result.stderr, result.stderr[-3000:]

    study = optuna.load_study(study_name="hangs", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(scratch / "mlruns" / "optuna" / "hangs.journal"))))
    trials = study.get_trials(deepcopy=False)
    by_batch = {trial.user_attrs["optimstudy.config"]["batch_size"]: trial for trial in trials}
    assert len(trials) == 2, [(t.number, t.state) for t in trials]  # the hung one is not queued again
    assert by_batch[16].state == TrialState.COMPLETE
    assert by_batch[32].state == TrialState.FAIL
    assert "TrialTimeout" in by_batch[32].user_attrs["optimstudy.error"]
    assert "limit of 3 s" in by_batch[32].user_attrs["optimstudy.error"]

    trial_runs = {run.data.params["batch_size"]: run for run in runs_of(store, "hangs")
                  if run.data.tags.get("optimstudy.kind") == "trial"}
    assert trial_runs["16"].info.status == "FINISHED"
    assert trial_runs["32"].info.status == "FAILED"
    assert "timed out" in trial_runs["32"].data.tags["optimstudy.error"]

    # the --trial-timeout flag overrides the spec's: the hung trial runs again on resume, and times out sooner
    result, _ = timed_cli("sweep", "hangs.toml", "--tracking-uri", store, "--trial-timeout", "2", cwd=scratch,
                          timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "limit of 2 s" in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_a_sweep_whose_own_trial_is_stuck_where_no_signal_reaches_goes_on_with_the_next(scratch):
    """The sweep process is itself worker 1: stuck there, it FAILs the trial and starts the same
    command again in the same process, which goes on with the trials after it."""
    store = f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}"
    (scratch / "hangs.toml").write_text(SPEC.replace("batch_size = [16, 32]", "batch_size = [32, 16]"))
    sweep = subprocess.Popen([sys.executable, "-m", "optimstudy", "sweep", "hangs.toml", "--tracking-uri", store,
                              "--trial-timeout", "3"], cwd=scratch, env={**os.environ, "HANG_DEAF": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 1, err[-3000:]
    assert "does not respond" in err and "starts again in this process" in err, err[-3000:]
    assert "failed: 1 trial(s)" in err and "Traceback" not in err, err[-3000:]

    study = optuna.load_study(study_name="hangs", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(scratch / "mlruns" / "optuna" / "hangs.journal"))))
    trials = study.get_trials(deepcopy=False)
    by_batch = {trial.user_attrs["optimstudy.config"]["batch_size"]: trial for trial in trials}
    assert len(trials) == 2, [(t.number, t.state) for t in trials]
    assert by_batch[32].number == 0 and by_batch[32].state == TrialState.FAIL
    assert "TrialTimeout" in by_batch[32].user_attrs["optimstudy.error"]
    assert by_batch[16].state == TrialState.COMPLETE  # run after the restart
    trial_runs = {run.data.params["batch_size"]: run for run in runs_of(store, "hangs")
                  if run.data.tags.get("optimstudy.kind") == "trial"}
    assert trial_runs["32"].info.status == "FAILED" and "TrialTimeout" in trial_runs["32"].data.tags["optimstudy.error"]
    assert trial_runs["16"].info.status == "FINISHED"
