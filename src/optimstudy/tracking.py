"""MLflow behind the Logger interface: every step of every run, at a few percent overhead.

Writing a metric point to MLflow's SQL store costs ~0.1 ms, about a third of an MNIST MLP
step if paid on the training thread. So the training process only buffers points and hands
them to a writer process (one per sweep, shared by its workers; the way W&B's service works),
which creates the runs, inserts the points in bulk and ends the runs (writer.py). If a training
process dies, the writer sees its pipe close and ends its open runs as KILLED, so no run stays
RUNNING.

    from optimstudy.tracking import tracked_run, load_runs
    with tracked_run(config, experiment="demo") as logger:
        train(config, logger)
    frame = load_runs(experiments=["demo"])     # one tidy row per (run, step, metric)
"""
import contextlib
import functools
import getpass
import itertools
import json
import os
import platform
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from optimstudy.connectivity import hide_passwords, sqlite_path
from optimstudy.errors import UsageError
from optimstudy.writer import (BATCH_POINTS, EXPERIMENT_KIND_TAG, MODEL_TRAINING, DeletedExperiment,  # noqa: F401
                               find_or_create_experiment, quiet_store_logs, report_connection_retries)
# the writer's handle (writer_handle.py); imported here so that callers find it with the logger
from optimstudy.writer_handle import (StoreError, WriterDied, WriterStalled, _writers, start_writer,  # noqa: F401
                                      stop_writers, writer_timeout_s)

DEFAULT_STORE_DIR = "mlruns"
# Points go to the writer at every block the loop copies off the device (50 steps x 4 metrics),
# so it writes while training runs and little is left to wait for when the run ends.
SHIP_POINTS = 200
DEFAULT_EXPERIMENT = "optimstudy"
TAG_STUDY, TAG_TRIAL, TAG_KIND = "optimstudy.study", "optimstudy.trial", "optimstudy.kind"
TAG_ERROR, TAG_PRUNED = "optimstudy.error", "optimstudy.pruned"
NOTE_TAG = "mlflow.note.content"  # the Markdown description MLflow's UI shows on a run or experiment

# MLflow's system metrics (system/cpu_utilization_percentage, GPU use, memory): seconds between
# samples, taken by the writer process; "0" turns them off (the benchmarks do).
SYSTEM_METRICS_ENV, SYSTEM_METRICS_S = "OPTIMSTUDY_SYSTEM_METRICS_S", 10.0

quiet_store_logs()
report_connection_retries()  # a server that stops answering mid-sweep is said, not silent


# ---- where the store is ------------------------------------------------------------------

def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db (SQLite)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path.cwd() / DEFAULT_STORE_DIR / 'mlflow.db').as_posix()}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store: mlruns/artifacts. Servers choose their own."""
    database = sqlite_path(tracking_uri)
    return None if database is None else (database.parent / "artifacts").resolve().as_uri()


def ensure_store(tracking_uri: str, writer=None, client_here: bool = False) -> None:
    """Create the store once, before any worker starts: under a lock, so that two commands starting
    at once on a fresh store do not both run MLflow's migrations (SQLite corrupts, "table exists").
    With `writer` (started, see writer.py), the writer process creates it (~1.5 s of migrations on
    the other core) and this process needs no MLflow; `client_here`: this process will use MLflow
    too, and imports it meanwhile."""
    from optimstudy.connectivity import probe_store
    from optimstudy.locks import exclusive

    probe_store(tracking_uri)  # seconds, not MLflow's minutes of silent retries, for a server that is not there
    path = sqlite_path(tracking_uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.parent / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise UsageError(
                f"tracking store '{path.parent}' cannot be written ({error.strerror}); "
                "pass --tracking-uri to a writable place, or --no-track"
            ) from None
    try:
        with exclusive(tracking_uri, "optimstudy mlflow store"):
            if writer is None:
                _client(tracking_uri).search_experiments(max_results=1)
                return
            writer.open_store()
            if client_here:
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
                import mlflow.tracking  # noqa: F401
            writer.wait_ready()
    except Exception as error:
        raise UsageError(hide_passwords(f"tracking store '{tracking_uri}' cannot be opened: "
                                        f"{str(error)[:300]}")) from None


@functools.lru_cache(maxsize=8)  # one client per store and process: building one costs ~7 ms, per trial
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def _once_more_if_raced(call, *args, **kwargs):
    """`call(...)`, and once more where another process wrote the same row at the same moment.
    MLflow's SQL store writes a tag or a data set by looking it up, then inserting it: two sweeps of
    one study that end together both insert the experiment's note, two workers the same data set,
    and the loser fails on the unique key. Tried again, it finds the row."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args, **kwargs)
    except MlflowException as error:
        if "UNIQUE" not in str(error).upper() and "DUPLICATE" not in str(error).upper():
            raise
        return call(*args, **kwargs)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, created (safely against a concurrent creator) when missing; a usage
    error when it was deleted (never restored silently, see writer.DeletedExperiment)."""
    try:
        return find_or_create_experiment(_client(tracking_uri), name, artifact_location(tracking_uri, name))
    except DeletedExperiment as deleted:
        raise UsageError(deleted.message(tracking_uri)) from None


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    root = artifact_root(tracking_uri)
    return f"{root}/{experiment}" if root else None


# ---- what a run records beside its config -----------------------------------------------

def environment_tags(device: str) -> dict:
    import torch

    from optimstudy import __version__
    from optimstudy.devices import device_label

    tags = {
        "optimstudy.version": __version__,
        "torch.version": torch.__version__,
        "mlflow.version": _mlflow_version(),
        "device.name": device_label(device),
        "host": socket.gethostname(),
        "python.version": platform.python_version(),
        "mlflow.user": getpass.getuser(),
    }
    commit, dirty = git_state()
    if commit:
        tags.update({"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": dirty})
    return tags


@functools.lru_cache(maxsize=1)  # importlib.metadata reads the installed files: ~3 ms a call
def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool]:
    """(commit, uncommitted changes?) of the project's checkout; (None, False) when installed."""
    source = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return head.stdout.strip() or None, bool(status.stdout.strip())


def system_metrics_s() -> float:
    """Seconds between system-metric samples ($OPTIMSTUDY_SYSTEM_METRICS_S, default 10); 0: none."""
    text = os.environ.get(SYSTEM_METRICS_ENV, "").strip()
    try:
        seconds = float(text) if text else SYSTEM_METRICS_S
    except ValueError:
        raise UsageError(f"{SYSTEM_METRICS_ENV} must be a number of seconds (0: off), got {text!r}") from None
    if not seconds >= 0:
        raise UsageError(f"{SYSTEM_METRICS_ENV} must be a number of seconds (0: off), got {text!r}")
    return seconds


# ---- the logger ---------------------------------------------------------------------------

class MlflowLogger:
    """Creates the run with its params and tags; buffers points; a writer process stores them."""

    def __init__(self, tracking_uri: str, experiment: str, params: dict, tags: dict,
                 run_name: str | None = None, parent_run_id: str | None = None, known_experiment_id: str | None = None,
                 dataset: dict | None = None):
        """`known_experiment_id`: the experiment's id when the caller has it (a sweep's worker looks it up once).
        `dataset`: the run's data set (name, digest, source_type, source, profile: a dict), shown in
        the UI's Datasets column: stored with the run (a SQL store), else by `start`."""
        self.tracking_uri = tracking_uri
        sample_every_s = system_metrics_s()  # a bad value is a usage error before anything is written
        writer_timeout_s()  # likewise: a bad OPTIMSTUDY_WRITER_TIMEOUT_S, before anything is written
        self.writer = start_writer(tracking_uri)
        self.writer.wait_ready()  # before the run exists: a writer that cannot start leaves no RUNNING run
        run_tags = {k: str(v) for k, v in tags.items()}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        experiment = known_experiment_id or self.writer.experiment_id(
            experiment, artifact_location(tracking_uri, experiment))
        params = {k: _param_text(v) for k, v in params.items()}
        self._dataset = None if dataset is None else {
            "name": dataset["name"][:500], "digest": dataset["digest"][:36], "source_type": dataset["source_type"],
            "source": dataset["source"][:1000], "profile": json.dumps(dataset["profile"])}
        if self.writer.creates_runs:  # a SQL store: the writer creates it in one transaction; we do not wait
            self.run_id = uuid.uuid4().hex  # what MLflow's own create_run picks
            self._create = {"experiment_id": experiment, "run_name": run_name or f"run-{self.run_id[:8]}",
                            "tags": run_tags, "params": params, "start_time": int(time.time() * 1000),
                            "dataset": self._dataset}
            self.writer.send(("create", self.run_id, self._create))
            self._dataset = None  # stored with the run
        else:  # a tracking server chooses the run's id: ask it
            self._create = None
            from mlflow.entities import Param

            client = _client(tracking_uri)
            self.run_id = client.create_run(experiment, tags=run_tags, run_name=run_name).info.run_id
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self._buffer: list[tuple] = []
        self.closed = False
        self.store_failed = False  # the writer reported that the store refused this run's writes
        # from now on the writer ends it if we die, and samples CPU/GPU use and memory for it
        self.writer.send(("open", self.run_id, sample_every_s))

    def log(self, step, metrics):
        timestamp = int(time.time() * 1000)
        self._buffer.extend((name, float(value), timestamp, step) for name, value in metrics.items())
        if len(self._buffer) >= SHIP_POINTS:
            self._ship()

    def log_steps(self, steps, columns):
        timestamp = int(time.time() * 1000)
        for name, values in columns.items():
            self._buffer.extend(zip(itertools.repeat(name), map(float, values), itertools.repeat(timestamp), steps))
        if len(self._buffer) >= SHIP_POINTS:
            self._ship()

    def _ship(self):
        while self._buffer:
            chunk, self._buffer = self._buffer[:BATCH_POINTS], self._buffer[BATCH_POINTS:]
            self.writer.send(("metrics", self.run_id, chunk), len(chunk))
        # the store refused a write (a full disk, locked past the writer's retries): stop now, not at the end
        detail = None if self.store_failed else self.writer.store_error(self.run_id)
        if detail is not None:
            self.store_failed = True
            raise StoreError.refused(self.tracking_uri, f"run {self.run_id}", detail)

    def log_artifact(self, path: str) -> None:
        self.writer.log_artifact(self.run_id, path)  # through the writer: it may not have created the run yet

    def start(self) -> None:
        """Log the run's data set where the writer did not store it with the run (a tracking server),
        in MLflow's own way (mlflow.log_input)."""
        if self._dataset is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset, self._dataset = Dataset(**self._dataset), None
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
        # two workers logging the same data set at once race; the loser's second try links to it
        _once_more_if_raced(_client(self.tracking_uri).log_inputs, self.run_id, datasets=inputs)

    def close(self, status="FINISHED", tags: dict | None = None):
        """Ship what is buffered, then end the run with `status`, setting `tags` (why it ended)."""
        if self.closed:
            return
        self.closed = True
        tags = dict(tags or {})
        refused = None
        try:
            if self.store_failed:
                self._buffer = []  # the writer drops them: the run has lost points already
            try:
                self._ship()
            except StoreError as error:  # said only now: the writer ends the run FAILED, with the store's words
                refused = error
            try:
                self.writer.end_run(self.run_id, status, tags)
            except StoreError:
                if not self.store_failed:
                    raise
                # the first store error is the one raised (here or by our caller); the writer ends the run
                # as asked once the store takes it, at the latest when this process stops
        except WriterDied as died:  # nobody else will end the run now: end it here, or it stays RUNNING
            why = tags.get(TAG_ERROR, "")
            if str(died) not in why:
                why = f"{why}; {died}" if why else str(died)
            tags[TAG_ERROR] = f"{why} (points after its last stored batch are lost)"
            client = _client(self.tracking_uri)
            if self._create is not None and not _run_exists(client, self.run_id):  # died before storing it
                from optimstudy.sql_writes import FastWrites

                FastWrites.for_client(client).create_run(self.run_id, **self._create)
            for key, value in tags.items():
                client.set_tag(self.run_id, key, str(value)[:5000])
            client.set_terminated(self.run_id, "FAILED" if status == "FINISHED" else status)
            raise
        if refused is not None:
            raise refused


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _param_text(value) -> str:
    text = "None" if value is None else str(value)
    return text[:6000]


@contextlib.contextmanager
def tracked_run(logger: MlflowLogger):
    """Start the run (`MlflowLogger.start`); end it FINISHED, KILLED on Ctrl-C, FAILED with the
    message on an exception."""
    try:
        logger.start()
        yield logger
    except KeyboardInterrupt:
        logger.close("KILLED", {TAG_ERROR: "interrupted (Ctrl-C)"})
        raise
    except BaseException as error:
        from optimstudy.training import Stop

        if isinstance(error, Stop):
            logger.close("KILLED", {TAG_PRUNED: str(error)})
        else:
            logger.close("FAILED", {TAG_ERROR: hide_passwords(f"{type(error).__name__}: {error}")})
        raise
    else:
        logger.close("FINISHED")


def end_orphaned_runs(tracking_uri: str, run_ids, reason: str) -> list[str]:
    """End RUNNING runs whose process is gone as KILLED; returns the ids changed."""
    run_ids = list(run_ids)
    if not run_ids:  # every worker asks when its queue runs dry: no client (~1 s of MLflow imports) for nothing
        return []
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    changed = []
    for run_id in run_ids:
        try:
            status = client.get_run(run_id).info.status
        except MlflowException:  # never stored: its worker and the writer died before the writer created it
            continue
        if status == "RUNNING":
            client.set_tag(run_id, "optimstudy.error", reason)
            client.set_terminated(run_id, "KILLED")
            changed.append(run_id)
    return changed


def sql_engine_url(tracking_uri: str) -> str | None:
    scheme = urlparse(tracking_uri).scheme
    if scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        return tracking_uri
    return None


# the sweep parent run's writes and the report's attachments live in parent_runs.py; found here too
from optimstudy.parent_runs import (NOTE_MAX_CHARS, OWN_NOTE_TAG, create_parent_run, log_report,  # noqa: E402,F401
                                    rename_experiment, set_notes, update_run)
