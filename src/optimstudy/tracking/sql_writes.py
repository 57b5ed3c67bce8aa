"""Direct writes to MLflow's own SQL tables, for the writer process (writer.py).

Like writer.py it imports nothing from optimstudy but compat.mlflow: the writer starts without torch,
and on a store of the schema revision the installed MLflow opens, without MLflow (`for_uri`).
MLflow's table layout is not a public API: tests/tracking/test_writer.py writes the same run both ways
and compares every row, and these writes run only on the schema revisions it compared
(compat.mlflow.VERIFIED_SCHEMA_REVISIONS); on any other, the writer uses MLflow's own client.
"""
import contextlib
import math
import os
import time
import uuid

from optimstudy.compat import mlflow as mlflow_internals

# A write waits this long for a SQLite lock held by another process, then fails; the writer retries it
# (writer.patiently: LOCK_RETRY_S in all, said once on stderr) instead of waiting inside SQLite, silent.
BUSY_WAIT_MS = 1000
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class _NotActive(Exception):
    """The run to end is not an active run."""


class FastWrites:
    """Direct writes to MLflow's own tables, for SQL stores (SQLite, PostgreSQL, MySQL).

    `log_batch` builds an ORM object and checks the latest metric per point; one Core
    `INSERT ... executemany` does neither. Every step of every run goes through here, so on 2
    shared cores that is the difference between the writer taking a worker's core and not
    (docs/performance.md, "Why the code is built as it is"). Creating a run is one transaction
    (run, tags, params, its data set) with an id the training process chose, so it never waits for
    it; ending it is one more (tags, status), where MLflow's ORM takes four commits. The rows are exactly the ones
    MLflow's SqlAlchemyStore writes (NaN as is_nan, ±inf clipped, latest_metrics kept current);
    anything unusual (a duplicate point, an odd metric name) goes through MLflow's own log_batch.
    """

    def __init__(self, engine):
        import sqlalchemy  # on first use: it imports sqlalchemy

        self.engine, self.sa, self.t = engine, sqlalchemy, mlflow_internals.tables()
        self.latest: dict[str, dict] = {}  # run_id -> key -> (step, timestamp, value, is_nan) in latest_metrics
        self.valid_keys: set[str] = set()
        self.artifact_locations: dict[str, str] = {}
        self.datasets: dict[tuple, str] = {}  # (experiment id, name, digest) -> dataset_uuid
        self.sqlite = engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def _transaction(self):
        with self.engine.begin() as connection:
            if self.sqlite:  # MLflow's sessions set 20 s on the pooled connection; ours waits briefly, then retries
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {BUSY_WAIT_MS}")
            yield connection

    @classmethod
    def for_client(cls, client):
        """Direct writes for `client`'s store; None (MLflow's own client then) for a tracking server or
        a schema revision these writes were not compared on."""
        store = mlflow_internals.sql_store(client)
        if store is None or not mlflow_internals.schema_is_verified(store.engine):
            return None
        mlflow_internals.remember_current_revision(mlflow_internals.schema_revision(store.engine))
        return cls(store.engine)

    @classmethod
    def for_uri(cls, tracking_uri: str, pooled: bool = True):
        """Direct writes to the SQL store at `tracking_uri` without MLflow: where its schema revision is
        the one the installed MLflow opens (MLflow refuses any other) and one these writes were compared
        on. None otherwise (a new store, a tracking server, an upgrade): MLflow's client decides.
        `pooled=False`: a connection per transaction (a process that forks workers, and writes rarely)."""
        if not tracking_uri.startswith(SQL_SCHEMES):
            return None
        import sqlalchemy  # on first use: it imports sqlalchemy

        if tracking_uri.startswith("sqlite:///"):  # MLflow would create a missing file: it is not ours to
            database = tracking_uri[len("sqlite:///"):]  # make (compat.mlflow.new_sqlite_store makes new ones)
            if not database or not os.path.isfile(database):
                return None
        pool = {} if pooled else {"poolclass": sqlalchemy.pool.NullPool}
        try:
            engine = sqlalchemy.create_engine(tracking_uri, **pool)
        except Exception:  # noqa: BLE001  a driver missing, a URL SQLAlchemy cannot read: MLflow's client says which
            return None
        try:
            revision = mlflow_internals.schema_revision(engine)
        except sqlalchemy.exc.SQLAlchemyError:  # not a store yet, or not reachable: MLflow says which
            engine.dispose()
            return None
        if revision is None or revision != mlflow_internals.current_revision() or \
                revision not in mlflow_internals.VERIFIED_SCHEMA_REVISIONS:
            engine.dispose()
            return None
        return cls(engine)

    def find_experiment(self, name: str) -> tuple[str, str, dict] | None:
        """(id, lifecycle stage, tags) of the experiment named `name`, or None: MLflow's
        get_experiment_by_name, in the default workspace (the only one without MLflow's workspaces)."""
        experiments, tags, sa = self.t["experiments"], self.t["experiment_tags"], self.sa
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(experiments.c.experiment_id, experiments.c.lifecycle_stage).where(
                experiments.c.name == name, experiments.c.workspace == mlflow_internals.DEFAULT_WORKSPACE)).first()
            if found is None:
                return None
            rows = connection.execute(sa.select(tags.c.key, tags.c.value).where(
                tags.c.experiment_id == found.experiment_id))
            return str(found.experiment_id), found.lifecycle_stage, {row.key: row.value for row in rows}

    def creates_experiment(self, name, artifact_location) -> bool:
        """Whether create_experiment makes this one as MLflow would: a name MLflow takes and fits its
        column, a file location (MLflow keeps it as given), a database that returns the new id (SQLite,
        PostgreSQL); else MLflow's client makes it."""
        plain_name = isinstance(name, str) and bool(name.strip()) and len(name) <= 256
        file_location = isinstance(artifact_location, str) and artifact_location.startswith("file:///")
        return self.engine.dialect.insert_returning and plain_name and file_location and len(artifact_location) <= 256

    def create_experiment(self, name: str, artifact_location: str, tags: dict) -> str:
        """MLflow's create_experiment (tags that pass check_tag_name, values up to 5,000 characters);
        IntegrityError where one of that name exists (made by another process meanwhile)."""
        experiments, sa, now = self.t["experiments"], self.sa, int(time.time() * 1000)
        for key in tags:
            mlflow_internals.check_tag_name(key)
        with self._transaction() as connection:
            experiment_id = connection.execute(sa.insert(experiments).values(
                name=name, workspace=mlflow_internals.DEFAULT_WORKSPACE, artifact_location=artifact_location,
                lifecycle_stage=mlflow_internals.ACTIVE, creation_time=now, last_update_time=now).returning(
                experiments.c.experiment_id)).scalar()
            if tags:
                connection.execute(sa.insert(self.t["experiment_tags"]), [
                    {"experiment_id": experiment_id, "key": key, "value": str(value)[:5000]}
                    for key, value in tags.items()])
        return str(experiment_id)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """MLflow's set_experiment_tag: the tag replaced or added (once more where another process added
        it at the same moment, on a database that does not serialise the two)."""
        table, sa = self.t["experiment_tags"], self.sa
        mlflow_internals.check_tag_name(key)
        for attempt in (1, 2):
            try:
                with self._transaction() as connection:
                    connection.execute(sa.delete(table).where(table.c.experiment_id == int(experiment_id),
                                                              table.c.key == key))
                    connection.execute(sa.insert(table), {"experiment_id": int(experiment_id), "key": key,
                                                          "value": value})
                return
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise

    def create_run(self, run_id: str, experiment_id: str, run_name: str, tags: dict, params: dict,
                   start_time: int, dataset: dict | None = None) -> None:
        """The run, its tags and params, and `dataset` (name, digest, source_type, source, profile)
        as its input, in one transaction: the rows MLflow's create_run, log_batch and log_inputs write."""
        rows = self._run_rows(run_id, experiment_id, run_name, tags, params, start_time)
        for attempt in (1, 2):
            try:
                with self._transaction() as connection:
                    self._insert_run(connection, run_id, experiment_id, rows, dataset)
                break
            except self.sa.exc.IntegrityError:  # another machine stored the same data set at once: it exists now
                self.datasets.clear()
                if attempt == 2 or dataset is None:
                    raise
            except Exception:  # rolled back (a locked store): a data set found or added in it may not exist
                self.datasets.clear()
                raise
        self.latest[run_id] = {}

    def _run_rows(self, run_id: str, experiment_id: str, run_name: str, tags: dict, params: dict,
                  start_time: int) -> tuple:
        m = mlflow_internals
        location = self.artifact_locations.get(experiment_id)
        if location is None:
            location = self.artifact_locations[experiment_id] = self._artifact_location(experiment_id)
        run = {"name": run_name, "artifact_uri": m.run_artifact_uri(location, run_id), "run_uuid": run_id,
               "experiment_id": int(experiment_id), "source_type": m.SOURCE_UNKNOWN,
               "source_name": "", "entry_point_name": "", "user_id": tags.get("mlflow.user", "unknown"),
               "status": m.RUNNING, "start_time": start_time, "end_time": None,
               "deleted_time": None, "source_version": "", "lifecycle_stage": m.ACTIVE}
        tag_rows = [{"run_uuid": run_id, "key": k, "value": v} for k, v in {"mlflow.runName": run_name, **tags}.items()]
        param_rows = [{"run_uuid": run_id, "key": k, "value": v} for k, v in params.items()]
        return run, tag_rows, param_rows

    def _artifact_location(self, experiment_id: str) -> str:
        table = self.t["experiments"]
        with self.engine.connect() as connection:
            found = connection.execute(self.sa.select(table.c.artifact_location).where(
                table.c.experiment_id == int(experiment_id))).first()
        if found is None:
            raise LookupError(f"no experiment with id {experiment_id} in the tracking store")
        return found.artifact_location

    def _insert_run(self, connection, run_id: str, experiment_id: str, rows: tuple, dataset: dict | None) -> None:
        t, sa = self.t, self.sa
        run, tag_rows, param_rows = rows
        connection.execute(sa.insert(t["runs"]), run)
        connection.execute(sa.insert(t["tags"]), tag_rows)
        if param_rows:
            connection.execute(sa.insert(t["params"]), param_rows)
        if dataset is not None:
            self._link_dataset(connection, run_id, int(experiment_id), dataset)

    def _link_dataset(self, connection, run_id: str, experiment_id: int, dataset: dict) -> None:
        """The data set (stored once per experiment) and the run's input edge to it, tagged "training"."""
        t, sa = self.t, self.sa
        key = (experiment_id, dataset["name"], dataset["digest"])
        found = self.datasets.get(key)
        if found is None:
            table = t["datasets"]
            found = connection.execute(sa.select(table.c.dataset_uuid).where(
                table.c.experiment_id == experiment_id, table.c.name == dataset["name"],
                table.c.digest == dataset["digest"])).scalar()
            if found is None:
                found = uuid.uuid4().hex
                connection.execute(sa.insert(table), {
                    "dataset_uuid": found, "experiment_id": experiment_id, "name": dataset["name"],
                    "digest": dataset["digest"], "dataset_source_type": dataset["source_type"],
                    "dataset_source": dataset["source"], "dataset_schema": None, "dataset_profile": dataset["profile"]})
            self.datasets[key] = found
        edge = uuid.uuid4().hex
        connection.execute(sa.insert(t["inputs"]), {
            "input_uuid": edge, "source_type": "DATASET", "source_id": found, "destination_type": "RUN",
            "destination_id": run_id})
        connection.execute(sa.insert(t["input_tags"]),
                           {"input_uuid": edge, "name": "mlflow.data.context", "value": "training"})

    def end_run(self, run_id: str, status: str, tags: dict) -> bool:
        """Set `tags` and end the run with `status` in one transaction, as log_batch and set_terminated
        do; False: not done (a deleted run, an unusual tag), use MLflow's own calls."""
        if not self._endable(status, tags):
            return False
        try:
            with self._transaction() as connection:
                self._end(connection, run_id, status, tags)
        except _NotActive:  # deleted, or not there: MLflow's own calls say which
            return False
        return True

    @staticmethod
    def _endable(status: str, tags: dict) -> bool:
        if status not in ("FINISHED", "FAILED", "KILLED") or "mlflow.runName" in tags:
            return False
        try:
            for key in tags:
                mlflow_internals.check_tag_name(key)
        except Exception:  # noqa: BLE001  a name MLflow refuses, or a changed private check: MLflow's own calls decide
            return False
        return True

    def _end(self, connection, run_id: str, status: str, tags: dict) -> None:
        sa, runs = self.sa, self.t["runs"]
        ended = connection.execute(sa.update(runs).where(
            runs.c.run_uuid == run_id, runs.c.lifecycle_stage == "active").values(
            status=status, end_time=int(time.time() * 1000)))
        if ended.rowcount != 1:
            raise _NotActive  # rolls the transaction back
        self._replace_tags(connection, run_id, tags)

    def _replace_tags(self, connection, run_id: str, tags: dict) -> None:
        """The run's tags of these names replaced (or added), as MLflow's log_batch sets them."""
        if tags:
            table, sa = self.t["tags"], self.sa
            connection.execute(sa.delete(table).where(table.c.run_uuid == run_id, table.c.key.in_(list(tags))))
            connection.execute(sa.insert(table), [{"run_uuid": run_id, "key": k, "value": str(v)}
                                                  for k, v in tags.items()])

    # ---- a sweep's parent run (tracking.parent_runs): MLflow's create_run, log_batch, update_run,
    # set_terminated and set_tag as one transaction each; None or False where MLflow's client must decide

    def run_artifact_uri(self, run_id: str) -> str | None:
        """The artifact URI of the active run `run_id`; None if it is not there or not active."""
        runs = self.t["runs"]
        with self.engine.connect() as connection:
            return connection.execute(self.sa.select(runs.c.artifact_uri).where(
                runs.c.run_uuid == run_id, runs.c.lifecycle_stage == mlflow_internals.ACTIVE)).scalar()

    def update_run(self, run_id: str, tags: dict, metrics: dict, status: str | None) -> bool:
        """Set `tags` (values up to 8,000 characters, as MLflow cuts them), add `metrics` at step 0 and set
        `status` (RUNNING: as MLflow's update_run, the end time kept; an end: as set_terminated, now) of the
        active run `run_id`, in one transaction. False, with nothing written, where MLflow must decide: the
        run is not active or not there, an unusual name, a point stored before."""
        now = int(time.time() * 1000)
        if not all(map(mlflow_internals.is_plain_name, [*tags, *metrics])) or "mlflow.runName" in tags:
            return False
        if status not in (None, mlflow_internals.RUNNING, "FINISHED", "FAILED", "KILLED"):
            return False
        rows = self._metric_rows(run_id, [(key, float(value), now, 0) for key, value in metrics.items()])
        if rows is None:
            return False
        runs, sa = self.t["runs"], self.sa
        try:
            with self._transaction() as connection:
                found = connection.execute(sa.select(runs.c.run_uuid).where(
                    runs.c.run_uuid == run_id, runs.c.lifecycle_stage == mlflow_internals.ACTIVE)).first()
                if found is None:
                    raise _NotActive
                self._replace_tags(connection, run_id, {k: str(v)[:8000] for k, v in tags.items()})
                if rows[0]:
                    self.latest.pop(run_id, None)  # another process may have written points since
                    self._insert_metrics(connection, run_id, *rows)
                if status == mlflow_internals.RUNNING:
                    connection.execute(sa.update(runs).where(runs.c.run_uuid == run_id).values(status=status))
                elif status:
                    connection.execute(sa.update(runs).where(runs.c.run_uuid == run_id).values(
                        status=status, end_time=now))
        except (_NotActive, self.sa.exc.IntegrityError):
            self.latest.pop(run_id, None)
            return False
        self.latest.pop(run_id, None)
        return True

    def log_metrics(self, run_id: str, points) -> bool:
        """Insert (key, value, timestamp, step) points; False: not done, use log_batch."""
        rows = self._metric_rows(run_id, points)
        if rows is None:
            return False
        try:
            with self._transaction() as connection:
                self._insert_metrics(connection, run_id, *rows)
        except self.sa.exc.IntegrityError:  # a point stored before (a retried batch): MLflow's path skips it
            self.latest.pop(run_id, None)
            return False
        except Exception:  # rolled back (a locked store, retried by the writer): what we knew was updated in it
            self.latest.pop(run_id, None)
            raise
        return True

    def _metric_rows(self, run_id: str, points) -> tuple[list, dict] | None:
        """The rows of `points` and the newest point per key; None where MLflow's log_batch must decide."""
        rows, newest = [], {}
        for key, value, timestamp, step in points:
            if key not in self.valid_keys:
                try:
                    mlflow_internals.check_metric_name(key)
                except Exception:  # noqa: BLE001  as in end_run
                    return None
                self.valid_keys.add(key)
            is_nan = math.isnan(value)
            if is_nan:
                value = 0.0
            elif math.isinf(value):
                value = 1.7976931348623157e308 if value > 0 else -1.7976931348623157e308
            rows.append({"run_uuid": run_id, "key": key, "value": value, "timestamp": timestamp, "step": step,
                         "is_nan": is_nan})
            order = (step, timestamp, value)
            if key not in newest or order > newest[key][:3]:
                newest[key] = (step, timestamp, value, is_nan)
        if len({(r["key"], r["timestamp"], r["step"], r["value"]) for r in rows}) < len(rows):
            return None  # duplicates within the batch: MLflow's log_batch drops them
        return rows, newest

    def _insert_metrics(self, connection, run_id: str, rows: list, newest: dict) -> None:
        t, sa = self.t, self.sa
        known = self.latest.get(run_id)
        if known is None:  # a run this writer did not create: read what it holds
            table = t["latest_metrics"]
            found = connection.execute(sa.select(table.c.key, table.c.step, table.c.timestamp, table.c.value,
                                                 table.c.is_nan).where(table.c.run_uuid == run_id))
            known = self.latest[run_id] = {r.key: (r.step, r.timestamp, r.value, r.is_nan) for r in found}
        connection.execute(sa.insert(t["metrics"]), rows)
        self._update_latest(connection, run_id, known, newest)

    def write_together(self, messages) -> bool:
        """The writer's "create", "metrics" and "end" messages of several runs (a stack's seeds, sent
        together by writer_handle's `together`) in one transaction, in order: one commit, where one per
        message cost a stack ~20 ms each on SQLite (its fsync). Other kinds are skipped (the caller's).
        False, with nothing written, where one of them would take another path alone (an unusual point
        or tag, a run not active, a point or data set stored before): the writer then handles each alone."""
        prepared = []
        for message in messages:
            kind, run_id = message[0], message[1]
            if kind == "create":
                run = dict(message[2])
                dataset = run.pop("dataset", None)
                prepared.append((kind, run_id, (run["experiment_id"], self._run_rows(run_id, **run), dataset)))
            elif kind == "metrics":
                rows = self._metric_rows(run_id, message[2])
                if rows is None:
                    return False
                prepared.append((kind, run_id, rows))
            elif kind == "end":
                if not self._endable(message[2], message[3]):
                    return False
                prepared.append((kind, run_id, message[2:4]))
        try:
            with self._transaction() as connection:
                for kind, run_id, item in prepared:
                    if kind == "create":
                        experiment_id, rows, dataset = item
                        self._insert_run(connection, run_id, experiment_id, rows, dataset)
                        self.latest[run_id] = {}
                    elif kind == "metrics":
                        self._insert_metrics(connection, run_id, *item)
                    else:
                        self._end(connection, run_id, *item)
        except Exception as error:  # rolled back: what we knew of these runs and data sets was updated in it
            for _, run_id, _ in prepared:
                self.latest.pop(run_id, None)
            self.datasets.clear()
            if isinstance(error, _NotActive | self.sa.exc.IntegrityError):
                return False
            raise
        return True

    def _update_latest(self, connection, run_id, known, newest) -> None:
        table, sa = self.t["latest_metrics"], self.sa
        for key, (step, timestamp, value, is_nan) in newest.items():
            values = {"step": step, "timestamp": timestamp, "value": value, "is_nan": is_nan}
            if key not in known:
                connection.execute(sa.insert(table), {"run_uuid": run_id, "key": key, **values})
            elif (step, timestamp, value) > known[key][:3]:
                connection.execute(sa.update(table).where(table.c.run_uuid == run_id, table.c.key == key), values)
            else:
                continue
            known[key] = (step, timestamp, value, is_nan)

    def forget(self, run_id: str) -> None:
        self.latest.pop(run_id, None)
