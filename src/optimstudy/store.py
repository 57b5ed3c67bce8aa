"""The one reader of the tracking store: runs -> one tidy DataFrame. All MLflow reads live here.

Every report figure and every test that reads results goes through `load_runs`:

    from optimstudy.store import load_runs
    frame = load_runs(experiments=["quickstart"])
    frame.columns  # run_id, step, metric, value, then run columns: experiment, status,
                   # parent_run_id, run_name, study, trial, kind, phase, optimizer_label,
                   # objective_metric, objective_direction, lr_space, and every param
                   # (lr, seed, batch_size as numbers), device_name, dataset

Text columns that repeat on every point (run_id, metric and the run columns) are categorical,
so 2M points of 500 runs stay well under a gigabyte.

On a SQL store (SQLite, PostgreSQL) the metric points come in one query per 500 runs: a
per-run get_metric_history loop is two orders of magnitude slower at report sizes.
"""
import contextlib
import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from optimstudy.tracking import TAG_KIND, TAG_STUDY, TAG_TRIAL, _client, resolve_tracking_uri, sql_engine_url

NUMERIC_PARAMS = ("lr", "seed", "batch_size", "epochs", "steps", "accumulate", "threads", "eval_every",
                  "clip_grad_norm", "split_seed", "val_fraction", "diverge_factor")
BOOLEAN_PARAMS = ("zero_grad",)
# tag -> column; the optimstudy.* ones are written by the sweep on each trial (see coord contract 1)
RUN_TAGS = {"mlflow.parentRunId": "parent_run_id", "mlflow.runName": "run_name", TAG_STUDY: "study",
            TAG_TRIAL: "trial", TAG_KIND: "kind", "optimstudy.phase": "phase",
            "optimstudy.optimizer_label": "optimizer_label", "optimstudy.objective_metric": "objective_metric",
            "optimstudy.objective_direction": "objective_direction", "optimstudy.lr_space": "lr_space",
            "device.name": "device_name", "dataset": "dataset", "optimstudy.error": "error", "host": "host",
            "optimstudy.pid": "pid"}  # pid: a sweep parent run's process, for `optimstudy check`
RUN_COLUMNS = ["run_id", "experiment", "status", "start_time", "end_time", *RUN_TAGS.values()]
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
        points = _metric_points(tracking_uri, list(runs["run_id"]), metrics)
    # MLflow stores +-inf as +-float max (SQL has no infinity): a diverged loss is inf again here
    values = points["value"].to_numpy(copy=True)
    values[values >= FLOAT_MAX] = np.inf
    values[values <= -FLOAT_MAX] = -np.inf
    points["value"] = values
    runs = runs.rename(columns={c: f"param.{c}" for c in ("step", "metric", "value") if c in runs})
    run_ids = pd.Index(runs["run_id"])
    codes = run_ids.get_indexer(points["run_id"])  # every point's row in `runs` (-1: a run not listed)
    keep = codes >= 0
    points, codes = points[keep], codes[keep]
    if compact:  # the run columns repeat on every point: as categories they cost a byte or two each
        runs = runs.astype({c: "category" for c in runs.columns if c != "run_id"})
        runs["run_id"] = pd.Categorical(runs["run_id"])
        points = points.assign(metric=points["metric"].astype("category"))
    else:
        points = points.assign(metric=points["metric"].astype(object))
    # sorted by run, metric, step (figures slice a run's points by position): one lexsort on codes
    metric = pd.Categorical(points["metric"])
    metric_codes = np.argsort(np.argsort(np.asarray(metric.categories)))[metric.codes]
    order = np.lexsort((points["step"].to_numpy(), metric_codes, run_ids.argsort().argsort()[codes]))
    points, codes = points.iloc[order], codes[order]
    columns = {"run_id": runs["run_id"].take(codes).to_numpy() if not compact else runs["run_id"].array.take(codes),
               "step": points["step"].to_numpy(), "metric": points["metric"].array,
               "value": points["value"].to_numpy()}
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
    client = _client(tracking_uri)
    found = client.search_experiments(max_results=50000)
    names = {e.experiment_id: e.name for e in found}
    ids = [e.experiment_id for e in found if experiments is None or e.name in set(experiments)]
    if parent_run_id:
        clause = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        filter_string = f"{filter_string} and {clause}" if filter_string else clause
    rows, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string, max_results=50000, page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "experiment": names.get(run.info.experiment_id),
                   "status": run.info.status,
                   "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                   "end_time": pd.Timestamp(run.info.end_time, unit="ms", tz="UTC") if run.info.end_time else pd.NaT}
            row.update({column: run.data.tags.get(tag) for tag, column in RUN_TAGS.items()})
            row.update(run.data.params)
            rows.append(row)
        token = page.token
        if not token:
            break
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


def _metric_points(tracking_uri: str, run_ids: list[str], metrics=None) -> pd.DataFrame:
    columns = ["run_id", "step", "metric", "value"]
    if not run_ids:
        return pd.DataFrame({"run_id": pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype=object), "value": pd.Series(dtype="float64")})
    url = sql_engine_url(tracking_uri)
    if url is None:
        points = _metric_points_by_api(tracking_uri, run_ids)[columns]
        return points if metrics is None else points[points["metric"].isin(list(metrics))]
    import sqlalchemy as sa

    # the DB-API cursor directly: SQLAlchemy's row objects cost 4 µs per point (9 s for 2M points)
    engine = sa.create_engine(url)
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    runs, keys, steps, values, key_names = [], [], [], [], {}
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            where = f"run_uuid IN ({', '.join([mark] * len(chunk))})"
            bound = list(chunk)
            if metrics is not None:
                wanted = list(metrics) or [""]
                where += f" AND key IN ({', '.join([mark] * len(wanted))})"
                bound += wanted
            cursor.execute(f"SELECT run_uuid, key, step, CASE WHEN is_nan THEN NULL ELSE value END FROM metrics "
                           f"WHERE {where}", bound)
            while rows := cursor.fetchmany(50_000):
                run, key, step, value = zip(*rows)
                # strings as codes chunk by chunk: 2M Python strings would cost ~150 MB at once
                runs.append(pd.Index(chunk).get_indexer(run))
                keys.append(np.array([key_names.setdefault(k, len(key_names)) for k in key], dtype=np.int32))
                steps.append(np.array(step, dtype=np.int64))
                values.append(np.array(value, dtype=np.float64))  # NULL (is_nan) -> nan
                runs[-1] = np.asarray(chunk, dtype=object)[runs[-1]]
    finally:
        raw.close()
        engine.dispose()
    if not runs:
        return _metric_points(tracking_uri, [], metrics)
    metric = pd.Categorical.from_codes(np.concatenate(keys), categories=list(key_names))
    metric = metric.reorder_categories(sorted(key_names))  # codes in name order: sorting by them sorts by name
    return pd.DataFrame({"run_id": np.concatenate(runs), "step": np.concatenate(steps), "metric": metric,
                         "value": np.concatenate(values)})


def _metric_points_by_api(tracking_uri: str, run_ids: list[str]) -> pd.DataFrame:
    """For an http:// tracking server: the full history of each (run, metric), 8 requests at a time."""
    client = _client(tracking_uri)

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
    from pathlib import Path

    from optimstudy.errors import UsageError, near

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise UsageError(f"no tracking store at '{tracking_uri[len('sqlite:///'):]}'; run "
                         f"`optimstudy sweep {QUICKSTART}` first, or pass --tracking-uri")
    frame = load_runs(tracking_uri, experiments=experiments, metrics=metrics, compact=True)
    if "problem" in frame:
        trained = frame["problem"].notna() & (frame["kind"].astype(object).fillna("") != "sweep")
        if trained.any():
            return frame
    if experiments:
        known = sorted(set(load_runs(tracking_uri, with_metrics=False)["experiment"].dropna()))
        missing = ", ".join(f"'{name}'{near(name, known)}" for name in experiments)
        raise UsageError(f"no runs in experiment {missing} of '{tracking_uri}'; experiments with runs: "
                         f"{', '.join(known) or 'none'}. Run `optimstudy sweep {QUICKSTART}` to make some")
    raise UsageError(f"no runs in the tracking store '{tracking_uri}'; run `optimstudy sweep {QUICKSTART}` "
                     "first (or `optimstudy run`), then `optimstudy report`")


def experiment_ids(tracking_uri: str) -> dict[str, str]:
    """Experiment name -> id, active experiments only."""
    return {e.name: e.experiment_id for e in _client(tracking_uri).search_experiments(max_results=50000)}
