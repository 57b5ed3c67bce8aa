"""Several sweep commands at once on one study: every configuration queued and run exactly once,
one parent run, no crash, `optimstudy check` clean. Real processes, real stores: a fresh local
store (journal + SQLite), and PostgreSQL for Optuna with a real `mlflow server` on a second
PostgreSQL database, as two machines would share them."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from helpers import in_process, write_tiny_spec
from optuna.trial import TrialState

from optimstudy.tracking.reader import load_runs

CONFIGURATIONS = 12


def start_sweep(spec, cwd, *extra):
    return subprocess.Popen([sys.executable, "-m", "optimstudy", "sweep", str(spec), "--json", *map(str, extra)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_together(spec, folders, *extra):
    """Start one sweep per folder at the same instant; wait for all; return their outputs."""
    processes = [start_sweep(spec, folder, *extra) for folder in folders]
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "ExperimentalWarning" not in err, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def assert_exactly_once(study, summaries, tracking_uri, name):
    trials = study.trials
    live = [t for t in trials if t.state != TrialState.FAIL]
    keys = [t.user_attrs["optimstudy.key"] for t in live]
    assert len(keys) == len(set(keys)) == CONFIGURATIONS, len(keys)  # queued once: no duplicate trial at all
    assert all(t.state == TrialState.COMPLETE for t in live)
    assert len({s["parent_run_id"] for s in summaries}) == 1
    runs = load_runs(tracking_uri, experiments=[name], with_metrics=False)
    assert (runs["kind"] == "sweep").sum() == 1
    children = runs[runs["kind"] == "trial"]
    assert len(children) == CONFIGURATIONS and set(children["status"]) == {"FINISHED"}
    assert set(children["parent_run_id"]) == {summaries[0]["parent_run_id"]}


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_a_fresh_local_store(tmp_path, cli):
    spec = write_tiny_spec(tmp_path, "together", steps=100, seeds=(0, 1, 2),
                           optimizers={"sgd": [0.01, 0.1], "adam": [0.001, 0.01]})
    summaries = run_together(spec, [tmp_path, tmp_path])  # same folder: the same fresh ./mlruns
    journal = tmp_path / "mlruns" / "optuna" / "together.journal"
    study = optuna.load_study(study_name="together", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert_exactly_once(study, summaries, summaries[0]["tracking_uri"], "together")
    checked = in_process("check", spec, cwd=tmp_path)  # check only reads the stores: no new process needed
    assert checked.returncode == 0 and "ok:" in checked.stdout, checked.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, postgres_database):
    """A real `mlflow server` on loopback, backed by a PostgreSQL database of its own."""
    port = free_port()
    program = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [program, "server", "--backend-store-uri", postgres_database(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--artifacts-destination", str(tmp_path / "server-artifacts")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_start_at_once_on_postgresql_and_an_mlflow_server(tmp_path, postgres_database, mlflow_server,
                                                                      cli):
    optuna_url = postgres_database()  # a fresh database: the two commands also race to create Optuna's tables
    spec = write_tiny_spec(tmp_path, "shared", steps=100, seeds=(0, 1, 2),
                           optimizers={"sgd": [0.01, 0.1], "adam": [0.001, 0.01]})
    machines = []
    for index in range(2):  # two "machines": separate folders, the same storage and tracking server
        machines.append(tmp_path / f"machine{index}")
        machines[-1].mkdir()
    summaries = run_together(spec, machines, "--storage", optuna_url, "--tracking-uri", mlflow_server)
    study = optuna.load_study(study_name="shared", storage=optuna_url)
    assert_exactly_once(study, summaries, mlflow_server, "shared")
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both machines did part of the work
    assert not any((m / "mlruns").exists() for m in machines)  # nothing local: both stores are remote
    checked = in_process("check", spec, "--storage", optuna_url, "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert checked.returncode == 0 and "ok:" in checked.stdout, checked.stdout


@pytest.mark.postgres
def test_two_sweeps_ending_together_both_set_their_notes_on_postgresql(postgres_database):
    """Two machines' sweeps of one study end at once: both write the experiment's and the parent
    run's notes. MLflow sets a tag by reading, then inserting; without a second try, about half of
    such pairs failed here on the unique key (39 of 80 calls)."""
    import threading

    from mlflow import MlflowClient

    from optimstudy.tag_names import NOTE_TAG
    from optimstudy.tracking.parent_runs import set_notes

    uri = postgres_database()
    client = MlflowClient(uri)
    for attempt in range(15):
        experiment = f"ending-{attempt}"
        parent = client.create_run(client.create_experiment(experiment)).info.run_id
        together, failures = threading.Barrier(2), []

        def end_sweep(machine):
            together.wait()
            try:
                set_notes(uri, parent, f"run note {machine}", experiment, f"experiment note {machine}")
            except Exception as error:  # what the sweep would have died of
                failures.append(error)

        machines = [threading.Thread(target=end_sweep, args=(machine,)) for machine in range(2)]
        for machine in machines:
            machine.start()
        for machine in machines:
            machine.join()
        assert not failures, failures
        assert client.get_run(parent).data.tags[NOTE_TAG] in ("run note 0", "run note 1")
        assert client.get_experiment_by_name(experiment).tags[NOTE_TAG] in ("experiment note 0", "experiment note 1")
