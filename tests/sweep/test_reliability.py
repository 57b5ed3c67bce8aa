"""Bad input gets exit code 2 and one clear message; interrupted or killed work loses nothing."""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from helpers import in_process
from mlflow import MlflowClient
from optuna.trial import TrialState

from optimstudy.cli import main
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.reader import load_runs

TESTS = Path(__file__).parent

GOOD = """\
name = "bad"
problem = "linreg"
steps = 20
seeds = [0]

[optimizers.sgd]
lr = [0.1]
"""


def run_main(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err



@pytest.mark.parametrize("text, expected", [
    ('name = "bad"\nproblem = "linreg\nsteps = 5\n', ["malformed TOML", "line 2"]),
    (GOOD.replace("seeds", "sedes"), ["unknown key 'sedes'", "line 4", "did you mean 'seeds'"]),
    (GOOD.replace('name = "bad"\n', ""), ["missing required key 'name'"]),
    (GOOD.replace("steps = 20", 'steps = "twenty"'), ["'steps'", "'twenty'", "positive integer"]),
    (GOOD.replace("lr = [0.1]", "lr = [0.1, 0.0]"), ["optimizers.sgd.lr", "0.0", "learning rates > 0"]),
    (GOOD.replace("lr = [0.1]", "lr = [-1]"), ["optimizers.sgd.lr", "-1", "> 0"]),
    (GOOD.replace("steps = 20", "steps = 20\nbatch_size = 0"), ["batch_size", "0", "positive integer"]),
    (GOOD.replace("steps = 20", "steps = -3"), ["'steps'", "-3", "positive"]),
    (GOOD.replace("steps = 20", "epochs = -1.5"), ["'epochs'", "-1.5", "positive"]),
    (GOOD.replace("lr = [0.1]", "lr = []"), ["optimizers.sgd.lr", "[]", "non-empty"]),
    (GOOD.replace("seeds = [0]", "seeds = [0, 1.5]"), ["'seeds'", "1.5", "int"]),
    (GOOD.replace('"linreg"', '"linregg"'), ["linregg", "did you mean 'linreg'", "mnist_mlp"]),
    (GOOD.replace("optimizers.sgd", "optimizers.sgdd"), ["sgdd", "did you mean 'sgd'", "adam"]),
    (GOOD.replace("steps = 20", 'steps = 20\nloss = "mse2"'), ["'loss'", "mse2", "mean_error"]),
    (GOOD.replace("steps = 20", 'steps = 20\ndevices = ["tpu"]'), ["'devices'", "tpu", "cuda"]),
    (GOOD.replace("lr = [0.1]", "lr = [0.1]\nmomentom = 0.9"), ["momentom", "did you mean 'momentum'"]),
    (GOOD.replace('"bad"', '"' + "x" * 101 + '"'), ["'name'", "1-100 characters"]),
    (GOOD.replace('"bad"', '".."'), ["'name'", "'..'", "letters, digits"]),
    (GOOD.replace('"bad"', '"."'), ["'name'", "letters, digits"]),
    (GOOD.replace('"bad"', '"../outside"'), ["'name'", "../outside"]),
    (GOOD.replace('"bad"', '"a\\\\b"'), ["'name'", "letters, digits"]),
])
def test_bad_spec_exits_2_naming_the_key_and_writes_nothing(text, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    code, err = run_main(capsys, "sweep", spec)
    assert code == 2
    assert "bad.toml" in err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("argv, expected", [
    (["run", "--problem", "mnist_mpl"], ["mnist_mpl", "did you mean 'mnist_mlp'"]),
    (["run", "--optimizer", "adan"], ["adan", "adam", "package.module:Class"]),
    (["run", "--problem", "linreg", "--loss", "cross_entropy"], ["cross_entropy", "mse"]),
    (["run", "--device", "cuda:3"], ["cuda:3", "available: cpu"]),
    (["run", "--device", "gpu"], ["gpu", "auto, cpu, cuda"]),
    (["run", "--lr", "0"], ["lr", "0"]),
    (["run", "--batch-size", "0"], ["--batch-size", "0"]),
    (["run", "--steps", "-1"], ["steps", "-1"]),
    (["run", "--opt", "momentum"], ["--opt 'momentum'", "KEY=VALUE"]),
    (["run", "--optimizer", "adam", "--opt", "momentum=0.9"], ["momentum", "betas"]),
    (["sweep", "no/such/spec.toml"], ["no/such/spec.toml", "not found"]),
    (["sweep", "experiments/quickstartt.toml"], ["not found", "quickstart.toml"]),
])
def test_bad_flags_exit_2_naming_the_value(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS.parents[1] if "experiments" in " ".join(argv) else tmp_path)
    code, err = run_main(capsys, *argv, *(["--no-track"] if argv[0] == "run" else []))
    assert code == 2
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()


def test_offline_data_folder_without_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "no-data"
    empty.mkdir()
    code, err = run_main(capsys, "run", "--problem", "mnist_mlp", "--data-dir", empty)
    assert code == 2
    assert "MNIST" in err and str(empty) in err and "OPTIMSTUDY_DATA_DIR" in err
    assert not (tmp_path / "mlruns").exists()


def test_unwritable_store_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, "run", "--problem", "linreg", "--steps", "5",
                         "--tracking-uri", "sqlite:////proc/optimstudy/mlflow.db")
    assert code == 2 and "/proc/optimstudy" in err and "--no-track" in err


def test_a_real_process_prints_no_traceback_and_debug_shows_one(cli, tmp_path):
    result = cli("run", "--problem", "nope", "--no-track", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "unknown problem 'nope'" in result.stderr
    debug = cli("--debug", "run", "--problem", "nope", "--no-track", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def spec_file(folder, name, body):
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return path


def study(folder, name):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "mlruns" / "optuna" / f"{name}.journal"))))


def test_diverging_and_failing_trials_are_recorded_and_the_sweep_goes_on(cli, tmp_path):
    spec = spec_file(tmp_path, "faults", """
        name = "faults"
        problem = "linreg"
        steps = 50
        seeds = [0]
        [optimizers.sgd]
        lr = [0.1, 1000.0]
        [optimizers.boom]
        optimizer = "exploding_optimizer:ExplodingSGD"
        lr = [0.1]
    """)
    result = cli("sweep", spec, "--json", cwd=tmp_path, env={"PYTHONPATH": str(TESTS)}, check_exit=1)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 2 and summary["trials"]["failed"] == 1
    # a failure is loud: its reason, and what to do, not only a count
    assert "failed: 1 trial(s) (trial 2): " in result.stderr and "out of memory" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert list(summary["failures"].values()) == [1]
    trials = {(t.user_attrs["optimizer"], t.user_attrs["optimstudy.config"]["lr"]): t
              for t in study(tmp_path, "faults").trials}
    diverged = trials[("sgd", 1000.0)]
    assert diverged.state == TrialState.COMPLETE and diverged.user_attrs["diverged"] is True
    assert diverged.value == float("inf")  # the worst objective for a minimized val_loss
    failed = trials[("boom", 0.1)]
    assert failed.state == TrialState.FAIL and "out of memory" in failed.user_attrs["optimstudy.error"]
    run = MlflowClient(summary["tracking_uri"]).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "out of memory" in run.data.tags["optimstudy.error"]
    history = MlflowClient(summary["tracking_uri"]).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # the steps before the fault are kept


def wait_for(predicate, timeout=180.0):
    """Poll until `predicate()`; the timeout only bounds a hang. CI runs two test workers on 2 cores,
    and a CLI process started beside a busy sweep has taken over 60 s to log its first step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


LONG = """
    name = "{name}"
    problem = "linreg"
    steps = {steps}
    seeds = [0, 1]
    [optimizers.sgd]
    lr = [0.01, 0.1]
"""


def start(argv, cwd):
    return subprocess.Popen([sys.executable, "-m", "optimstudy", *map(str, argv)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_running_trial_with_steps(folder, name, steps):
    """True once a trial's MLflow run is RUNNING with logged steps, in its first half (of `steps`): a
    signal sent now finds it running. Read straight from SQLite, a look of milliseconds: a look through
    Optuna and MLflow's client took long enough for a fast trial to end between the look and the signal."""
    database = folder / "mlruns" / "mlflow.db"
    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute(
                "SELECT 1 FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'optimstudy.kind' AND t.value = 'trial' "
                "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = 'train_loss' "
                "WHERE e.name = ? AND r.status = 'RUNNING' AND m.step < ? LIMIT 1",
                (name, steps // 2)).fetchone() is not None
    except sqlite3.Error:  # the store is being made
        return False


@pytest.mark.slow
def test_ctrl_c_during_a_run_ends_it_killed_with_its_steps(tmp_path, request):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # far more steps than run before the signal: training runs ahead of the writer (up to its 1 MB), so
    # steps reach the store some time after they are trained
    process = start(["run", "--problem", "linreg", "--steps", "1000000", "--json"], tmp_path)
    request.addfinalizer(process.kill)  # a failed test leaves no run training beside the next ones

    def has_steps():
        try:
            runs = load_runs(uri, with_metrics=False)
            return len(runs) == 1 and bool(MlflowClient(uri).get_metric_history(runs["run_id"][0], "train_loss"))
        except Exception:
            return False

    if not wait_for(has_steps):
        process.kill()
        pytest.fail(f"the run logged no step; it printed: {process.communicate()[1][-3000:]}")
    seen = len(MlflowClient(uri).get_metric_history(load_runs(uri, with_metrics=False)["run_id"][0], "train_loss"))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err
    run = MlflowClient(uri).get_run(load_runs(uri, with_metrics=False)["run_id"][0])
    assert run.info.status == "KILLED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= seen  # every step up to the stop


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_then_resume_completes_everything_once(cli, tmp_path, request):
    # 6 trials of 3000 steps (~1 s each on a quiet core, 2-5 s on 2 busy ones; tracked, a bit more): the
    # signal comes as soon as the first trial has logged steps, long before the end, and the resume with 2
    # workers still shares several trials
    six = LONG.format(name="interrupt", steps=3000).replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
    spec = spec_file(tmp_path, "interrupt", six)
    process = start(["sweep", spec], tmp_path)
    request.addfinalizer(process.kill)
    assert wait_for(lambda: first_running_trial_with_steps(tmp_path, "interrupt", 3000))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "run the same `optimstudy sweep` command again to resume" in err
    states = [t.state for t in study(tmp_path, "interrupt").trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    runs = load_runs(uri, with_metrics=False)
    assert "RUNNING" not in set(runs["status"]) and "KILLED" in set(runs["status"])

    cli("sweep", spec, "--workers", "2", cwd=tmp_path, check_exit=0)  # the rest of the 6, resumed
    complete = [t for t in study(tmp_path, "interrupt").trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["optimstudy.key"] for t in complete) == sorted(
        {t.user_attrs["optimstudy.key"] for t in complete}) and len(complete) == 6
    assert in_process("check", spec, cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_and_check_confirms(cli, tmp_path):
    spec = spec_file(tmp_path, "killed", LONG.format(name="killed", steps=3000))  # 4 trials of 2-5 s under load
    process = start(["sweep", spec], tmp_path)
    assert wait_for(lambda: first_running_trial_with_steps(tmp_path, "killed", 3000))
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # the killed process's writer notices and ends its open trial run; the sweep's parent run stays RUNNING
    assert wait_for(lambda: "KILLED" in set(load_runs(uri, with_metrics=False).query("kind == 'trial'")["status"]), 60)
    trial_runs = load_runs(uri, with_metrics=False).query("kind == 'trial'")
    assert sorted(trial_runs["status"]) == ["FINISHED"] * (len(trial_runs) - 1) + ["KILLED"]  # the open one only
    killed = int(trial_runs.query("status == 'KILLED'")["trial"].iloc[0])
    dry = in_process("check", spec, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 1 and "RUNNING but its worker is gone" in dry.stdout

    result = cli("sweep", spec, cwd=tmp_path, check_exit=0)
    assert f"recovered: trial {killed}" in result.stderr
    trials = study(tmp_path, "killed").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["optimstudy.key"] for t in complete]
    assert len(keys) == len(set(keys)) == 4  # every configuration exactly once
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the killed attempt
    assert "RUNNING" not in set(load_runs(uri, with_metrics=False)["status"])
    checked = in_process("check", spec, cwd=tmp_path)
    assert checked.returncode == 0 and "ok:" in checked.stdout


SHORT = """
    name = "{name}"
    problem = "linreg"
    steps = {steps}
    seeds = [0, 1, 2]
    [optimizers.sgd]
    lr = [0.01, 0.1]
"""


def all_complete(folder, name, count):
    trials = study(folder, name).trials
    keys = {t.user_attrs["optimstudy.key"] for t in trials if t.state == TrialState.COMPLETE}
    return len(keys) == count


@pytest.mark.slow
def test_a_sweep_outlives_the_shell_that_started_it(cli, tmp_path):
    spec = spec_file(tmp_path, "detached", SHORT.format(name="detached", steps=1500))
    # a shell starts the sweep in the background; once trials are running, the shell exits
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} -m optimstudy sweep {spec} --json >out.txt 2>err.txt & "
                              "echo $!; exec sleep 600"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    pid = int(shell.stdout.readline())

    def some_complete():
        try:
            return any(t.state == TrialState.COMPLETE for t in study(tmp_path, "detached").trials)
        except (FileNotFoundError, KeyError):
            return False

    assert wait_for(some_complete, 120)
    shell.kill()  # the shell is gone: the sweep's parent pid changes mid-sweep
    shell.wait()
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                    timeout=300)
    summary = json.loads((tmp_path / "out.txt").read_text().strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 6, (tmp_path / "err.txt").read_text()[-2000:]
    assert all_complete(tmp_path, "detached", 6)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_a_sweep_like_ctrl_c(cli, tmp_path, sig):
    name = f"signal-{sig.name.lower()}"
    # 12 trials of 40,000 steps, minutes with two workers: however busy the machine, the signal comes long
    # before the sweep could end by itself (the test waits only until a trial is under way)
    spec = spec_file(tmp_path, name, LONG.format(name=name, steps=40000)
                     .replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3, 4, 5]"))
    process = start(["sweep", spec, "--workers", "2"], tmp_path)
    assert wait_for(lambda: first_running_trial_with_steps(tmp_path, name, 40000))
    workers = {t.user_attrs["pid"] for t in study(tmp_path, name).trials if "pid" in t.user_attrs}
    process.send_signal(sig)
    _, err = process.communicate(timeout=90)
    assert process.returncode == 130 and "run the same `optimstudy sweep` command again to resume" in err
    assert "Traceback" not in err
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), 30)  # workers stopped too
    states = [t.state for t in study(tmp_path, name).trials]
    assert TrialState.RUNNING not in states
    runs = load_runs(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", with_metrics=False)
    assert "RUNNING" not in set(runs["status"]) and set(runs.query("kind == 'sweep'")["status"]) == {"KILLED"}


@pytest.mark.slow
def test_a_killed_worker_is_replaced_quietly_and_its_trial_runs_again(cli, tmp_path):
    spec = spec_file(tmp_path, "workerkill", LONG.format(name="workerkill", steps=3000))  # trials of 2-5 s
    process = start(["sweep", spec, "--workers", "2", "--json"], tmp_path)

    def other_worker_running():
        try:
            trials = study(tmp_path, "workerkill").trials
        except (FileNotFoundError, KeyError):  # not created yet
            return None
        return next((t.user_attrs["pid"] for t in trials if t.state == TrialState.RUNNING
                     and t.user_attrs.get("pid") not in (None, process.pid) and "mlflow_run_id" in t.user_attrs), None)

    seen = []  # the pid found running a trial, killed at once (asked again, its trial might have ended meanwhile)
    assert wait_for(lambda: seen.append(other_worker_running()) or seen[-1], 120)
    os.kill(seen[-1], signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert "was killed by signal 9; its trial was failed and queued again" in err
    assert all_complete(tmp_path, "workerkill", 4)
    assert in_process("check", spec, cwd=tmp_path).returncode == 0


def test_workers_are_bounded_by_the_queue(cli, tmp_path):
    spec = spec_file(tmp_path, "one", GOOD.replace('"bad"', '"one"'))
    result = cli("sweep", spec, "--workers", "8", cwd=tmp_path, check_exit=0)
    assert "1 trials to run with 1 worker " in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) > 2, reason="the warning needs more workers than cores: 3 on 2 cores")
def test_more_workers_than_cores_are_warned_about(cli, tmp_path):
    spec = spec_file(tmp_path, "crowded", SHORT.format(name="crowded", steps=20))
    result = cli("sweep", spec, "--workers", "3", cwd=tmp_path, check_exit=0)
    assert "6 trials to run with 3 workers" in result.stderr and "warning: 3 workers on 2 cores" in result.stderr


@pytest.mark.parametrize("storage, expected", [
    ("sqlite:///mlruns/mlflow.db", "is the MLflow tracking database"),
    ("mlruns/mlflow.db", "is the MLflow tracking database"),
    ("/proc/optimstudy/study.journal", "cannot be written"),
    ("postgresql+psycopg://nobody:pw@127.0.0.1:1/optuna", "cannot be opened"),
    ("ftp://host/x", "unknown scheme"),
])
def test_a_bad_storage_is_refused_before_any_store_is_created(storage, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path, "bad", GOOD)
    code, err = run_main(capsys, "sweep", spec, "--storage", storage)
    assert code == 2 and expected in err and hide_passwords(storage) in err, err  # named, its password hidden
    assert "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()


def test_an_sqlite_file_given_as_a_journal_is_refused(tmp_path, capsys, monkeypatch):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    code, err = run_main(capsys, "sweep", spec_file(tmp_path, "bad", GOOD), "--storage", tmp_path / "other.db")
    assert code == 2 and "is an SQLite database" in err and "sqlite:///" in err


@pytest.mark.parametrize("command", [["ui"], ["dashboard", "--storage", "study.journal"]], ids=["ui", "dashboard"])
def test_a_server_on_a_busy_port_exits_2_saying_so(command, tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_main(capsys, *command, "--port", port)
    assert code == 2 and f"port {port}" in err and "already in use" in err
    assert not (tmp_path / "mlruns").exists()
