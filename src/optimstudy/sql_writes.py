"""Direct writes to MLflow's own SQL tables, for the writer process (writer.py loads this file by path).

Like writer.py it imports nothing from optimstudy: the writer starts without torch.
MLflow's table layout is not a public API: tests/test_writer.py writes the same run both ways
and compares every row, so an MLflow upgrade that changes it fails there, not in a user's store.
"""
import math


class FastWrites:
    """Direct writes to MLflow's own tables, for SQL stores (SQLite, PostgreSQL, MySQL).

    Measured here on SQLite: `log_batch` spends ~106 ms of CPU on 1,200 points (an ORM object
    and a latest-metric check per point), one Core `INSERT ... executemany` ~10 ms. Every step of
    every run goes through here, so on 2 shared cores that is the difference between the writer
    taking a worker's core and not. Creating a run is one transaction (run, tags, params) with an
    id the training process chose, so it never waits for it. The rows are exactly the ones
    MLflow's SqlAlchemyStore writes (NaN as is_nan, ±inf clipped, latest_metrics kept current);
    anything unusual (a duplicate point, an odd metric name) goes through MLflow's own log_batch.
    """

    def __init__(self, client, store):
        import sqlalchemy
        from mlflow.store.tracking.dbmodels import models

        self.client, self.store, self.sa, self.models = client, store, sqlalchemy, models
        self.latest: dict[str, dict] = {}  # run_id -> key -> (step, timestamp, value, is_nan) in latest_metrics
        self.valid_keys: set[str] = set()
        self.artifact_locations: dict[str, str] = {}

    @classmethod
    def for_client(cls, client):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        return cls(client, store) if isinstance(store, SqlAlchemyStore) else None

    def create_run(self, run_id: str, experiment_id: str, run_name: str, tags: dict, params: dict,
                   start_time: int) -> None:
        from mlflow.entities import LifecycleStage, RunStatus, SourceType
        from mlflow.utils.uri import append_to_uri_path

        m = self.models
        location = self.artifact_locations.get(experiment_id)
        if location is None:
            location = self.artifact_locations[experiment_id] = self.store.get_experiment(experiment_id).artifact_location
        run = m.SqlRun(name=run_name, artifact_uri=append_to_uri_path(location, run_id, "artifacts"),
                       run_uuid=run_id, experiment_id=experiment_id, source_type=SourceType.to_string(SourceType.UNKNOWN),
                       source_name="", entry_point_name="", user_id=tags.get("mlflow.user", "unknown"),
                       status=RunStatus.to_string(RunStatus.RUNNING), start_time=start_time, end_time=None,
                       deleted_time=None, source_version="", lifecycle_stage=LifecycleStage.ACTIVE)
        run.tags = [m.SqlTag(key=k, value=v) for k, v in {"mlflow.runName": run_name, **tags}.items()]
        run.params = [m.SqlParam(key=k, value=v) for k, v in params.items()]
        with self.store.ManagedSessionMaker(read_only=False) as session:
            session.add(run)
        self.latest[run_id] = {}

    def log_dataset(self, run_id: str, name, digest, source_type, source, profile) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = Dataset(name=name, digest=digest, source_type=source_type, source=source, profile=profile)
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException as error:  # another process logged the same data set at once: link to it
            if "UNIQUE" not in str(error).upper() and "DUPLICATE" not in str(error).upper():
                raise
            self.client.log_inputs(run_id, datasets=inputs)

    def log_metrics(self, run_id: str, points) -> bool:
        """Insert (key, value, timestamp, step) points; False: not done, use log_batch."""
        from mlflow.utils.validation import _validate_metric_name

        rows, newest = [], {}
        for key, value, timestamp, step in points:
            if key not in self.valid_keys:
                try:
                    _validate_metric_name(key)
                except Exception:
                    return False
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
            return False  # duplicates within the batch: MLflow's log_batch drops them
        m, sa = self.models, self.sa
        try:
            with self.store.engine.begin() as connection:
                known = self.latest.get(run_id)
                if known is None:  # a run this writer did not create: read what it holds
                    table = m.SqlLatestMetric.__table__
                    found = connection.execute(sa.select(table.c.key, table.c.step, table.c.timestamp, table.c.value,
                                                         table.c.is_nan).where(table.c.run_uuid == run_id))
                    known = self.latest[run_id] = {r.key: (r.step, r.timestamp, r.value, r.is_nan) for r in found}
                connection.execute(sa.insert(m.SqlMetric.__table__), rows)
                self._update_latest(connection, run_id, known, newest)
        except sa.exc.IntegrityError:  # a point stored before (a retried batch): MLflow's path skips it
            self.latest.pop(run_id, None)
            return False
        return True

    def _update_latest(self, connection, run_id, known, newest) -> None:
        table, sa = self.models.SqlLatestMetric.__table__, self.sa
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
