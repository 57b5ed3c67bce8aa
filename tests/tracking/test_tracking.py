"""MLflow tracking against real SQLite stores: what a run writes is what trained, however it ends.

Every test reads back with MlflowClient or tracking.reader.load_runs; nothing is mocked. The writer
process, the UI server and killed training processes are real processes.
"""
import json
import math
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from mlflow import MlflowClient

import optimstudy
from optimstudy import RunConfig
from optimstudy.run.devices import device_label
from optimstudy.run.runner import Tracking, execute
from optimstudy.tracking.client import ensure_store
from optimstudy.tracking.mlflow_logger import MlflowLogger, tracked_run
from optimstudy.tracking.reader import load_runs
from optimstudy.tracking.writer_handle import StoreError, WriterDied, _writers, stop_writers

PER_STEP = ("train_loss", "grad_norm", "update_norm", "lr")
SOURCE = Path(optimstudy.__file__).resolve().parent


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store (and so one writer) for the tests that look only at their own runs: ~3 s saved a test."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlruns' / 'mlflow.db'}"
    ensure_store(uri)  # in this process first, as the CLI does
    yield uri
    stop_writers()


@pytest.fixture
def store(store):
    """The store (tests/tracking/conftest.py), created."""
    ensure_store(store)
    return store


def points(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def steps_of(client, run_id, key):
    return [step for step, _ in points(client, run_id, key)]


def run_status(client, run_id) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException:  # not stored yet
        return None


def git_head() -> str | None:
    head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 else None


def wait_for(predicate, timeout=60.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


# ---- a run, however it ends -------------------------------------------------------------------

def test_a_tracked_run_stores_every_step_exactly_as_trained_with_its_params_and_tags(shared_store):
    config = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=400, seed=2,  # 1,600+ points: 2 batches
                       update_norm_every=1)  # every metric at every step
    head_before = git_head()
    history, run_id = execute(config, Tracking(shared_store, "exact"))
    client = MlflowClient(shared_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time

    assert history.steps == list(range(1, 401))
    for name in PER_STEP:
        stored = points(client, run_id, name)
        assert [step for step, _ in stored] == history.steps, name  # one point per step, none missing
        assert [value for _, value in stored] == history.step_metrics[name], name  # bit for bit
    evals = points(client, run_id, "val_loss")
    assert evals == [(e["step"], e["val_loss"]) for e in history.evals]

    assert history.config.params() == config.resolved().params()
    assert run.data.params == {key: str(value) for key, value in config.resolved().params().items()}

    tags = run.data.tags
    assert tags["optimstudy.version"] == optimstudy.__version__
    assert tags["torch.version"] == torch.__version__ and tags["mlflow.version"] == version("mlflow")
    assert tags["device.name"] == device_label("cpu") and tags["host"] == socket.gethostname()
    assert tags["dataset"] == "linreg"
    assert {k: int(tags[f"dataset.{k}"]) for k in ("train", "val", "test")} == history.data_sizes
    if head_before:  # a checkout; an installed package records no commit
        assert tags["git.commit"] == tags["mlflow.source.git.commit"] in {head_before, git_head()}  # a commit meanwhile
    assert tags["mlflow.runName"] == "linreg sgd lr=0.05 seed=2"


def test_an_exception_mid_run_leaves_a_failed_run_with_the_steps_that_ran(shared_store):
    started = {}

    def fail_at_200(step, metrics):
        if step == 200:
            raise RuntimeError("boom at step 200")

    config = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=400, eval_every=50, update_norm_every=1)
    with pytest.raises(RuntimeError, match="boom at step 200"):
        execute(config, Tracking(shared_store, "failing"), on_eval=fail_at_200,
                on_start=lambda run_id: started.update(run_id=run_id))
    client = MlflowClient(shared_store)
    run = client.get_run(started["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["optimstudy.error"] == "RuntimeError: boom at step 200"
    for name in PER_STEP:
        assert steps_of(client, run.info.run_id, name) == list(range(1, 201)), name
    assert steps_of(client, run.info.run_id, "val_loss") == [0, 50, 100, 150, 200]


class InterruptingSGD(torch.optim.SGD):
    """SGD that is 'Ctrl-C'ed inside its Nth step, i.e. mid-step, after the loss and the lr were taken."""

    def __init__(self, params, lr=0.1, interrupt_at=1):
        super().__init__(params, lr=lr)
        self.interrupt_at, self.calls = interrupt_at, 0

    def step(self, closure=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().step(closure)


def test_ctrl_c_mid_step_ends_the_run_killed_keeping_every_finished_step(shared_store):
    started = {}
    config = RunConfig(problem="linreg", optimizer=f"{__name__}:InterruptingSGD", opt={"interrupt_at": 337},
                       lr=0.05, steps=1000, update_norm_every=1)
    with pytest.raises(KeyboardInterrupt):
        execute(config, Tracking(shared_store, "interrupted"), on_start=lambda run_id: started.update(run_id=run_id))
    client = MlflowClient(shared_store)
    run = client.get_run(started["run_id"])
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["optimstudy.error"]
    for name in PER_STEP:  # step 337 never finished; 301-336 were still waiting for a host copy
        assert steps_of(client, run.info.run_id, name) == list(range(1, 337)), name


KILLABLE = textwrap.dedent("""
    import sys
    from optimstudy import RunConfig
    from optimstudy.run.runner import Tracking, execute

    def started(run_id):
        print(run_id, flush=True)
        if sys.argv[2] == "at-start":
            sys.stdin.readline()  # wait here, before any step, to be killed

    execute(RunConfig(problem="linreg", optimizer="sgd", lr=0.01, steps=10_000_000),
            Tracking(sys.argv[1], "killed"), on_start=started)
""")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-run", "at-start"])
def test_a_sigkilled_training_process_leaves_a_killed_run_not_a_running_one(shared_store, tmp_path, when):
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, shared_store, when], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        run_id = process.stdout.readline().strip()
        assert run_id, "the training process printed no run id"
        client = MlflowClient(shared_store)
        if when == "mid-run":
            assert wait_for(lambda: len(steps_of(client, run_id, "train_loss")) >= 500, timeout=90)
        # the writer process stores the run (on_start has its id at once, not its row)
        assert wait_for(lambda: run_status(client, run_id) == "RUNNING", timeout=30, every=0.05)
    finally:
        process.kill()
        process.wait()
    assert wait_for(lambda: client.get_run(run_id).info.status != "RUNNING", timeout=10, every=0.1)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["optimstudy.error"] == "the training process died mid-run"
    stored = steps_of(client, run_id, "train_loss")
    assert stored == list(range(1, len(stored) + 1))  # what was shipped is kept, in order, without gaps
    assert (len(stored) >= 500) == (when == "mid-run")


def test_a_tracked_run_records_mlflows_system_metrics_unless_switched_off(shared_store, monkeypatch):
    from optimstudy.errors import UsageError

    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "0.2")  # sampled by the writer process
    slow = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=60, eval_every=1)
    _, run_id = execute(slow, Tracking(shared_store, "system-metrics"), on_eval=lambda step, m: time.sleep(0.02))
    client = MlflowClient(shared_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    cpu_key = "system/cpu_utilization_percentage"
    assert wait_for(lambda: len(points(client, run_id, cpu_key)) >= 2, 10)  # the last one is stored after the end
    cpu = points(client, run_id, cpu_key)
    assert len(cpu) >= 2 and all(0 <= value <= 100 for _, value in cpu)  # sampled mid-run, and once at the end
    assert [step for step, _ in cpu] == list(range(len(cpu)))
    assert client.get_run(run_id).data.metrics["system/system_memory_usage_megabytes"] > 0
    assert len(points(client, run_id, "train_loss")) == 60  # the training metrics are untouched

    # the writer's own sampler (no MLflow import) stores what MLflow's monitor stores, under the same names
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from optimstudy.tracking.mlflow_setup import stop_system_metrics

    reference = client.create_run(run.info.experiment_id).info.run_id
    monitor = SystemMetricsMonitor(reference, sampling_interval=0.2, tracking_uri=shared_store)
    monitor.start()
    time.sleep(0.5)
    stop_system_metrics(monitor)
    theirs = {key for key in client.get_run(reference).data.metrics}
    ours = {key for key in client.get_run(run_id).data.metrics if key.startswith("system/")}
    assert ours == theirs and "system/network_receive_megabytes" in ours

    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "0")
    _, quiet = execute(RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=20),
                       Tracking(shared_store, "system-metrics"))
    assert not [key for key in client.get_run(quiet).data.metrics if key.startswith("system/")]

    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "often")
    before = len(client.search_runs([run.info.experiment_id]))
    with pytest.raises(UsageError, match="OPTIMSTUDY_SYSTEM_METRICS_S must be a number of seconds"):
        execute(RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=20),
                Tracking(shared_store, "system-metrics"))
    assert len(client.search_runs([run.info.experiment_id])) == before  # nothing written


def test_a_killed_writer_ends_the_run_failed_and_says_why(shared_store):
    """The writer is gone (OOM killer, a stray kill): the run must not stay RUNNING."""
    started = {}

    def kill_the_writer(step, metrics):
        if step == 300:
            writer = _writers[shared_store].process
            writer.kill()
            writer.wait()

    config = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=2000, eval_every=50)
    with pytest.raises(WriterDied, match="writer process exited"):
        execute(config, Tracking(shared_store, "writer-killed"), on_eval=kill_the_writer,
                on_start=lambda run_id: started.update(run_id=run_id))
    run = MlflowClient(shared_store).get_run(started["run_id"])
    assert run.info.status == "FAILED"
    assert "writer process exited" in run.data.tags["optimstudy.error"]
    # the next run in this process gets a new writer
    _, run_id = execute(RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=20), Tracking(shared_store, "next"))
    assert MlflowClient(shared_store).get_run(run_id).info.status == "FINISHED"


def test_a_run_whose_points_cannot_be_stored_ends_failed_not_finished(shared_store):
    logger = MlflowLogger(shared_store, "bad", {"lr": 0.1}, {})
    # the writer's report stops the run at the next batch that reads it, or at its end
    with pytest.raises(StoreError, match="could not write to the tracking store .*bad name!"):
        with tracked_run(logger):
            for step in range(1, 301):  # 1,200 points: the first batch fails on the bad name
                logger.log(step, {"train_loss": 1.0 / step, "grad_norm": 1.0, "bad name!": 0.0, "lr": 0.1})
    run = MlflowClient(shared_store).get_run(logger.run_id)
    assert run.info.status == "FAILED" and "metric points were lost" in run.data.tags["optimstudy.error"]


def test_a_run_deleted_while_it_trains_raises_instead_of_hanging(shared_store):
    logger = MlflowLogger(shared_store, "deleted", {"lr": 0.1}, {})
    client = MlflowClient(shared_store)
    assert wait_for(lambda: run_status(client, logger.run_id) == "RUNNING", timeout=30, every=0.05)  # stored
    client.delete_run(logger.run_id)  # e.g. from the UI, while training goes on
    for step in range(1, 301):
        logger.log(step, {"train_loss": 1.0, "grad_norm": 1.0, "update_norm": 1.0, "lr": 0.1})
    outcome = []

    def close():
        try:
            logger.close()
        except Exception as error:
            outcome.append(error)

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive(), "close() hangs when the writer cannot end the run"
    assert len(outcome) == 1 and "must be in the 'active' state" in str(outcome[0])


# ---- the one reader --------------------------------------------------------------------------

def fill(store):
    """Known runs: 2 in experiment 'a', a parent with 3 children in 'sweep'. Returns their ids."""
    from mlflow.entities import Metric

    ids = {}
    for name, lr, seed in (("a1", 0.1, 0), ("a2", 0.01, 1)):
        logger = MlflowLogger(store, "a", {"lr": lr, "seed": seed, "optimizer": "sgd"}, {"dataset": "linreg"},
                              run_name=name)
        for step in range(1, 6):
            logger.log(step, {"train_loss": lr * step + seed, "lr": lr})
        logger.log(5, {"val_loss": math.inf if name == "a2" else math.nan})  # MLflow stores inf as float max
        logger.close()
        ids[name] = logger.run_id
    client = MlflowClient(store)
    sweep = client.get_experiment_by_name("sweep")
    experiment = sweep.experiment_id if sweep else client.create_experiment("sweep")
    parent = client.create_run(experiment, run_name="parent", tags={"optimstudy.kind": "sweep"})
    client.log_batch(parent.info.run_id, metrics=[Metric("best_val_loss", 0.5, 0, 0)])
    client.set_terminated(parent.info.run_id)
    ids["parent"] = parent.info.run_id
    for trial in range(3):
        logger = MlflowLogger(store, "sweep", {"lr": 10.0 ** -trial, "seed": trial, "optimizer": "adam"},
                              {"optimstudy.trial": trial, "optimstudy.kind": "trial"},
                              run_name=f"trial {trial}", parent_run_id=parent.info.run_id)
        for step in range(1, 4):
            logger.log(step, {"train_loss": trial + step / 10})
        logger.close("KILLED" if trial == 2 else "FINISHED")
        ids[f"trial{trial}"] = logger.run_id
    return ids


def test_load_runs_gives_one_tidy_row_per_point_with_typed_params(store):
    ids = fill(store)
    frame = load_runs(store)
    assert len(frame) == 2 * (5 + 5 + 1) + 1 + 3 * 3
    assert list(frame.columns[:4]) == ["run_id", "step", "metric", "value"]
    assert frame.duplicated(["run_id", "metric", "step"]).sum() == 0
    assert frame["step"].dtype == "int64" and frame["value"].dtype == "float64"
    assert pd.api.types.is_float_dtype(frame["lr"]) and pd.api.types.is_numeric_dtype(frame["seed"])  # NaN: parent

    a2 = frame[frame.run_id == ids["a2"]]
    loss = a2[a2.metric == "train_loss"]
    assert list(loss.step) == [1, 2, 3, 4, 5] and list(loss.value) == [0.01 * s + 1 for s in range(1, 6)]
    assert a2[a2.metric == "val_loss"].value.item() == math.inf  # not 1.8e308
    assert math.isnan(frame[(frame.run_id == ids["a1"]) & (frame.metric == "val_loss")].value.item())
    assert set(a2.experiment) == {"a"} and set(a2.status) == {"FINISHED"} and set(a2.run_name) == {"a2"}
    assert set(a2.lr) == {0.01} and set(a2.seed) == {1} and set(a2.optimizer) == {"sgd"}

    only_a = load_runs(store, experiments=["a"])
    assert set(only_a.run_id) == {ids["a1"], ids["a2"]} and len(only_a) == 22
    children = load_runs(store, parent_run_id=ids["parent"])
    assert set(children.run_id) == {ids["trial0"], ids["trial1"], ids["trial2"]} and len(children) == 9
    assert set(children.parent_run_id) == {ids["parent"]} and sorted(set(children.trial)) == [0, 1, 2]
    assert children.groupby("run_id").status.first().value_counts().to_dict() == {"FINISHED": 2, "KILLED": 1}
    assert list(children[children.run_id == ids["trial2"]].value) == [2.1, 2.2, 2.3]

    runs = load_runs(store, with_metrics=False)
    assert len(runs) == 6 and runs.run_id.is_unique
    assert not {"step", "metric", "value"} & set(runs.columns)
    assert runs.set_index("run_id").loc[ids["trial1"], "lr"] == 0.1
    assert load_runs(store, experiments=["no such experiment"]).empty


# ---- the command line and the UI ------------------------------------------------------------

@pytest.mark.slow
def test_run_json_prints_a_finished_run_id_and_save_model_stores_the_weights(cli, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = cli("run", "--problem", "linreg", "--steps", "60", "--json", "--save-model", "--tracking-uri", uri,
                 cwd=tmp_path, check_exit=0)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optimstudy.kind"] == "run"
    assert steps_of(client, summary["run_id"], "train_loss") == list(range(1, 61))
    assert [a.path for a in client.list_artifacts(summary["run_id"])] == ["state_dict.pt"]
    weights = torch.load(client.download_artifacts(summary["run_id"], "state_dict.pt", str(tmp_path)))
    assert set(weights) == {"weight", "bias"} and weights["weight"].shape == (1, 3)
    assert (tmp_path / "store" / "artifacts").is_dir()  # beside the database, not in the working folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_dict.pt", "store"]


@pytest.mark.parametrize("command", [["run", "--problem", "linreg", "--steps", "5"], ["ui", "--port", "5999"]])
def test_an_unwritable_store_exits_2_naming_the_path_and_writes_nothing(cli, tmp_path, command):
    result = cli(*command, "--tracking-uri", "sqlite:////proc/nope/mlflow.db", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "/proc/nope" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.mark.slow
@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_serves_the_store_and_stops_with_everything_it_started(store, tmp_path, stop_with):
    logger = MlflowLogger(store, "shown", {"lr": 0.1}, {})
    for step in range(1, 6):
        logger.log(step, {"train_loss": 1.0 / step})
    logger.close()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    log = (tmp_path / "ui.log").open("w")
    process = subprocess.Popen(  # SIGINT as in a terminal, even when the tests run in the background
        [sys.executable, "-m", "optimstudy", "ui", "--port", str(port), "--tracking-uri", store,
         "--experiment", "shown"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = []
    try:
        def lists_the_experiment():
            started[:] = psutil.Process(process.pid).children(recursive=True)
            try:
                found = get_json(f"{api}/experiments/search?max_results=100")
            except OSError:
                return False
            return "shown" in [e["name"] for e in found["experiments"]]

        assert wait_for(lists_the_experiment, timeout=120, every=0.5), (tmp_path / "ui.log").read_text()[-3000:]
        history = get_json(f"{api}/metrics/get-history?run_id={logger.run_id}&metric_key=train_loss")
        assert [(m["step"], m["value"]) for m in history["metrics"]] == [(s, 1.0 / s) for s in range(1, 6)]
        assert started, "the UI started no server process"
        shown = get_json(f"{api}/experiments/get-by-name?experiment_name=shown")["experiment"]["experiment_id"]
        # the printed URL opens the experiment's runs table, in the UI's machine-learning view (not GenAI)
        assert (f"http://127.0.0.1:{port}/#/experiments/{shown}/runs?workflowType=machine_learning"
                in (tmp_path / "ui.log").read_text())
        process.send_signal(stop_with)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
        _, alive = psutil.wait_procs(started, timeout=5)
        leaked = [p for p in alive if running(p)]
        for leftover in leaked:  # never leave a server behind, even when failing
            leftover.kill()
    assert code == 0 and "stopped" in (tmp_path / "ui.log").read_text()
    assert leaked == [], "server processes outlived `optimstudy ui`"
    with pytest.raises(OSError):
        get_json(f"{api}/experiments/search?max_results=1")


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
