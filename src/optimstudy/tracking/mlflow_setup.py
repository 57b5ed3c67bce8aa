"""How MLflow behaves inside optimstudy's processes: its log noise quietened, a lost server's
retries said on stderr, and its system-metrics sampler started and stopped (the writer's)."""
import contextlib
import logging
import re
import sys

from optimstudy.tracking.connectivity import hide_passwords


def quiet_store_logs() -> None:
    """MLflow and alembic log every table creation and migration at INFO: noise for a user."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.db", "mlflow.tracking.fluent",
                 "mlflow.system_metrics"):  # "Started monitoring system metrics." for every run
        logging.getLogger(name).setLevel(logging.WARNING)


class _RetryReport(logging.Handler):
    """One line on stderr per retry when an MLflow server stops answering.

    MLflow retries a lost server for ~4 minutes (7 tries, waits doubling to 120 s) through
    urllib3, whose retry warnings go nowhere by default: a sweep would look hung. Retrying
    is right (a restarted server is picked up); doing it silently is not.
    """

    def __init__(self, server: str | None):
        super().__init__(logging.WARNING)
        self.server = server  # the tracking URI, for errors that do not name the host (a dropped connection)

    def emit(self, record):
        if not str(record.msg).startswith("Retrying") or len(record.args or ()) != 3:
            return
        retries, error, path = record.args
        where = re.search(r"host='([^']*)', port=(\d+)", str(error))
        server = f" at {where[1]}:{where[2]}" if where else f" at {self.server}" if self.server else ""
        reason = re.sub(r"\[Errno -?\d+\] ", "", str(error).rsplit(": ", 1)[-1].strip("')\""))
        left, endpoint = getattr(retries, "total", None), str(path).split("?")[0]
        print(f"optimstudy: the MLflow server{server} does not answer ({reason}) to {endpoint}; retrying"
              + (f", {left} more tr{'y' if left == 1 else 'ies'}" if isinstance(left, int) else ""),
              file=sys.stderr, flush=True)


def report_connection_retries(tracking_uri: str | None = None) -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(h, _RetryReport) for h in logger.handlers):
        logger.addHandler(_RetryReport(tracking_uri and hide_passwords(tracking_uri)))


def start_system_metrics(tracking_uri: str, run_id: str, seconds: float):
    """MLflow's sampler for `run_id`, started; None where it cannot run (no psutil)."""
    try:
        # on first use, and only when asked: psutil may be missing, MLflow's monitor is heavy
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # as above: only when asked

        psutil.cpu_percent()  # utilisation is measured between calls: this call starts the first interval
        sampler = SystemMetricsMonitor(run_id, sampling_interval=seconds, tracking_uri=tracking_uri)
        sampler.start()
        return sampler
    except Exception as error:  # noqa: BLE001  system metrics are a convenience: a run is never lost for them
        print(hide_passwords(f"optimstudy: no system metrics for run {run_id}: {type(error).__name__}: {error}"),
              file=sys.stderr, flush=True)
        return None


def stop_system_metrics(sampler) -> None:
    """Stop the sampler and store one last sample, so a run shorter than the interval has one too."""
    if sampler is None:
        return
    with contextlib.suppress(Exception):  # a deleted run: nothing to store into
        sampler.finish()
        sampler.collect_metrics()
        sampler.publish_metrics(sampler.aggregate_metrics())
        sampler.mlflow_logger.flush()
