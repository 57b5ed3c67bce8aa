"""The MLflow writer process: `python -P .../optimstudy/writer.py TRACKING_URI FD`.

It runs as a plain script and imports nothing from optimstudy, so it starts without torch
(~170 MB and ~1.4 s here, against ~900 MB and 3-5 s through the package).

Receives ("open", run_id, system_metrics_s), ("metrics", run_id, points), ("end", run_id, status, tags)
and ("stop", None) over the socket FD; answers ("ready"|"ok"|"error", run_id, detail). When the training
process dies, the socket closes and the runs it left open are ended as KILLED. A run that
lost a batch of points is ended FAILED, never FINISHED.

With `system_metrics_s`, the writer also samples the machine for that run every so many seconds
through MLflow's own SystemMetricsMonitor (system/cpu_utilization_percentage, memory, disk,
network; GPU utilisation and memory with nvidia-ml-py): CPU and memory are machine-wide, so a
sampler here sees what one in the training process would, and the training thread pays nothing.

The bottom of this file is the training process's side: `start_writer(uri)` starts (once per
store) the process and returns its handle, which tracking.MlflowLogger sends its points through.
"""
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

BATCH_POINTS = 1000  # MLflow's log_batch takes at most 1,000 metrics per call


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
        logger.addHandler(_RetryReport(tracking_uri and re.sub(r"(//[^/:@]+:)[^/@]*@", r"\1***@", tracking_uri)))


def serve(tracking_uri: str, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; we must flush
    os.nice(10)  # yield the cores to training threads; we only need the gaps between their steps
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    quiet_store_logs()
    report_connection_retries(tracking_uri)

    client = MlflowClient(tracking_uri)
    reply(conn, ("ready", None, None))
    open_runs: set[str] = set()
    samplers: dict[str, object] = {}  # run_id -> its SystemMetricsMonitor
    lost: dict[str, str] = {}  # run_id -> why its first lost batch failed
    held = None  # a message read ahead while merging metric messages, handled next
    while True:
        message, held = held or receive(conn), None
        if message is None:
            for run_id in open_runs:  # the training process is gone without closing its runs
                stop_system_metrics(samplers.pop(run_id, None))
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, "optimstudy.error", "the training process died mid-run")
                    client.set_terminated(run_id, "KILLED")
            return
        kind, run_id = message[0], message[1]
        try:
            if kind == "open":
                open_runs.add(run_id)
                if len(message) > 2 and message[2]:
                    samplers[run_id] = start_system_metrics(tracking_uri, run_id, message[2])
            elif kind == "metrics":
                open_runs.add(run_id)
                points = list(message[2])
                # behind? merge what is already waiting for the same run: one transaction, not many
                while len(points) < BATCH_POINTS and conn.poll():
                    held = receive(conn)
                    if held is None or held[0] != "metrics" or held[1] != run_id:
                        break
                    points.extend(held[2])
                    held = None
                for start in range(0, len(points), BATCH_POINTS):
                    client.log_batch(run_id, metrics=[Metric(*p) for p in points[start:start + BATCH_POINTS]])
            elif kind == "end":
                _, _, status, tags = message
                if run_id in lost:
                    status = "FAILED" if status == "FINISHED" else status
                    why = tags.get("optimstudy.error")
                    tags = {**tags, "optimstudy.error": "; ".join(
                        filter(None, [why, f"metric points were lost: {lost.pop(run_id)}"]))}
                for key, value in tags.items():
                    client.set_tag(run_id, key, str(value)[:5000])
                client.set_terminated(run_id, status)
                open_runs.discard(run_id)
                reply(conn, ("ok", run_id, None))
                # after the answer, so the training process does not wait for it (~20 ms a run):
                # the last sample is stored into the ended run before the next message is read
                stop_system_metrics(samplers.pop(run_id, None))
            elif kind == "stop":
                for sampler in samplers.values():
                    stop_system_metrics(sampler)
                reply(conn, ("ok", None, None))
                return
        except Exception as error:  # reported back to the training process at the run's end
            detail = f"{type(error).__name__}: {str(error)[:1000]}"
            if kind == "metrics":
                if run_id in lost:
                    continue  # one report per run: unread reports would fill the socket and block us both
                lost[run_id] = detail
            reply(conn, ("error", run_id, detail))
            if kind == "end":  # the training process waits for this answer (a deleted run ends here)
                reply(conn, ("ok", run_id, None))
                stop_system_metrics(samplers.pop(run_id, None))


def start_system_metrics(tracking_uri: str, run_id: str, seconds: float):
    """MLflow's sampler for `run_id`, started; None where it cannot run (no psutil)."""
    try:
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        psutil.cpu_percent()  # utilisation is measured between calls: this call starts the first interval
        sampler = SystemMetricsMonitor(run_id, sampling_interval=seconds, tracking_uri=tracking_uri)
        sampler.start()
        return sampler
    except Exception as error:  # system metrics are a convenience: a run is never lost for them
        print(f"optimstudy: no system metrics for run {run_id}: {type(error).__name__}: {error}",
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


def reply(conn: Connection, message) -> None:
    """Answer the training process; if it is gone (killed), the next receive() sees that and ends
    its runs: a broken pipe here is not an error to print."""
    with contextlib.suppress(OSError):
        conn.send(message)


def receive(conn: Connection):
    """The next message, or None once the training process has closed its end (or died)."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


# ---- the training process's side: one writer per tracking store, and its pipe ----------

class WriterDied(RuntimeError):
    """The writer process is gone (killed, out of memory): points it had not stored are lost."""


class _Writer:
    """One per training process, started on first use and shared by its runs.

    A plain subprocess over a socket pair, not multiprocessing: spawning through
    multiprocessing re-imports the caller's __main__, which breaks unguarded user scripts.
    """

    def __init__(self, tracking_uri: str):
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__)), tracking_uri, str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.tracking_uri = tracking_uri
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the writer has imported MLflow, so that its start-up never overlaps training."""
        if not self.ready:
            kind, _, _ = self._recv()
            self.ready = kind == "ready"

    def _recv(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError:  # BrokenPipeError: the writer is gone
            raise self._died() from None

    def _died(self) -> WriterDied:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return WriterDied(f"the MLflow writer process exited (code {self.process.poll()})")

    def end_run(self, run_id: str, status: str, tags: dict) -> None:
        self.send(("end", run_id, status, tags))
        problems = []
        while True:
            kind, acked_run, detail = self._recv()
            if kind == "error":
                problems.append(detail)
            elif kind == "ok" and acked_run == run_id:
                break
        if problems:
            raise RuntimeError(f"MLflow writer failed for run {run_id}: {problems[0]}")

    def alive(self) -> bool:
        return self.process.poll() is None


_writers: dict[str, _Writer] = {}


def start_writer(tracking_uri: str) -> _Writer:
    """Start the writer early (it takes ~1.5 s to import MLflow) so it overlaps data loading."""
    writer = _writers.get(tracking_uri)
    if writer is None or not writer.alive():
        writer = _writers[tracking_uri] = _Writer(tracking_uri)
    return writer


def stop_writers() -> None:
    for writer in list(_writers.values()):
        with contextlib.suppress(Exception):
            writer.send(("stop", None))
            writer.process.wait(timeout=10)
    _writers.clear()


if __name__ == "__main__":
    serve(sys.argv[1], Connection(int(sys.argv[2])))
