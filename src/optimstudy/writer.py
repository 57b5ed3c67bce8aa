"""The MLflow writer process: `python -P .../optimstudy/writer.py TRACKING_URI FD`.

It runs as a plain script and imports nothing from optimstudy, so it starts without torch
(~170 MB and ~1.4 s here, against ~900 MB and 3-5 s through the package).

Receives ("open", run_id), ("metrics", run_id, points), ("end", run_id, status, tags) and ("stop", None)
over the socket FD; answers ("ready"|"ok"|"error", run_id, detail). When the training
process dies, the socket closes and the runs it left open are ended as KILLED. A run that
lost a batch of points is ended FAILED, never FINISHED.
"""
import contextlib
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

BATCH_POINTS = 1000  # MLflow's log_batch takes at most 1,000 metrics per call


def quiet_store_logs() -> None:
    """MLflow and alembic log every table creation and migration at INFO: noise for a user."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.db", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def serve(tracking_uri: str, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; we must flush
    os.nice(10)  # yield the cores to training threads; we only need the gaps between their steps
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    quiet_store_logs()

    client = MlflowClient(tracking_uri)
    conn.send(("ready", None, None))
    open_runs: set[str] = set()
    lost: dict[str, str] = {}  # run_id -> why its first lost batch failed
    held = None  # a message read ahead while merging metric messages, handled next
    while True:
        message, held = held or receive(conn), None
        if message is None:
            for run_id in open_runs:  # the training process is gone without closing its runs
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, "optimstudy.error", "the training process died mid-run")
                    client.set_terminated(run_id, "KILLED")
            return
        kind, run_id = message[0], message[1]
        try:
            if kind == "open":
                open_runs.add(run_id)
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
                conn.send(("ok", run_id, None))
            elif kind == "stop":
                conn.send(("ok", None, None))
                return
        except Exception as error:  # reported back to the training process at the run's end
            detail = f"{type(error).__name__}: {str(error)[:1000]}"
            if kind == "metrics":
                if run_id in lost:
                    continue  # one report per run: unread reports would fill the socket and block us both
                lost[run_id] = detail
            conn.send(("error", run_id, detail))
            if kind == "end":  # the training process waits for this answer (a deleted run ends here)
                conn.send(("ok", run_id, None))


def receive(conn: Connection):
    """The next message, or None once the training process has closed its end (or died)."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


if __name__ == "__main__":
    serve(sys.argv[1], Connection(int(sys.argv[2])))
