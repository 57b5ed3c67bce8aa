"""MLflow internals behind the writer's direct SQL writes (sql_writes.py).

The writer loads this module in a process that must start without torch: standard library at
the top, MLflow inside the functions (the writer has imported it by then).
"""
import logging

# The alembic_version of the stores tests/tracking/test_writer.py compared row by row (the writer's direct
# writes against MLflow's own client): MLflow 3.17.2's schema and 3.18.0's (its three migrations add
# skill, issue and MCP tables only). Any other revision may have moved a
# column, so the writer then goes through MLflow's public client (sql_writes.FastWrites.for_client).
# After an MLflow upgrade that test fails until its revision is compared and added here.
VERIFIED_SCHEMA_REVISIONS = frozenset({"dc11669786a5", "f4a9b2c7d1e6"})


def sql_store(client):
    """The SqlAlchemyStore behind `client`, or None (a tracking server, or MLflow moved it).

    Private: `MlflowClient._tracking_client.store`. No public API hands out the store, and the
    direct writes need its engine and its experiments' artifact locations. If MLflow renames it:
    None, and the writer uses the public client (the same rows, ~10x the CPU per point);
    tests/compat/test_compat.py fails first."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # on first use: it imports mlflow

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def schema_revision(store) -> str | None:
    """The store's alembic revision: MLflow writes it as its migrations end, and refuses to open a
    store whose revision is not the one its version expects."""
    with store.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def schema_is_verified(store) -> bool:
    revision = schema_revision(store)
    if revision in VERIFIED_SCHEMA_REVISIONS:
        return True
    logging.getLogger("optimstudy.tracking.writer").debug(
        "MLflow schema revision %s is not one the direct SQL writes were compared on (%s): writing through "
        "MlflowClient", revision, ", ".join(sorted(VERIFIED_SCHEMA_REVISIONS)))
    return False


def check_tag_name(name: str) -> None:
    """Raise MlflowException where MLflow would refuse `name` as a run tag's key.

    Private: `mlflow.utils.validation._validate_tag_name`. The direct writes skip MLflow's
    log_batch, which is where the public API checks names; a name MLflow would refuse must not
    reach its tables. If it changes: an ImportError or TypeError is caught like a refused name, so
    every tag goes through log_batch (correct, slower); tests/compat/test_compat.py fails first."""
    from mlflow.utils.validation import _validate_tag_name  # on first use: it imports mlflow

    _validate_tag_name(name)


def check_metric_name(name: str) -> None:
    """Raise MlflowException where MLflow would refuse `name` as a metric's key.

    Private: `mlflow.utils.validation._validate_metric_name`, for the same reason and with the
    same fallback as check_tag_name."""
    from mlflow.utils.validation import _validate_metric_name  # on first use: it imports mlflow

    _validate_metric_name(name)
