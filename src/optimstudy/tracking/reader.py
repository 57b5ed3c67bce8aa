"""The one reader of the tracking store: runs -> one tidy DataFrame. All MLflow reads live here.

Every report figure and every test that reads results goes through `load_runs`:

    from optimstudy.tracking.reader import load_runs
    frame = load_runs(experiments=["quickstart"])
    frame.columns  # run_id, step, metric, value, then run columns: experiment, status,
                   # parent_run_id, run_name, study, trial, kind, phase, optimizer_label,
                   # objective_metric, objective_direction, lr_space, device_name, dataset,
                   # problem_task, problem_default_loss, problem_target, ... (optimstudy.facts)
                   # and every param (lr, seed, batch_size as numbers)

Text columns that repeat on every point (run_id, metric and the run columns) are categorical
with compact=True, so 1M points of 500 runs stay small (their size: docs/performance.md).

On a SQL store (SQLite, PostgreSQL) runs, tags and params come from MLflow's tables in three
queries and the points in one query per run, through the DB-API cursor: no MLflow import
(slow, with its store set-up), no Run objects, no run id string per point. A tracking server
(http://) is read through MlflowClient.
"""
import contextlib
import gc
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from optimstudy.errors import UsageError, near
from optimstudy.tag_names import RUN_TAG_COLUMNS
from optimstudy.tracking.client import (
    mlflow_client,
    resolve_tracking_uri,
    sql_engine_url,
)
from optimstudy.tracking.connectivity import hide_passwords, sqlite_path

NUMERIC_PARAMS = ("lr", "seed", "batch_size", "epochs", "steps", "accumulate", "threads", "eval_every",
                  "clip_grad_norm", "split_seed", "val_fraction", "diverge_factor", "update_norm_every")
BOOLEAN_PARAMS = ("zero_grad",)
RUN_COLUMNS = ["run_id", "experiment", "status", "start_time", "end_time", *RUN_TAG_COLUMNS.values()]
FLOAT_MAX = np.finfo(np.float64).max


def load_runs(tracking_uri: str | None = None, *, experiments=None, parent_run_id: str | None = None,
              filter_string: str = "", with_metrics: bool = True, metrics=None,
              compact: bool = False) -> pd.DataFrame:
    """Long table of (run, step, metric, value) joined with each run's params and tags.

    `experiments`: names (None = all); `parent_run_id`: only that sweep's children; `metrics`:
    only these metric names (None = all). With with_metrics=False: one row per run (no
    step/metric/value columns). compact=True: text columns categorical (what the report reads).
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    with _collector_paused():
        runs = run_table(tracking_uri, experiments, parent_run_id, filter_string)
        if not with_metrics:
            return runs
        codes, steps, metric, values = _metric_points(tracking_uri, list(runs["run_id"]), metrics)
    # MLflow stores +-inf as +-float max (SQL has no infinity): a diverged loss is inf again here
    values[values >= FLOAT_MAX] = np.inf
    values[values <= -FLOAT_MAX] = -np.inf
    runs = runs.rename(columns={c: f"param.{c}" for c in ("step", "metric", "value") if c in runs})
    # sorted by run id, metric, step (figures slice a run's points by position): one lexsort on codes
    # (the metric's categories are in name order, so its codes sort by name)
    run_rank = np.asarray(pd.Index(runs["run_id"]).argsort().argsort())
    order = np.lexsort((steps, metric.codes, run_rank[codes]))
    codes, steps, metric, values = codes[order], steps[order], metric.take(order), values[order]
    if compact:  # the run columns repeat on every point: as categories they cost a byte or two each
        runs = runs.astype({c: "category" for c in runs.columns if c != "run_id"})
        runs["run_id"] = pd.Categorical(runs["run_id"])
        columns = {"run_id": runs["run_id"].array.take(codes), "step": steps, "metric": metric, "value": values}
    else:
        columns = {"run_id": runs["run_id"].to_numpy()[codes], "step": steps, "metric": metric.astype(object),
                   "value": values}
    for column in runs.columns:
        if column != "run_id":
            columns[column] = runs[column].array.take(codes)
    return pd.DataFrame(columns)


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while millions of row tuples are made: each generation-0
    collection scans every live object, and they made reading 1M points 2.6x slower (16 s vs 6 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_table(tracking_uri, experiments=None, parent_run_id=None, filter_string="") -> pd.DataFrame:
    """One row per active run: run_id, experiment, status, times, the RUN_TAG_COLUMNS columns, every param."""
    url = sql_engine_url(tracking_uri)
    rows = None
    if url is not None and not filter_string:
        try:
            rows = _by_sql_unless_schema_differs(_run_rows_by_sql, url, experiments, parent_run_id)
        except _NoStoreYet:
            rows = []
    if rows is None:
        rows = _run_rows_by_api(tracking_uri, experiments, parent_run_id, filter_string)
    frame = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    for column in NUMERIC_PARAMS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column].replace("None", np.nan), errors="coerce")
    for column in BOOLEAN_PARAMS:
        if column in frame:
            frame[column] = frame[column].map({"True": True, "False": False})
    if "trial" in frame:
        frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce")
    return frame


def _run_row(run_id, experiment, status, start_ms, end_ms, tags: dict, params: dict) -> dict:
    row = {"run_id": run_id, "experiment": experiment, "status": status,
           "start_time": pd.Timestamp(start_ms, unit="ms", tz="UTC"),
           "end_time": pd.Timestamp(end_ms, unit="ms", tz="UTC") if end_ms else pd.NaT}
    row.update({column: tags.get(tag) for tag, column in RUN_TAG_COLUMNS.items()})
    row.update(params)
    return row


def _run_rows_by_api(tracking_uri, experiments, parent_run_id, filter_string) -> list[dict]:
    client = mlflow_client(tracking_uri)
    found = client.search_experiments(max_results=50000)
    names = {e.experiment_id: e.name for e in found}
    ids = [e.experiment_id for e in found if experiments is None or e.name in set(experiments)]
    if parent_run_id:
        clause = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        filter_string = f"{filter_string} and {clause}" if filter_string else clause
    rows, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string, max_results=50000, page_token=token)
        rows += [_run_row(run.info.run_id, names.get(run.info.experiment_id), run.info.status, run.info.start_time,
                          run.info.end_time, run.data.tags, run.data.params) for run in page]
        token = page.token
        if not token:
            break
    return rows


def assert_intact(tracking_uri: str) -> None:
    """A UsageError "the store is corrupt (FILE: ERROR)" when an SQLite store fails SQLite's own
    check. Asked only when a read fails or finds nothing where something should be: the check
    reads the whole file (about a second per few hundred MB)."""
    url = sql_engine_url(tracking_uri)
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            found = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        problem = None if found == ["ok"] else "; ".join(found[:3])
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        problem = str(error)
    if problem:
        raise UsageError(f"the store is corrupt ({path}: {problem}); restore it from a backup (`sqlite3 {path} "
                         "'.recover'` may save what is left of it), or pass another --tracking-uri")


class _NoStoreYet(Exception):
    """No MLflow store to read at a SQL URL: the SQLite file is missing, or the database holds no
    finished MLflow store (another command is creating it)."""


def _by_sql_unless_schema_differs(read, url, *args):
    """`read(url, *args)`, or None where MLflow's tables are not the ones read here (another MLflow
    version): the caller then reads through MlflowClient, slower but always right.

    Raises _NoStoreYet where there is no finished store: never MlflowClient then, since making one
    creates and migrates the store, without the lock that ensure_store holds for that, at the same
    moment as the command that is creating it (one of the two then fails)."""
    try:
        return read(url, *args)
    except _NoStoreYet:
        raise
    except Exception:  # the DB-API driver's own errors (sqlite3, psycopg): no common base class
        assert_intact(url)  # a damaged file fails like a missing table: say which it is
        state = _store_state(url)
        if state == "mlflow":
            return None
        if state == "empty":
            raise _NoStoreYet(url) from None
        raise


def _store_state(url: str) -> str:
    """What the database holds: "mlflow" where it answers and MLflow has migrated its tables there
    (a failed query then means a different schema, not a lost store); "empty" where it answers but
    holds no finished store; "unreachable" on any failure to reach it (the original error is then
    the one to show)."""
    try:
        with _sql_cursor(url) as (cursor, _):
            cursor.execute("SELECT 1")
            try:
                cursor.execute("SELECT version_num FROM alembic_version")  # written as MLflow's migrations end
                return "mlflow" if cursor.fetchall() else "empty"
            except Exception:  # noqa: BLE001  no such table
                return "empty"
    except _NoStoreYet:
        return "empty"
    except Exception:  # noqa: BLE001
        return "unreachable"


@contextlib.contextmanager
def _sql_cursor(url: str):
    """(DB-API cursor, its placeholder) on the store's database: reading through MlflowClient costs
    MLflow's slow imports and store set-up, and its Run objects a cost per run (docs/performance.md)."""
    import sqlalchemy as sa  # on first use: it imports sqlalchemy

    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite" and not Path(engine.url.database or "").is_file():
        raise _NoStoreYet(url)  # connecting would create an empty database file: a reader never writes
    raw = engine.raw_connection()
    try:
        yield raw.cursor(), "?" if engine.dialect.paramstyle == "qmark" else "%s"
    finally:
        raw.close()
        engine.dispose()


def _run_rows_by_sql(url, experiments, parent_run_id) -> list[dict]:
    """What _run_rows_by_api reads (active runs of active experiments, newest first), straight from
    MLflow's tables."""
    with _sql_cursor(url) as (cursor, mark):
        cursor.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'")
        names = {str(i): name for i, name in cursor.fetchall()}
        ids = [i for i, name in names.items() if experiments is None or name in set(experiments)]
        if not ids:
            return []
        where = f"r.lifecycle_stage = 'active' AND r.experiment_id IN ({', '.join([mark] * len(ids))})"
        bound = [int(i) for i in ids]
        if parent_run_id:
            where += (f" AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' "
                      f"AND value = {mark})")
            bound.append(parent_run_id)
        cursor.execute(f"SELECT r.run_uuid, r.experiment_id, r.status, r.start_time, r.end_time, r.name FROM runs r "
                       f"WHERE {where} ORDER BY r.start_time DESC, r.run_uuid", bound)
        runs = cursor.fetchall()
        tags, params = {}, {}
        wanted = list(RUN_TAG_COLUMNS)
        cursor.execute(f"SELECT t.run_uuid, t.key, t.value FROM tags t JOIN runs r ON t.run_uuid = "
                       f"r.run_uuid WHERE {where} AND t.key IN ({', '.join([mark] * len(wanted))})",
                       bound + wanted)
        for run_id, key, value in cursor.fetchall():
            tags.setdefault(run_id, {})[key] = value
        cursor.execute(f"SELECT p.run_uuid, p.key, p.value FROM params p JOIN runs r ON p.run_uuid = "
                       f"r.run_uuid WHERE {where}", bound)
        for run_id, key, value in cursor.fetchall():
            params.setdefault(run_id, {})[key] = value
    rows = []
    for run_id, experiment_id, status, start_ms, end_ms, name in runs:
        run_tags = tags.get(run_id, {})
        if name and "mlflow.runName" not in run_tags:
            run_tags["mlflow.runName"] = name
        rows.append(_run_row(run_id, names.get(str(experiment_id)), status, start_ms, end_ms, run_tags,
                             params.get(run_id, {})))
    return rows


def _metric_points(tracking_uri: str, run_ids: list[str], metrics=None) -> tuple:
    """(run codes: each point's index in run_ids, steps, metric as a Categorical whose categories are
    in name order, values) of the runs' metric points, NaN where MLflow stored is_nan."""
    url = sql_engine_url(tracking_uri)
    if url is not None and run_ids:
        try:
            points = _by_sql_unless_schema_differs(_metric_points_by_sql, url, run_ids, metrics)
        except _NoStoreYet:  # replaced since its runs were read
            points, run_ids = None, []
        if points is not None:
            return points
    points = _metric_points_by_api(tracking_uri, run_ids) if run_ids else \
        pd.DataFrame({"run_id": [], "step": [], "metric": [], "value": []})
    if metrics is not None:
        points = points[points["metric"].isin(list(metrics))]
    metric = pd.Categorical(points["metric"].astype(str), categories=sorted(set(points["metric"].astype(str))))
    return (np.asarray(pd.Index(run_ids).get_indexer(points["run_id"]), dtype=np.int64),
            points["step"].to_numpy(dtype=np.int64), metric, points["value"].to_numpy(dtype=np.float64, copy=True))


def _metric_points_by_sql(url: str, run_ids: list[str], metrics=None) -> tuple:
    """What _metric_points returns, straight from MLflow's metrics table.

    One query per run, through the DB-API cursor: no run id string per point (1M of them are
    slow to make and match), and SQLAlchemy's row objects would add a cost per point
    (docs/performance.md)."""
    codes, keys, steps, values, key_names = [], [], [], [], {}
    with _sql_cursor(url) as (cursor, mark):
        where = f"run_uuid = {mark}"
        wanted = []
        if metrics is not None:
            wanted = list(metrics) or [""]
            where += f" AND key IN ({', '.join([mark] * len(wanted))})"
        query = f"SELECT key, step, CASE WHEN is_nan THEN NULL ELSE value END FROM metrics WHERE {where}"
        for code, run_id in enumerate(run_ids):
            cursor.execute(query, [run_id, *wanted])
            rows = cursor.fetchall()
            if not rows:
                continue
            key, step, value = zip(*rows)
            codes.append(np.full(len(rows), code, dtype=np.int64))
            local, names = pd.factorize(np.asarray(key, dtype=object))  # a few names, hashed in C
            keys.append(np.array([key_names.setdefault(k, len(key_names)) for k in names], dtype=np.int32)[local])
            steps.append(np.array(step, dtype=np.int64))
            values.append(np.array(value, dtype=np.float64))  # NULL (is_nan) -> nan
    if not codes:
        return (np.array([], dtype=np.int64), np.array([], dtype=np.int64), pd.Categorical([]),
                np.array([], dtype=np.float64))
    metric = pd.Categorical.from_codes(np.concatenate(keys), categories=list(key_names))
    metric = metric.reorder_categories(sorted(key_names))  # codes in name order: sorting by them sorts by name
    return np.concatenate(codes), np.concatenate(steps), metric, np.concatenate(values)


def _metric_points_by_api(tracking_uri: str, run_ids: list[str]) -> pd.DataFrame:
    """For an http:// tracking server: the full history of each (run, metric), 8 requests at a time."""
    client = mlflow_client(tracking_uri)

    def history(run_id):
        keys = client.get_run(run_id).data.metrics.keys()
        return [(run_id, m.step, m.key, m.value) for key in keys for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(8) as pool:
        rows = [row for rows in pool.map(history, run_ids) for row in rows]
    return pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])


QUICKSTART = "experiments/quickstart.toml"


def load_study(tracking_uri: str, experiments=None, metrics=None) -> pd.DataFrame:
    """The store's trained runs as a compact tidy frame, or a UsageError saying what to run first.

    Reading never creates a store: a missing SQLite file is an error, not an empty store.
    """
    database = sqlite_path(tracking_uri)
    if database is not None and not database.exists():
        raise UsageError(f"no tracking store at '{database}'; run "
                         f"`optimstudy sweep {QUICKSTART}` first, or pass --tracking-uri")
    frame = load_runs(tracking_uri, experiments=experiments, metrics=metrics, compact=True)
    if "problem" in frame:
        trained = frame["problem"].notna() & (frame["kind"].astype(object).fillna("") != "sweep")
        if trained.any():
            return frame
    assert_intact(tracking_uri)  # nothing to report from a store that exists: is it damaged?
    if experiments:
        known = sorted(set(load_runs(tracking_uri, with_metrics=False)["experiment"].dropna()))
        missing = ", ".join(f"'{name}'{near(name, known)}" for name in experiments)
        raise UsageError(f"no runs in experiment {missing} of '{hide_passwords(tracking_uri)}'; "
                         "experiments with runs: "
                         f"{', '.join(known) or 'none'}. Run `optimstudy sweep {QUICKSTART}` to make some")
    raise UsageError(f"no runs in the tracking store '{hide_passwords(tracking_uri)}'; run "
                     f"`optimstudy sweep {QUICKSTART}` "
                     "first (or `optimstudy run`), then `optimstudy report`")


def experiment_ids(tracking_uri: str) -> dict[str, str]:
    """Experiment name -> id, active experiments only."""
    return {e.name: e.experiment_id for e in mlflow_client(tracking_uri).search_experiments(max_results=50000)}
