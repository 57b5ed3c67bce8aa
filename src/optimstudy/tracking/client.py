"""MLflow's store as optimstudy uses it: where it is, creating it once, one client per store,
experiments (never silently restoring a deleted one), the tags every run carries, ending orphaned runs.

    from optimstudy.tracking.client import resolve_tracking_uri, experiment_id
    uri = resolve_tracking_uri()             # --tracking-uri, $MLFLOW_TRACKING_URI, or ./mlruns/mlflow.db
    experiment_id(uri, "demo")
"""
import functools
import os
from pathlib import Path
from urllib.parse import urlparse

from optimstudy.errors import UsageError
from optimstudy.tag_names import TAG_ERROR
from optimstudy.tracking.connectivity import check_password_encoded, hide_passwords, probe_store, sqlite_path
from optimstudy.tracking.locks import exclusive
from optimstudy.tracking.mlflow_setup import quiet_store_logs, report_connection_retries
from optimstudy.tracking.writer import (
    DeletedExperiment,
    end_run,
    find_or_create_experiment,
    find_or_create_experiment_directly,
)

DEFAULT_STORE_DIR = "mlruns"
DEFAULT_EXPERIMENT = "optimstudy"

quiet_store_logs()
report_connection_retries()  # a server that stops answering mid-sweep is said, not silent


# ---- where the store is ------------------------------------------------------------------

def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db (SQLite)."""
    source = "--tracking-uri" if uri else "$MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_password_encoded(uri, source)
        return uri
    return f"sqlite:///{(Path.cwd() / DEFAULT_STORE_DIR / 'mlflow.db').as_posix()}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store: mlruns/artifacts. Servers choose their own."""
    database = sqlite_path(tracking_uri)
    return None if database is None else (database.parent / "artifacts").resolve().as_uri()


def ensure_store(tracking_uri: str, writer=None) -> None:
    """Create the store once, before any worker starts: under a lock, so that two commands starting
    at once on a fresh store do not both run MLflow's migrations (SQLite corrupts, "table exists").
    With `writer` (started, see writer.py), the writer process creates it (from a template, or by
    MLflow's migrations, seconds of them, on the other core) and this process needs no MLflow."""

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
                mlflow_client(tracking_uri).search_experiments(max_results=1)
                return
            writer.open_store()
            writer.wait_ready()
    except Exception as error:  # noqa: BLE001  whatever the store says, said as a usage error
        raise UsageError(hide_passwords(f"tracking store '{tracking_uri}' cannot be opened: "
                                        f"{str(error)[:300]}")) from None


@functools.lru_cache(maxsize=8)  # one client per store and process, not one per trial: building one takes time
def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient  # on first use: it imports mlflow

    return MlflowClient(tracking_uri)


@functools.lru_cache(maxsize=8)  # one per store and process, asked once the store exists (ensure_store)
def direct_writes(tracking_uri: str):
    """Direct SQL writes for this process's few writes to the store (a sweep's parent run and notes, an
    experiment), without MLflow's imports (sql_writes.FastWrites.for_uri: a SQL store of the schema
    revision the installed MLflow opens); None: MLflow's client makes them."""
    from optimstudy.tracking.sql_writes import FastWrites  # on first use: it imports sqlalchemy

    return FastWrites.for_uri(tracking_uri, pooled=False)


def once_more_if_raced(call, *args, **kwargs):
    """`call(...)`, and once more where another process wrote the same row at the same moment.
    MLflow's SQL store writes a tag or a data set by looking it up, then inserting it: two sweeps of
    one study that end together both insert the experiment's note, two workers the same data set,
    and the loser fails on the unique key. Tried again, it finds the row."""
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    try:
        return call(*args, **kwargs)
    except MlflowException as error:
        if "UNIQUE" not in str(error).upper() and "DUPLICATE" not in str(error).upper():
            raise
        return call(*args, **kwargs)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, created (safely against a concurrent creator) when missing; a usage
    error when it was deleted (never restored silently, see writer.DeletedExperiment)."""
    location = artifact_location(tracking_uri, name)
    try:
        fast = direct_writes(tracking_uri)
        found = fast and find_or_create_experiment_directly(fast, name, location)
        return found or find_or_create_experiment(mlflow_client(tracking_uri), name, location)
    except DeletedExperiment as deleted:
        raise UsageError(deleted.message(tracking_uri)) from None


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    root = artifact_root(tracking_uri)
    return f"{root}/{experiment}" if root else None


def param_text(value) -> str:
    text = "None" if value is None else str(value)
    return text[:6000]


def end_orphaned_runs(tracking_uri: str, run_ids, reason: str) -> list[str]:
    """End RUNNING runs whose process is gone as KILLED; returns the ids changed."""
    run_ids = list(run_ids)
    if not run_ids:  # every worker asks when its queue runs dry: no client (MLflow's slow imports) for nothing
        return []
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    client = mlflow_client(tracking_uri)
    changed = []
    for run_id in run_ids:
        try:
            status = client.get_run(run_id).info.status
        except MlflowException:  # never stored: its worker and the writer died before the writer created it
            continue
        if status == "RUNNING":
            end_run(client, run_id, "KILLED", {TAG_ERROR: reason})
            changed.append(run_id)
    return changed


def sql_engine_url(tracking_uri: str) -> str | None:
    scheme = urlparse(tracking_uri).scheme
    if scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        return tracking_uri
    return None


