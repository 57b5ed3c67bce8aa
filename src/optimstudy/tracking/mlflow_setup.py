"""How MLflow behaves inside optimstudy's processes: its log noise quietened, a lost server's
retries said on stderr, and its system-metrics sampler started and stopped (the writer's)."""
import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections import defaultdict

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


def start_system_metrics(tracking_uri: str, run_id: str, seconds: float, write=None):
    """A sampler of the machine for `run_id`, started; None where it cannot run (no psutil). With
    `write(points)` (the writer's direct writes) and no GPU library that MLflow would sample, our own
    SystemSampler: MLflow's metrics without MLflow's imports; else MLflow's SystemMetricsMonitor."""
    try:
        # on first use, and only when asked: psutil may be missing, MLflow's monitor is heavy
        import psutil

        psutil.cpu_percent()  # utilisation is measured between calls: this call starts the first interval
        if write is not None and not any(importlib.util.find_spec(name) for name in GPU_LIBRARIES):
            sampler = SystemSampler(write, seconds)
        else:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # as above: only when asked

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
        if not isinstance(sampler, SystemSampler):
            sampler.mlflow_logger.flush()


GPU_LIBRARIES = ("pynvml", "pyrsmi")  # where MLflow's monitor also samples GPUs (nvidia-ml-py, ROCm)


class SystemSampler:
    """The samples MLflow's SystemMetricsMonitor takes without a GPU (its CPUMonitor, DiskMonitor and
    NetworkMonitor, by psutil), under its names (system/cpu_utilization_percentage, ...) and steps (one
    per interval, from 0), averaged and rounded as it does them; stored by `write(points)`, the writer's
    direct writes. MLflow's monitor imports all of MLflow (~2 s of a writer's start) and asks the store
    for the run's status at every sample through a new client; the writer ends its sampler itself."""

    def __init__(self, write, seconds: float):
        import psutil  # on first use, as in start_system_metrics

        self.psutil, self.write, self.seconds = psutil, write, seconds
        self.samples, self.network, self.step = defaultdict(list), {}, 0
        sent = psutil.net_io_counters()
        self.network_start = (sent.bytes_recv / 1e6, sent.bytes_sent / 1e6)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True, name="SystemSampler")

    def start(self) -> None:
        self.thread.start()

    def collect_metrics(self) -> None:
        psutil = self.psutil
        memory, disk, network = psutil.virtual_memory(), psutil.disk_usage(os.sep), psutil.net_io_counters()
        for name, value in (("cpu_utilization_percentage", psutil.cpu_percent()),
                            ("system_memory_usage_megabytes", memory.used / 1e6),
                            ("system_memory_usage_percentage", memory.used / memory.total * 100),
                            ("disk_usage_percentage", disk.percent), ("disk_usage_megabytes", disk.used / 1e6),
                            ("disk_available_megabytes", disk.free / 1e6)):
            self.samples[name].append(value)
        self.network = {"network_receive_megabytes": network.bytes_recv / 1e6 - self.network_start[0],
                        "network_transmit_megabytes": network.bytes_sent / 1e6 - self.network_start[1]}

    def aggregate_metrics(self) -> dict:
        return {**{name: round(sum(values) / len(values), 1) for name, values in self.samples.items()},
                **self.network}

    def publish_metrics(self, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.write([(f"system/{name}", float(value), now, self.step) for name, value in metrics.items()])
        self.step += 1
        self.samples.clear()

    def finish(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def _sample(self) -> None:
        while not self.stopping.is_set():
            self.collect_metrics()
            if self.stopping.wait(self.seconds):
                return  # the last sample is stopped and stored by stop_system_metrics
            try:
                self.publish_metrics(self.aggregate_metrics())
            except Exception:  # noqa: BLE001  as MLflow's monitor: a run ended or deleted meanwhile stops it
                return
