"""Extra sweep workers, forked from the sweep process once its heavy modules are imported.

    pool = fork_workers(workers - 1, tracking_uri)   # in the sweep, before any torch work, thread or connection
    pool[0].start(options)             # later, once the study is planned: it runs study.worker_main
    pool[1].dismiss()                  # not needed: it exits

A fresh `python -m optimstudy.study` process spends seconds of CPU importing torch, Optuna and
MLflow before its first trial (3-10 s on 2 busy cores), competing with the first worker's
training: that start-up is why 2 workers barely beat 1 on a short sweep. A fork of the sweep
after those imports starts in milliseconds. The fork happens while the sweep is still a single
thread with no OpenMP pool and no database connection, so the child inherits nothing that is
unsafe across fork. The sweep's MLflow writer process is already starting: each child takes one
of its spare connections (writer_handle.adopt_writer) instead of starting a writer of its own, seconds
of CPU that would compete with the first trials. Each child waits on a pipe for its orders: the
worker options once the study is planned, or the pipe closing (not needed, or the sweep died).
The same pipe then tells a running child that the sweep is gone.
"""
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import replace

from optimstudy.processes import die_with_parent, quick_exit
from optimstudy.sweep.options import WorkerOptions
from optimstudy.tracking.sql_writes import SQL_SCHEMES
from optimstudy.tracking.writer_handle import adopt_writer, hand_over, spare_connections

_open_order_pipes: list[int] = []  # write ends held by the sweep: a later child must not keep them open


class ForkedWorker:
    """The parent's handle on one forked worker, with the subset of Popen's interface a sweep uses."""

    def __init__(self, writer_connection=None):
        """`writer_connection`: (tracking URI, a spare connection to the sweep's writer) for the child."""
        read, self.orders = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode = None
        sweep = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the sweep's code (os._exit, no finally blocks)
            for fd in (*_open_order_pipes, self.orders):
                os.close(fd)
            os.setsid()  # its own session, like start_new_session: the sweep relays Ctrl-C itself
            die_with_parent(sweep)  # ...and so a kill of the sweep's group must reach it another way
            code = 1
            try:
                adopt_writer(writer_connection)
                code = _serve(read)
            except BaseException:  # noqa: BLE001  whatever ends the child is printed; it exits below
                traceback.print_exc()
            finally:
                quick_exit(code)
        os.close(read)
        _open_order_pipes.append(self.orders)
        if writer_connection is not None:
            hand_over(writer_connection)

    def start(self, options) -> None:
        """Have the child work with `options` (study.WorkerOptions)."""
        os.write(self.orders, (options.to_json() + "\n").encode())

    def dismiss(self) -> None:
        """Close the orders pipe: an idle child exits; a working one stops after its trial."""
        if self.orders in _open_order_pipes:
            _open_order_pipes.remove(self.orders)
            os.close(self.orders)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        self.wait()


def fork_workers(count: int, tracking_uri: str | None = None) -> list[ForkedWorker]:
    if count < 1 or sys.platform != "linux":
        return []  # macOS: forking after torch and the Objective-C runtime start is unsafe; fresh processes then
    # what every trial needs, imported once here so that each child starts with it. MLflow only for a
    # tracking server: on a SQL store a trial never imports it (its writer writes the tables directly)
    if tracking_uri and not tracking_uri.startswith(SQL_SCHEMES):
        import mlflow.entities  # a tracking server only, as said above
        import mlflow.tracking  # noqa: F401

    import optimstudy.run.runner  # torch, the training loop
    import optimstudy.tracking.mlflow_logger  # noqa: F401  (the run's logger and MLflow's client module)
    from optimstudy.compat.torch import import_dynamo  # on first use: it imports torch

    import_dynamo()  # every torch optimizer imports it as it first steps: a slow import, in every process
    spares = spare_connections()  # the sweep's writer serves the workers too: one writer per machine
    return [ForkedWorker(spares[index] if index < len(spares) else None) for index in range(count)]


def _serve(fd: int) -> int:
    """In the child: wait for the worker options, then work; 0 at once if dismissed."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            return 0
        line += chunk
    from optimstudy.sweep.trials import worker_main  # on first use: it imports optuna, torch

    return worker_main([replace(WorkerOptions.from_json(line), alive_fd=fd).to_json()])
