"""MLflow internals behind the writer's direct SQL writes (sql_writes.py) and its stores made from a
template (new_sqlite_store).

The writer loads this module in a process that must start without torch, and on a store it can
write directly, without MLflow: standard library at the top, SQLAlchemy and MLflow inside the
functions. tests/tracking/test_writer.py compares every row these write with MLflow's own.
"""
import contextlib
import functools
import importlib.metadata
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

# The alembic_version of the stores tests/tracking/test_writer.py compared row by row (the writer's direct
# writes against MLflow's own client): MLflow 3.17.2's schema and 3.18.0's (its three migrations add
# skill, issue and MCP tables only). Any other revision may have moved a
# column, so the writer then goes through MLflow's public client (sql_writes.FastWrites.for_client).
# After an MLflow upgrade that test fails until its revision is compared and added here.
VERIFIED_SCHEMA_REVISIONS = frozenset({"dc11669786a5", "f4a9b2c7d1e6"})


@functools.cache
def tables():
    """MLflow's tables that the direct writes touch, as SQLAlchemy Core sees them: the columns by
    name only (MLflow's ORM models, `mlflow.store.tracking.dbmodels.models`, import all of MLflow).
    Every column MLflow fills by default is given a value by the writes."""
    import sqlalchemy as sa  # on first use

    columns = {
        "experiments": "experiment_id name workspace artifact_location lifecycle_stage creation_time last_update_time",
        "experiment_tags": "experiment_id key value",
        "runs": "run_uuid name source_type source_name entry_point_name user_id status start_time end_time "
                "deleted_time source_version lifecycle_stage artifact_uri experiment_id",
        "tags": "run_uuid key value",
        "params": "run_uuid key value",
        "metrics": "run_uuid key value timestamp step is_nan",
        "latest_metrics": "run_uuid key value timestamp step is_nan",
        "datasets": "dataset_uuid experiment_id name digest dataset_source_type dataset_source dataset_schema "
                    "dataset_profile",
        "inputs": "input_uuid source_type source_id destination_type destination_id",
        "input_tags": "input_uuid name value",
    }
    return {name: sa.table(name, *map(sa.column, names.split())) for name, names in columns.items()}


# What MLflow writes into a new run's row (mlflow.entities: SourceType.UNKNOWN, RunStatus.RUNNING,
# LifecycleStage.ACTIVE) and an experiment's workspace when workspaces are off (MLflow 3.18).
SOURCE_UNKNOWN, RUNNING, ACTIVE, DEFAULT_WORKSPACE = "UNKNOWN", "RUNNING", "active", "default"


def run_artifact_uri(experiment_location: str, run_id: str) -> str:
    """`mlflow.utils.uri.append_to_uri_path(location, run_id, "artifacts")`, without importing MLflow
    for the locations optimstudy makes (a file URI or a path, no query or fragment)."""
    if "?" in experiment_location or "#" in experiment_location or "\\" in experiment_location:
        from mlflow.utils.uri import append_to_uri_path  # on first use: it imports mlflow

        return append_to_uri_path(experiment_location, run_id, "artifacts")
    return f"{experiment_location.rstrip('/')}/{run_id}/artifacts"


# ---- a new SQLite store from a template --------------------------------------------------------
# MLflow makes a new store by running its ~100 migrations (2-5 s on 2 busy cores, after 3 s of
# imports). The first store MLflow makes on a machine is kept, empty, as a template for its version
# (in the user's cache folder); the next new store is a copy of it, its Default experiment made as
# MLflow would have made it from here. The writer then needs no MLflow at all (docs/performance.md).

def _cached(kind: str) -> Path | None:
    """What is kept for the installed MLflow in the user's cache folder; None where MLflow's own
    settings change what a new store holds."""
    if any(name in os.environ for name in ("MLFLOW_DEFAULT_ARTIFACT_ROOT", "MLFLOW_ENABLE_WORKSPACES",
                                             "MLFLOW_WORKSPACE")):
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    try:
        version = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(cache) / "optimstudy" / f"mlflow-{version}-{kind}"


def template_path() -> Path | None:
    """Where the empty store of the installed MLflow is kept."""
    return _cached("store.db")


def current_revision() -> str | None:
    """The schema revision the installed MLflow opens (it refuses any other), as remembered when it
    last opened a store here (remember_current_revision); None: not known without importing MLflow."""
    path = _cached("revision")
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def remember_current_revision(revision: str) -> None:
    """Called once MLflow itself has opened a store of `revision`: the revision it expects."""
    path = _cached("revision")
    if path is None or current_revision() == revision:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(revision)
        os.replace(partial, path)


def keep_as_template(database: Path) -> None:
    """Keep `database`, a store MLflow has just made and nothing has written to, as the template
    (SQLite's backup API: a consistent copy, then one rename, so readers never see half of it)."""
    target = template_path()
    if target is None or target.exists():
        return
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(database)) as source, \
                contextlib.closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
        os.replace(partial, target)
    except (OSError, sqlite3.Error):  # no cache folder to write: every new store is made by MLflow
        with contextlib.suppress(OSError):
            partial.unlink()


def new_sqlite_store(database: Path) -> bool:
    """Make the store `database` (which does not exist) from the template; False: no template (MLflow
    makes it). The Default experiment (id 0) gets what MLflow gives it: a location in the folder
    `mlruns` of the working directory (MLflow's default artifact root) and the time of creation."""
    template = template_path()
    if template is None or not template.is_file():
        return False
    partial = database.with_name(f".{database.name}.{os.getpid()}.partial")
    try:
        with contextlib.closing(sqlite3.connect(template)) as source, \
                contextlib.closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
            now = int(time.time() * 1000)
            with copy:
                copy.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                             "WHERE experiment_id = 0", (str(Path.cwd() / "mlruns" / "0"), now, now))
        os.link(partial, database)  # never over a store another process made meanwhile
    except FileExistsError:
        pass
    except (OSError, sqlite3.Error):
        return False
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return True


def sql_store(client):
    """The SqlAlchemyStore behind `client`, or None (a tracking server, or MLflow moved it).

    Private: `MlflowClient._tracking_client.store`. No public API hands out the store, and the
    direct writes need its engine and its experiments' artifact locations. If MLflow renames it:
    None, and the writer uses the public client (the same rows, ~10x the CPU per point);
    tests/compat/test_compat.py fails first."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # on first use: it imports mlflow

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def schema_revision(engine) -> str | None:
    """The alembic revision of the store behind `engine` (SQLAlchemy's): MLflow writes it as its
    migrations end, and refuses to open a store whose revision is not the one its version expects."""
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def schema_is_verified(engine) -> bool:
    revision = schema_revision(engine)
    if revision in VERIFIED_SCHEMA_REVISIONS:
        return True
    logging.getLogger("optimstudy.tracking.writer").debug(
        "MLflow schema revision %s is not one the direct SQL writes were compared on (%s): writing through "
        "MlflowClient", revision, ", ".join(sorted(VERIFIED_SCHEMA_REVISIONS)))
    return False


# Names that MLflow's checks accept on every system (letters, digits and _ in parts joined by one of
# ./-, at most 250 characters): these skip the checks, whose import is all of MLflow's (~1.5 s of a
# writer's start); any other name is checked by MLflow itself. tests/compat/test_compat.py holds
# MLflow's checks to every name of this form that optimstudy writes, and to odd ones.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+(?:[./-][A-Za-z0-9_]+)*")


def is_plain_name(name) -> bool:
    return isinstance(name, str) and len(name) <= 250 and PLAIN_NAME.fullmatch(name) is not None


def check_tag_name(name: str) -> None:
    """Raise MlflowException where MLflow would refuse `name` as a run tag's key.

    Private: `mlflow.utils.validation._validate_tag_name`. The direct writes skip MLflow's
    log_batch, which is where the public API checks names; a name MLflow would refuse must not
    reach its tables. If it changes: an ImportError or TypeError is caught like a refused name, so
    every tag goes through log_batch (correct, slower); tests/compat/test_compat.py fails first."""
    if is_plain_name(name):
        return
    from mlflow.utils.validation import _validate_tag_name  # on first use: it imports mlflow

    _validate_tag_name(name)


def check_metric_name(name: str) -> None:
    """Raise MlflowException where MLflow would refuse `name` as a metric's key.

    Private: `mlflow.utils.validation._validate_metric_name`, for the same reason and with the
    same fallback as check_tag_name."""
    if is_plain_name(name):
        return
    from mlflow.utils.validation import _validate_metric_name  # on first use: it imports mlflow

    _validate_metric_name(name)
