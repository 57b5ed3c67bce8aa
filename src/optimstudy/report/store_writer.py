"""The report's one write to the tracking store, from a process forked before the store is read
(StoreWriter says why); in-process with --debug or off Linux (_write_store).

    with StoreWriter(tracking_uri) as store:       # on Linux: forks now; the child opens the store meanwhile
        ...                                        # read the store, draw the figures, write the page
        logged = store.write(parents, out, notes)  # how many sweep parent runs got the page
"""
import logging
import multiprocessing
import sys
from pathlib import Path

from optimstudy.processes import interrupts_held, leave_interrupts
from optimstudy.tracking.client import direct_writes, mlflow_client
from optimstudy.tracking.connectivity import sqlite_path
from optimstudy.tracking.parent_runs import log_report, set_notes


class StoreWriter:
    """The report's one write to the store (the page attached to each sweep parent, their notes
    redrawn), on Linux from a process forked before the store is read: it opens the store on the other
    core while this one reads and draws. Where the store is written directly (tracking.client.
    direct_writes) that takes a moment; else it imports MLflow, which is slow to import and open, and
    slow again in the interpreter's teardown at exit (docs/performance.md), which a forked process
    skips (it leaves by os._exit); this process never imports it (the reading goes straight to SQL)."""

    def __init__(self, tracking_uri: str, *, enabled: bool = True, in_process: bool = False):
        self.tracking_uri, self.enabled, self.process = tracking_uri, enabled, None
        if enabled and not in_process and sys.platform == "linux":
            context = multiprocessing.get_context("fork")
            self.connection, child = context.Pipe()
            self.process = context.Process(target=_store_process, args=(tracking_uri, child), daemon=True)
            with interrupts_held():
                self.process.start()
            child.close()

    def write(self, parents, out, notes) -> int:
        """Attach out/ to each sweep parent run and set the notes [(run_id, experiment, note)]; returns
        how many parents got the page."""
        if not self.enabled:
            return 0
        if self.process is None:
            return _write_store(self.tracking_uri, parents, str(out), notes)
        self.connection.send((parents, str(out), notes))
        try:
            failed, result = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the process writing the report to the store died (exit code "
                               f"{self.process.exitcode})") from None
        if failed:
            raise result
        return result

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.process is not None:  # done, or the report failed (a usage error): it has nothing to wait for
            self.process.terminate()
            self.process.join()


def _store_process(tracking_uri: str, connection) -> None:
    """An existing store opened, directly or by MLflow's client (opening creates a missing one, and a
    report never creates a store: whether it exists is for the reader to say); then one write. The
    report process ends it on Ctrl-C (StoreWriter.__exit__)."""
    leave_interrupts()
    database = sqlite_path(tracking_uri)
    if database is None or database.exists():
        if direct_writes(tracking_uri) is None:
            mlflow_client(tracking_uri)
    try:
        parents, out, notes = connection.recv()
    except EOFError:
        return
    try:
        connection.send((False, _write_store(tracking_uri, parents, out, notes)))
    except Exception as error:  # noqa: BLE001  raised again in the report process
        try:
            connection.send((True, error))
        except Exception:  # noqa: BLE001  an error that does not pickle: its words
            connection.send((True, RuntimeError(f"{type(error).__name__}: {error}")))


def _write_store(tracking_uri: str, parents, out: str, notes) -> int:
    # MLflow logs a failed SQL write with its traceback before raising it: the error raised says it once
    sql_log = logging.getLogger("mlflow.store.db.utils")
    level, _ = sql_log.level, sql_log.setLevel(logging.CRITICAL)
    try:
        for run_id, experiment, note in notes:  # first: a read-only database fails here, before any file is attached
            set_notes(tracking_uri, run_id, note, experiment)
    finally:
        sql_log.setLevel(level)
    return log_report(tracking_uri, parents, Path(out))
