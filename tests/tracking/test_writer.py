"""The writer process's direct SQL writes and its connections shared with forked workers.

Real SQLite stores, a real writer process, real forked processes; nothing is mocked. What the
writer writes straight into MLflow's tables (sql_writes.py) must read back exactly as what
MLflow's own client writes.
"""
import contextlib
import json
import math
import os
import sqlite3
import time

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from optimstudy.tracking.client import ensure_store, experiment_id
from optimstudy.tracking.mlflow_logger import MlflowLogger
from optimstudy.tracking.writer import URI_VARIABLE
from optimstudy.tracking.writer_handle import adopt_writer, hand_over, spare_connections, start_writer

POINTS = {  # name -> values by step: NaN, ±inf, a repeated step, a step logged out of order
    "loss": [(0, 2.5), (1, float("nan")), (2, float("inf")), (3, -float("inf")), (5, 0.25), (4, 0.5)],
    "grad_norm": [(0, 1.0), (1, 1.0), (1, 2.0), (2, 3.0)],
}
PARAMS = {"lr": "0.1", "optimizer": "sgd", "note": "None"}
DATASET = {"name": "mnist", "digest": "0123abcd", "source_type": "local", "source": "/data/MNIST",
           "profile": {"shapes": {"train": [8000, 1, 28, 28]}, "classes": 10}}
TAGS = {"optimstudy.kind": "trial", "mlflow.user": "tester"}


def table(tracking_uri, sql, run_id):
    with sqlite3.connect(tracking_uri[len("sqlite:///"):]) as connection:
        return sorted(connection.execute(sql, (run_id,)).fetchall(), key=repr)


def stored(tracking_uri, run_id) -> dict:
    """Everything of a run in MLflow's tables but its id, its start and end times."""
    return {
        "metrics": table(tracking_uri, "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid=?",
                         run_id),
        "latest": table(tracking_uri, "SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid=?",
                        run_id),
        "params": table(tracking_uri, "SELECT key, value FROM params WHERE run_uuid=?", run_id),
        "tags": table(tracking_uri, "SELECT key, value FROM tags WHERE run_uuid=?", run_id),
        "run": table(tracking_uri, "SELECT name, source_type, user_id, status, lifecycle_stage, "
                                   "replace(artifact_uri, run_uuid, 'ID'), end_time IS NOT NULL FROM runs "
                                   "WHERE run_uuid=?", run_id),
        "inputs": table(tracking_uri, "SELECT i.source_type, i.destination_type, i.step, t.name, t.value, d.name, "
                                      "d.digest, d.dataset_source_type, d.dataset_source, d.dataset_schema, "
                                      "d.dataset_profile, d.experiment_id FROM inputs i "
                                      "JOIN input_tags t ON t.input_uuid = i.input_uuid "
                                      "JOIN datasets d ON d.dataset_uuid = i.source_id WHERE i.destination_id=?",
                        run_id),
    }


def test_the_writer_stores_a_run_exactly_as_mlflow_does(store):
    writer = start_writer(store)
    ensure_store(store, writer)
    # SQLite: the writer creates runs and inserts points itself, on a schema revision listed as compared
    # here; after an MLflow upgrade, add the new revision to optimstudy.compat.mlflow and run this test
    assert writer.creates_runs, "the store's MLflow schema revision is not in VERIFIED_SCHEMA_REVISIONS"
    write_both_ways(store)
    with sqlite3.connect(store[len("sqlite:///"):]) as connection:  # one data set, however many runs use it
        assert connection.execute("SELECT count(*) FROM datasets").fetchone() == (1,)


def test_on_a_schema_not_compared_the_writer_uses_mlflows_client_and_stores_the_same_rows(store, tmp_path, monkeypatch):
    # The writer is a process of its own (python -P -m optimstudy.tracking.writer): a sitecustomize on its PYTHONPATH
    # makes its list of compared schema revisions hold none, as after an MLflow upgrade.
    patch = tmp_path / "unverified_schema"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import optimstudy.compat.mlflow\noptimstudy.compat.mlflow.VERIFIED_SCHEMA_REVISIONS = frozenset()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(patch), os.environ.get("PYTHONPATH")])))
    writer = start_writer(store)
    ensure_store(store, writer)
    assert not writer.creates_runs  # the training process creates runs, the writer calls log_batch
    write_both_ways(store)


def write_both_ways(store):
    """The same runs (FINISHED, then KILLED with an error tag) through our writer and through
    MLflow's own client; every row of each must be the same."""
    experiment = experiment_id(store, "same")
    client = MlflowClient(store)
    for status, end_tags in (("FINISHED", {}), ("KILLED", {"optimstudy.error": "interrupted (Ctrl-C)"})):
        logger = MlflowLogger(store, "same", PARAMS, TAGS, run_name="a run", dataset=DATASET)
        logger.start()  # as the runner does: the data set, where the writer did not store it with the run
        for name, values in POINTS.items():
            for step, value in values:
                logger._buffer.append((name, value, 1_000 + step, step))  # fixed timestamps: comparable rows
        logger.close(status, end_tags)

        # the same run through MLflow's own client
        reference = client.create_run(experiment, tags=TAGS, run_name="a run").info.run_id
        client.log_batch(reference, params=[Param(k, v) for k, v in PARAMS.items()],
                         metrics=[Metric(name, value, 1_000 + step, step)
                                  for name, values in POINTS.items() for step, value in values])
        client.log_inputs(reference, datasets=[DatasetInput(Dataset(**{**DATASET, "profile": json.dumps(
            DATASET["profile"])}), tags=[InputTag("mlflow.data.context", "training")])])
        client.log_batch(reference, tags=[RunTag(k, v) for k, v in end_tags.items()])
        client.set_terminated(reference, status)

        ours, theirs = stored(store, logger.run_id), stored(store, reference)
        assert ours == theirs
        assert any(is_nan for *_, is_nan in ours["metrics"]) and len(ours["inputs"]) == 1
        run = client.get_run(logger.run_id)
        assert (run.info.status == status and run.data.params == PARAMS
                and run.inputs.dataset_inputs[0].dataset.name == "mnist")
        assert run.data.metrics["loss"] == 0.25 and math.isclose(run.data.metrics["grad_norm"], 3.0)


def test_the_writer_starts_at_full_priority_and_yields_the_cores_once_steps_flow(store):
    """The trainer waits for the writer's start-up: niced from the start, it took minutes beside busy processes."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    writer = start_writer(store)
    ensure_store(store, writer)
    experiment_id(store, "priority")
    logger = MlflowLogger(store, "priority", {}, {})
    assert os.getpriority(os.PRIO_PROCESS, writer.process.pid) == ours  # pid: the thread serving us
    logger.log(0, {"loss": 1.0})
    logger.close("FINISHED")  # answered: the writer has handled the step before it
    assert os.getpriority(os.PRIO_PROCESS, writer.process.pid) == max(10, ours)


def test_a_forked_worker_shares_the_writer_and_its_death_ends_only_its_run(store):
    writer = start_writer(store, spares=1)
    ensure_store(store, writer)
    (spare,) = spare_connections()
    experiment = experiment_id(store, "shared")  # before the fork, as a sweep passes it to its workers
    pid = os.fork()
    if pid == 0:  # the worker: its run stays open when it dies
        code = 1
        try:
            adopt_writer(spare)
            child = MlflowLogger(store, "shared", {}, {}, known_experiment_id=experiment)
            child.log(0, {"loss": 1.0})
            child._ship()
            child.writer.end("no-such-run", "FINISHED", {})  # a round trip: its run is stored by now
        except RuntimeError:
            code = 0  # the writer answers for the unknown run: everything before it is done
        finally:
            os._exit(code)
    hand_over(spare)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ours = MlflowLogger(store, "shared", {}, {})  # the parent's connection still works
    ours.log(0, {"loss": 2.0})
    ours.close("FINISHED")

    client = MlflowClient(store)
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert runs[ours.run_id].info.status == "FINISHED"
    (killed,) = [r for run_id, r in runs.items() if run_id != ours.run_id]
    deadline = time.monotonic() + 30  # the writer ends it when it reads the worker's closed connection
    while killed.info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
        killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.metrics == {"loss": 1.0}
    assert killed.data.tags["optimstudy.error"] == "the training process died mid-run"
    assert writer.alive() and len(_writer_processes(store)) == 1


def _writer_processes(tracking_uri) -> list[int]:
    """Writers of this store: the URI is in their environment (never on their command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file, open(f"/proc/{pid}/environ", "rb") as environ:
                command, variables = file.read().split(b"\0"), environ.read().split(b"\0")
        except OSError:
            continue
        if (b"optimstudy.tracking.writer" in command
                and f"{URI_VARIABLE}={tracking_uri}".encode() in variables):
            found.append(int(pid))
    return found


def test_runs_written_together_are_stored_exactly_as_runs_written_alone(store):
    """A stack's seeds: created, logged and ended in one frame each (writer_handle's `together`), which
    the writer stores in one transaction; closed in another order than they were ended."""
    writer = start_writer(store)
    ensure_store(store, writer)
    experiment = experiment_id(store, "together")
    ends = [("FINISHED", {}), ("KILLED", {"optimstudy.pruned": "pruned at step 20"}), ("FINISHED", {})]

    def points_of(logger):
        for name, values in POINTS.items():
            for step, value in values:
                logger._buffer.append((name, value, 1_000 + step, step))  # fixed timestamps: comparable rows

    alone = []
    for status, tags in ends:
        logger = MlflowLogger(store, "together", PARAMS, TAGS, run_name="a run", dataset=DATASET,
                              known_experiment_id=experiment)
        points_of(logger)
        logger.close(status, tags)
        alone.append(logger.run_id)
    with writer.together():
        loggers = [MlflowLogger(store, "together", PARAMS, TAGS, run_name="a run", dataset=DATASET,
                                known_experiment_id=experiment) for _ in ends]
    with writer.together():
        for logger in loggers:
            points_of(logger)
            logger._hand_over()
    with writer.together():
        for logger, (status, tags) in zip(loggers, ends):
            logger.end_ahead(status, tags)
    for logger, (status, tags) in reversed(list(zip(loggers, ends))):  # each waits for its own answer
        logger.close(status, tags)
    assert not writer.ahead and not writer.early
    for logger, reference in zip(loggers, alone):
        assert stored(store, logger.run_id) == stored(store, reference)
    with sqlite3.connect(store[len("sqlite:///"):]) as connection:
        assert connection.execute("SELECT count(*) FROM datasets").fetchone() == (1,)


def test_a_group_that_cannot_be_written_together_writes_nothing_then_each_message_goes_alone(store):
    from optimstudy.tracking.sql_writes import FastWrites

    writer = start_writer(store)
    ensure_store(store, writer)
    experiment = experiment_id(store, "alone")
    fast = FastWrites.for_client(MlflowClient(store))
    twice = [("loss", 1.0, 1_000, 0), ("loss", 1.0, 1_000, 0)]  # a duplicate point: MLflow's log_batch drops it
    run = {"experiment_id": experiment, "run_name": "r", "tags": {}, "params": {}, "start_time": 1_000}
    assert not fast.write_together([("create", "a" * 32, run), ("metrics", "a" * 32, twice)])
    assert MlflowClient(store).search_runs([experiment]) == []  # nothing of the group was written

    with writer.together():  # through the writer: the same group is stored message by message
        loggers = [MlflowLogger(store, "alone", {}, {}, known_experiment_id=experiment) for _ in range(2)]
    with writer.together():
        for logger in loggers:
            logger._buffer.extend(twice)
            logger.end_ahead("FINISHED")
    for logger in loggers:
        logger.close("FINISHED")
        run = MlflowClient(store).get_run(logger.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"loss": 1.0}
        assert len(MlflowClient(store).get_metric_history(logger.run_id, "loss")) == 1


def test_one_transaction_for_several_runs_stores_the_rows_each_run_stores_alone(store):
    from optimstudy.tracking.sql_writes import FastWrites

    ensure_store(store)
    experiment = experiment_id(store, "one transaction")
    fast = FastWrites.for_client(MlflowClient(store))
    points = [(name, value, 1_000 + step, step) for name, values in POINTS.items() for step, value in values]
    run = {"experiment_id": experiment, "run_name": "a run", "tags": TAGS, "params": PARAMS, "start_time": 1_000,
           "dataset": {**DATASET, "profile": json.dumps(DATASET["profile"])}}
    end = ("KILLED", {"optimstudy.error": "interrupted (Ctrl-C)"})
    alone, together = "a" * 32, ["b" * 32, "c" * 32]
    fast.create_run(alone, **run)
    assert fast.log_metrics(alone, points[:5]) and fast.log_metrics(alone, points[5:])
    assert fast.end_run(alone, *end)
    assert fast.write_together([("create", run_id, run) for run_id in together])
    assert fast.write_together([("metrics", run_id, part) for part in (points[:5], points[5:]) for run_id in together])
    assert fast.write_together([("end", run_id, *end) for run_id in together])
    for run_id in together:
        assert stored(store, run_id) == stored(store, alone)


# ---- a new store from the template, and a writer without MLflow ----

TIMES = {"creation_time", "last_update_time"}  # when a row was made: the only columns two new stores differ in


def every_row(database) -> dict:
    """Each table's schema and rows (times left out), of a SQLite store."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = connection.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') "
                                    "ORDER BY name").fetchall()
        rows = {}
        for name, _ in tables:
            if connection.execute("SELECT type FROM sqlite_master WHERE name=?", (name,)).fetchone()[0] != "table":
                continue
            cursor = connection.execute(f'SELECT * FROM "{name}"')
            kept = [i for i, column in enumerate(cursor.description) if column[0] not in TIMES]
            rows[name] = sorted((tuple(row[i] for i in kept) for row in cursor), key=repr)
    return {"schema": tables, "rows": rows}


def test_a_new_store_is_made_from_the_template_with_every_row_mlflow_makes(tmp_path, monkeypatch):
    from optimstudy.compat import mlflow as mlflow_internals
    from optimstudy.tracking.writer import _Store, find_or_create_experiment, find_or_create_experiment_directly

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no template yet, as on a new machine
    monkeypatch.chdir(tmp_path)  # MLflow puts the Default experiment's artifacts under the working folder
    by_mlflow, from_template = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    by_mlflow.parent.mkdir()
    from_template.parent.mkdir()
    first = _Store(f"sqlite:///{by_mlflow}")
    assert first.open() == {"creates_runs": True}
    assert first._client is not None, "the first new store is MLflow's to make"
    assert mlflow_internals.template_path().is_file()
    assert mlflow_internals.current_revision() in mlflow_internals.VERIFIED_SCHEMA_REVISIONS

    second = _Store(f"sqlite:///{from_template}")
    assert second.open() == {"creates_runs": True}
    assert second._client is None, "a copy of the template, written directly"
    assert every_row(from_template) == every_row(by_mlflow)

    # an experiment made directly holds what MLflow's client makes, and is found again either way
    location = (tmp_path / "artifacts" / "an experiment").as_uri()
    mlflows = find_or_create_experiment(first.client, "an experiment", location)
    ours = find_or_create_experiment_directly(second.fast, "an experiment", location)
    assert every_row(from_template) == every_row(by_mlflow) and ours == mlflows
    assert find_or_create_experiment(MlflowClient(f"sqlite:///{from_template}"), "an experiment", location) == ours
    assert find_or_create_experiment_directly(first.fast, "an experiment", location) == mlflows


def test_a_writer_on_an_existing_store_imports_no_mlflow(tmp_path, monkeypatch):
    """Its whole start-up is SQLAlchemy: a run, its points and its end, a sweep's parent run and notes."""
    import subprocess
    import sys

    from optimstudy.tracking.writer import _Store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _Store(f"sqlite:///{tmp_path / 'first.db'}").open()  # MLflow makes the first store (and the template)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    script = f"""
import sys
from optimstudy.tracking.parent_runs import create_parent_run, set_notes, update_run
from optimstudy.tracking.writer import _Store, find_or_create_experiment_directly
store = _Store({store!r})
assert store.open() == {{"creates_runs": True}}
experiment = find_or_create_experiment_directly(store.fast, "e", {(tmp_path / 'artifacts').as_uri()!r})
store.fast.create_run("a" * 32, experiment, "a run", {{"optimstudy.kind": "trial"}}, {{"lr": "0.1"}}, 1000)
assert store.fast.log_metrics("a" * 32, [("loss", 1.0, 1000, 0)]) and store.fast.end_run("a" * 32, "FINISHED", {{}})
parent = create_parent_run({store!r}, "e", "sweep e", {{"optimstudy.kind": "sweep"}}, {{"spec": "e.toml"}},
                           {{"spec.toml": "name = 'e'"}})
assert update_run({store!r}, parent, tags={{"optimstudy.pid": "1"}}, metrics={{"trials_complete": 1}},
                  status="FINISHED")
set_notes({store!r}, parent, "the run's note", "e", "the experiment's note")
print(sorted(name for name in sys.modules if name.split(".")[0] == "mlflow"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    client = MlflowClient(store)  # and MLflow reads all of it
    (parent,) = client.search_runs([client.get_experiment_by_name("e").experiment_id], "tags.`optimstudy.kind`='sweep'")
    assert parent.info.status == "FINISHED" and parent.data.metrics == {"trials_complete": 1.0}
    assert parent.data.tags["mlflow.note.content"] == "the run's note"
    assert client.get_experiment_by_name("e").tags["mlflow.note.content"] == "the experiment's note"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["spec.toml"]
