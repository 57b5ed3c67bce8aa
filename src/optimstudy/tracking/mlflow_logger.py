"""MLflow behind the Logger interface (run/loggers.py): every step of every run, at a few percent overhead.

The training process only buffers points and hands them to a writer process (writer.py, one per
sweep, shared by its workers; the way W&B's service works), which creates the runs, inserts the
points in bulk and ends the runs. If a training process dies, the writer sees its pipe close and
ends its open runs as KILLED, so no run stays RUNNING.

    from optimstudy.tracking.mlflow_logger import MlflowLogger, tracked_run
    with tracked_run(MlflowLogger(tracking_uri, "demo", config.params(), tags)) as logger:
        train(config, logger)
"""
import contextlib
import itertools
import json
import os
import time
import uuid

from optimstudy.errors import Stop, UsageError
from optimstudy.tag_names import TAG_ERROR, TAG_PRUNED
from optimstudy.tracking.client import (
    artifact_location,
    mlflow_client,
    once_more_if_raced,
    param_text,
)
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.writer import BATCH_POINTS, end_run
from optimstudy.tracking.writer_handle import StoreError, WriterDied, start_writer, writer_timeout_s

# Points go to the writer at every block the loop copies off the device (50 steps x 4 metrics),
# so it writes while training runs and little is left to wait for when the run ends.
SHIP_POINTS = 200
# MLflow's system metrics (system/cpu_utilization_percentage, GPU use, memory): seconds between
# samples, taken by the writer process; "0" turns them off (the benchmarks do).
SYSTEM_METRICS_ENV, SYSTEM_METRICS_S = "OPTIMSTUDY_SYSTEM_METRICS_S", 10.0


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
        experiment = known_experiment_id or self.writer.experiment(
            experiment, artifact_location(tracking_uri, experiment))
        params = {k: param_text(v) for k, v in params.items()}
        self._dataset = None if dataset is None else {
            "name": dataset["name"][:500], "digest": dataset["digest"][:36], "source_type": dataset["source_type"],
            "source": dataset["source"][:1000], "profile": json.dumps(dataset["profile"])}
        if self.writer.creates_runs:  # a SQL store: the writer creates it in one transaction; we do not wait
            self.run_id = uuid.uuid4().hex  # what MLflow's own create_run picks
            self._create = {"experiment_id": experiment, "run_name": run_name or f"run-{self.run_id[:8]}",
                            "tags": run_tags, "params": params, "start_time": int(time.time() * 1000),
                            "dataset": self._dataset}
            self.writer.create(self.run_id, self._create)
            self._dataset = None  # stored with the run
        else:  # a tracking server chooses the run's id: ask it
            self._create = None
            client = mlflow_client(tracking_uri)
            self.run_id = client.create_run(experiment, tags=run_tags, run_name=run_name).info.run_id
            from mlflow.entities import Param  # a tracking server only: a SQL store's trainer never imports MLflow

            client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self._buffer: list[tuple] = []
        self.closed = False
        self.store_failed = False  # the writer reported that the store refused this run's writes
        # from now on the writer ends it if we die, and samples CPU/GPU use and memory for it
        self.writer.open(self.run_id, sample_every_s)

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
        self._hand_over()
        # the store refused a write (a full disk, locked past the writer's retries): stop now, not at the end
        detail = None if self.store_failed else self.writer.store_error(self.run_id)
        if detail is not None:
            self.store_failed = True
            raise StoreError.refused(self.tracking_uri, f"run {self.run_id}", detail)

    def _hand_over(self):
        while self._buffer:
            chunk, self._buffer = self._buffer[:BATCH_POINTS], self._buffer[BATCH_POINTS:]
            self.writer.metrics(self.run_id, chunk)

    def end_ahead(self, status="FINISHED", tags: dict | None = None) -> None:
        """Hand over what is buffered and the run's end now, without waiting for the writer; the
        `close(status, tags)` that follows waits for that end's answer (runner.execute_stack ends a
        stack's runs together, in one of the writer's transactions)."""
        if not (self.closed or self.store_failed):
            self._hand_over()
            self.writer.end_ahead(self.run_id, status, dict(tags or {}))

    def log_artifact(self, path: str) -> None:
        self.writer.artifact(self.run_id, path)  # through the writer: it may not have created the run yet

    def start(self) -> None:
        """Log the run's data set where the writer did not store it with the run (a tracking server),
        in MLflow's own way (mlflow.log_input)."""
        if self._dataset is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag  # a tracking server only, as above

        dataset, self._dataset = Dataset(**self._dataset), None
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
        # two workers logging the same data set at once race; the loser's second try links to it
        once_more_if_raced(mlflow_client(self.tracking_uri).log_inputs, self.run_id, datasets=inputs)

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
                self.writer.end(self.run_id, status, tags)
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
            client = mlflow_client(self.tracking_uri)
            if self._create is not None and not run_exists(client, self.run_id):  # died before storing it
                from optimstudy.tracking.sql_writes import FastWrites  # only now: it imports MLflow

                fast = FastWrites.for_client(client)
                if fast is None:  # a schema not compared: the run cannot be made under our id; none is RUNNING
                    raise
                fast.create_run(self.run_id, **self._create)
            end_run(client, self.run_id, "FAILED" if status == "FINISHED" else status, tags)
            raise
        if refused is not None:
            raise refused


def run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


@contextlib.contextmanager
def tracked_run(logger: MlflowLogger):
    """Start the run (`MlflowLogger.start`); end it as `run_end` says."""
    try:
        logger.start()
        yield logger
    except BaseException as error:
        logger.close(*run_end(error))
        raise
    else:
        logger.close(*run_end(None))


def run_end(error: BaseException | None) -> tuple[str, dict]:
    """(status, tags) of a run that stopped on `error`: FINISHED without one, KILLED on Ctrl-C or when
    pruned (errors.Stop), FAILED with the message on any other exception."""
    if error is None:
        return "FINISHED", {}
    if isinstance(error, KeyboardInterrupt):
        return "KILLED", {TAG_ERROR: "interrupted (Ctrl-C)"}
    if isinstance(error, Stop):
        return "KILLED", {TAG_PRUNED: str(error)}
    return "FAILED", {TAG_ERROR: hide_passwords(f"{type(error).__name__}: {error}")}
