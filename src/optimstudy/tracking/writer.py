"""The MLflow writer process: `python -P -m optimstudy.tracking.writer FD[,FD...]`, the tracking URI in
its environment (OPTIMSTUDY_WRITER_TRACKING_URI): a command line is readable by every user of the
machine (ps), and the URI can hold the database's password.

It imports nothing from optimstudy but connectivity, mlflow_setup, processes, sql_writes (with
compat.mlflow) and tag_names (standard library, SQLAlchemy and MLflow only; the package's __init__
files load nothing), so it starts without torch. On a SQL store of the schema revision the installed
MLflow opens, it imports not even MLflow (_Store): it starts in a fraction of a second and of the
memory a trainer takes (docs/performance.md).

Each FD is one training process's connection: the first is the process that started it, the
others the workers it forks (one writer per machine, so a second worker does not pay another
start-up on a shared core). The messages are the vocabulary below (OPEN_STORE ...
STOP): the training process sends each through the writer_handle._Writer method of the same name,
and serve() hands each to the _Session handler of that name. Runs are created in one transaction
under an id the training process chose, so that it never waits for it. A GROUP message holds the
GROUPED messages of several runs (a stack's seeds), stored in one transaction when they can be,
else each as if sent alone.
Metric points go straight into MLflow's tables on a SQL store of a schema revision they were
compared on (sql_writes.py: a fraction of log_batch's CPU); anywhere else through MLflow's client.
When a training process dies, its socket closes and the runs it left open are ended as KILLED.
A run that lost a batch of points is ended FAILED, never FINISHED.

With `system_metrics_s`, the writer also samples the machine for that run every so many seconds
through MLflow's own SystemMetricsMonitor (system/cpu_utilization_percentage, memory, disk,
network; GPU utilisation and memory with nvidia-ml-py): CPU and memory are machine-wide, so a
sampler here sees what one in the training process would, and the training thread pays nothing.

A SQLite store locked by another process (a reader, a `sqlite3` shell) is retried for
LOCK_RETRY_S, longer than MLflow's own client waits (20 s), saying so once on stderr; only then is
the write reported as failed. The training process reads such a report at its next batch and
stops the run (writer_handle.py, the training process's side: start_writer, its sends and waits).
"""
import contextlib
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from optimstudy.compat import mlflow as mlflow_internals
from optimstudy.processes import quick_exit
from optimstudy.tag_names import TAG_ERROR
from optimstudy.tracking.connectivity import hide_passwords, sqlite_path
from optimstudy.tracking.mlflow_setup import (
    quiet_store_logs,
    report_connection_retries,
    start_system_metrics,
    stop_system_metrics,
)
from optimstudy.tracking.sql_writes import FastWrites

URI_VARIABLE = "OPTIMSTUDY_WRITER_TRACKING_URI"  # how the writer gets its tracking URI: never on argv
BATCH_POINTS = 1000  # MLflow's log_batch takes at most 1,000 metrics per call
# MLflow 3's UI opens an experiment as GenAI (traces, token usage) unless this tag says it holds
# training runs; with it, the experiment opens on its runs table.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# How long a locked SQLite store is retried: more than MLflow's own client waits (busy_timeout 20 s),
# so a reader holding the store for 30 s loses nothing; a test sets a few seconds.
LOCK_RETRY_ENV, LOCK_RETRY_S = "OPTIMSTUDY_LOCK_RETRY_S", 60.0

# The protocol, one vocabulary for both sides. A message is (kind, key, *arguments); each kind is the
# name of the _Writer method that sends it (writer_handle.py) and of the _Session method that handles it.
#   kind        key              arguments                   answer
#   open_store  None             -                           READY {"creates_runs": bool}, or ERROR
#   experiment  the name         artifact_location           OK with its id, or {"deleted": id}
#   create      run_id           run (FastWrites.create_run's keywords: tags, params, data set...)
#   open        run_id           system_metrics_s (0: none)
#   metrics     run_id           points (name, value, timestamp, step), at most BATCH_POINTS
#   artifact    run_id           path                        OK
#   end         run_id           status, tags                OK
#   stop        None             -                           OK, once the runs left open are ended
#   group       None             messages (GROUPED kinds, several runs')   OK for each END among them
# Answers are (READY | OK | ERROR, key, detail). An ERROR reports a write the store refused (key: the
# run); the training process reads it at its next batch, or while it waits for an answer.
OPEN_STORE, EXPERIMENT, CREATE, OPEN, METRICS, ARTIFACT, END, STOP, GROUP = (
    "open_store", "experiment", "create", "open", "metrics", "artifact", "end", "stop", "group")
READY, OK, ERROR = "ready", "ok", "error"
ANSWERED = (EXPERIMENT, ARTIFACT, END)  # the training process waits for their OK, even after an ERROR
GROUPED = (CREATE, OPEN, METRICS, END)  # the kinds a GROUP message holds


class _Store:
    """The writer's store, opened on the first "open_store" message and shared by every connection,
    one message at a time. A SQL store of the schema revision the installed MLflow opens is written
    directly, without importing MLflow (sql_writes.FastWrites.for_uri); a new SQLite store is made
    from a template where one is kept (compat.mlflow.new_sqlite_store). MLflow's client, imported on
    first use, makes the rest: a store MLflow must create or migrate, a tracking server, an unusual
    name or artifact."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri, self.lock = tracking_uri, threading.Lock()
        self.fast, self._client = None, None

    def open(self) -> dict:
        with self.lock:
            if self.fast is None and self._client is None:
                database = sqlite_path(self.tracking_uri)
                if database is not None and not database.exists():
                    mlflow_internals.new_sqlite_store(database)
                self.fast = FastWrites.for_uri(self.tracking_uri)
                if self.fast is None:
                    made_by_mlflow = database is not None and not database.exists()
                    client = self.client
                    if made_by_mlflow:  # empty still: nothing is written before this message is answered
                        mlflow_internals.keep_as_template(database)
                    self.fast = FastWrites.for_client(client)
        return {"creates_runs": self.fast is not None}

    def sampler(self, run_id: str, seconds: float):
        """The machine sampled for `run_id` every `seconds` (mlflow_setup.start_system_metrics), its
        samples written directly where this store is (under the lock, from the sampler's thread)."""
        fast = self.fast

        def write(points):
            with self.lock:
                if not patiently(fast.log_metrics, run_id, points):
                    raise RuntimeError(f"system metrics not stored for run {run_id}")  # a point seen before
        return start_system_metrics(self.tracking_uri, run_id, seconds, write if fast is not None else None)

    @property
    def client(self):
        """MLflow's client for this store, made on first use (it imports MLflow; making it creates and
        migrates a new store, and a store that cannot be opened says so here)."""
        if self._client is None:
            from mlflow import MlflowClient  # on first use: it imports mlflow

            client = MlflowClient(self.tracking_uri)
            client.search_experiments(max_results=1)
            self._client = client
        return self._client


class DeletedExperiment(Exception):
    """The named experiment exists but was deleted: MLflow keeps it (and its name) until it is purged.
    Never restored silently: its old runs would come back beside the new ones (a trial with two
    FINISHED runs, a study with two parent runs)."""

    def __init__(self, name: str, experiment_id: str):
        super().__init__(name, experiment_id)
        self.name, self.experiment_id = name, experiment_id

    def message(self, tracking_uri: str) -> str:
        return (f"the MLflow experiment '{self.name}' (id {self.experiment_id}) was deleted; it is not brought "
                "back silently, old runs and all. Either restore it and run the same command again: "
                f"`MLFLOW_TRACKING_URI='{hide_passwords(tracking_uri)}' mlflow experiments restore "
                f"--experiment-id {self.experiment_id}`; or start afresh under a new name: give the spec a new "
                "`name` (optimstudy sweep), or pass --experiment NEW (optimstudy run)")


class StoreLocked(Exception):
    """The store stayed locked by another process for the whole retry budget."""


_lock_told_at = [float("-inf")]  # when "the store is locked" was last printed: one line a minute at most


def end_run(client, run_id: str, status: str, tags: dict, write=None) -> None:
    """End `run_id` with `status` through MLflow's client, setting `tags` (why it ended) first: the one
    way a run ends outside the direct SQL writes (here, a trainer whose writer died, orphaned runs).
    `write(call, *args)` makes each call (the writer's: `patiently`, retried while the store is locked)."""
    from mlflow.entities import RunTag  # on first use: it imports mlflow

    write = write or _once
    if tags:
        write(client.log_batch, run_id, tags=[RunTag(key, str(value)[:5000]) for key, value in tags.items()])
    write(client.set_terminated, run_id, status)


def patiently(call, *args, **kwargs):
    """`call(...)`, retried with backoff while the SQLite store is locked by another process, for
    LOCK_RETRY_S ($OPTIMSTUDY_LOCK_RETRY_S); StoreLocked after that. Safe to retry: every write here
    is one transaction, rolled back when it fails."""
    try:
        budget = float(os.environ.get(LOCK_RETRY_ENV) or LOCK_RETRY_S)
    except ValueError:  # set by hand for a test; a typo must not turn every locked write into a failure
        budget = LOCK_RETRY_S
    started, pause = None, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            if "database is locked" not in str(error):
                raise
            now = time.monotonic()
            if started is None:
                started = now
                if now - _lock_told_at[0] > 60:
                    _lock_told_at[0] = now
                    print(f"optimstudy: the tracking store is locked by another process (database is locked); the "
                          f"MLflow writer (pid {os.getpid()}) retries for up to {budget:g} s ({LOCK_RETRY_ENV})",
                          file=sys.stderr, flush=True)
            if now - started >= budget:
                raise StoreLocked(f"the store stayed locked by another process for {now - started:.0f} s "
                                  f"(retried for {LOCK_RETRY_ENV}={budget:g} s): database is locked") from None
            time.sleep(min(pause, budget - (now - started)))
            pause = min(pause * 2, 2.0)


def _once(call, *args, **kwargs):
    return call(*args, **kwargs)


def _plain(error: Exception) -> str:
    """The error's own words, without SQLAlchemy's appended statement and link (a user reads this)."""
    return re.split(r"\n\[SQL: |\n\(Background on this error at", str(error))[0]


def find_or_create_experiment_directly(fast: FastWrites, name: str, artifact_location: str | None) -> str | None:
    """find_or_create_experiment by direct writes, without MLflow; None where MLflow's client must make
    the experiment (sql_writes.FastWrites.creates_experiment)."""
    found = fast.find_experiment(name)
    if found is None:
        if not fast.creates_experiment(name, artifact_location):
            return None
        try:
            return fast.create_experiment(name, artifact_location, {EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except fast.sa.exc.IntegrityError:
            found = fast.find_experiment(name)  # a concurrent creator's
    experiment_id, stage, tags = found
    if stage == "deleted":
        raise DeletedExperiment(name, experiment_id)
    if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        fast.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment_id


def find_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created (safely against a concurrent creator) when missing, and tagged
    as training runs for MLflow's UI; DeletedExperiment when it was deleted."""
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:
            found = client.get_experiment_by_name(name)  # a concurrent creator's
    if found.lifecycle_stage == "deleted":
        raise DeletedExperiment(name, found.experiment_id)
    if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


def main(tracking_uri: str, fds: list[int]) -> None:
    """Serve the owner's connection (the first) here and each other one (a forked worker's) in a
    thread; once the owner stops or dies, wait for the workers that are still sending runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; we must flush
    threading.Thread(target=exit_if_dismissed_early, args=(fds[0],), daemon=True).start()
    import sqlalchemy  # noqa: F401  (imported now, while the training process sets up; MLflow only if needed)

    quiet_store_logs()
    report_connection_retries(tracking_uri)
    store = _Store(tracking_uri)
    owner, *others = [Connection(fd) for fd in fds]
    in_use = [threading.Event() for _ in others]  # set once a worker starts using its connection
    threads = [threading.Thread(target=serve, args=(store, conn, started), daemon=True)
               for conn, started in zip(others, in_use)]
    for thread in threads:
        thread.start()
    serve(store, owner, threading.Event())
    for thread, started in zip(threads, in_use):
        if started.is_set():  # idle ones (a worker the sweep did not need) are not waited for
            thread.join()


def exit_if_dismissed_early(fd: int) -> None:
    """Exit at once if the owner closes its connection before sending anything (bad input found
    while we import MLflow): on a busy machine the imports can take many seconds, and meanwhile
    we would hold the command's stdout and stderr open for whoever reads them."""
    with socket.socket(fileno=os.dup(fd)) as watched:
        select.select([watched], [], [])
        try:
            dismissed = watched.recv(1, socket.MSG_PEEK) == b""  # readable and empty: closed
        except OSError:
            dismissed = True
    if dismissed:
        quick_exit(0)


def yield_cores_to_training() -> None:
    """Lower this thread's priority (Linux: per thread) once its trainer steps: from then on we
    only need the gaps between steps. Not before: the trainer waits for our start-up, and a niced
    start-up beside busy processes took minutes."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no setpriority (Windows)
        os.setpriority(os.PRIO_PROCESS, 0, max(10, os.getpriority(os.PRIO_PROCESS, 0)))


def serve(store: _Store, conn: Connection, started: threading.Event) -> None:
    """Handle one training process's messages in order, until it stops or dies (then end its runs)."""
    session = _Session(store, conn)
    while True:
        message = session.pending.popleft() if session.pending else receive(conn)
        if message is None or message[0] == STOP:  # gone (its runs are KILLED), or stopping
            session.stop(answer=message is not None)
            return
        kind, key, *arguments = message
        if kind == OPEN_STORE:  # not under the store's lock: opening it takes the lock
            started.set()
            session.open_store()
            continue
        if kind == GROUP:  # several runs' messages sent together (a stack's seeds): it takes the lock itself
            session.group(key, *arguments)
            continue
        handler, ended_sampler = session.handlers.get(kind), None
        with store.lock:
            try:
                if handler is not None:  # a kind that is not ours is ignored
                    ended_sampler = handler(key, *arguments)
            except Exception as error:  # noqa: BLE001  reported back: the training process reads it at its next batch
                ended_sampler = session.refused(kind, key, error)
        # after the answer, so the training process does not wait for it (~20 ms a run): the
        # last sample is stored into the ended run before the next message is read
        stop_system_metrics(ended_sampler)


class _Session:
    """What serve() keeps about one training process (one connection), and a handler for each message,
    named for its kind. Handlers run under the store's lock, one message at a time; a raised error is
    the store's refusal (`refused`). A handler returns the system-metrics sampler to stop once the lock
    is released (that of a run it ended), or None."""

    def __init__(self, store: _Store, conn: Connection):
        self.store, self.conn = store, conn  # the writer's one _Store, shared by every connection
        self.open_runs: set[str] = set()
        self.samplers: dict[str, object] = {}  # run_id -> its SystemMetricsMonitor
        self.lost: dict[str, str] = {}  # run_id -> why its first lost batch failed
        self.uncreated: set[str] = set()  # runs whose "create" failed
        self.unended: dict[str, tuple] = {}  # run_id -> (status, tags) of an "end" the store refused: tried at stop
        self.pending = deque()  # messages handled next, in order: read ahead while merging metrics, or a group's
        self.stepping = False  # whether a trainer has sent steps yet
        # serve() calls open_store (outside the lock) and stop (its end) itself; the rest through this table
        self.handlers = {EXPERIMENT: self.experiment, CREATE: self.create, OPEN: self.open,
                         METRICS: self.metrics, ARTIFACT: self.artifact, END: self.end}

    def open_store(self) -> None:
        try:
            reply(self.conn, (READY, None, self.store.open()))
        except Exception as error:  # noqa: BLE001  reported to the training process, which raises it
            reply(self.conn, (ERROR, None, hide_passwords(f"{type(error).__name__}: {str(error)[:1000]}")))

    def experiment(self, name: str, artifact_location: str | None) -> None:  # the trainer waits
        try:
            fast = self.store.fast
            answer = fast and patiently(find_or_create_experiment_directly, fast, name, artifact_location)
            if answer is None:
                answer = patiently(find_or_create_experiment, self.store.client, name, artifact_location)
        except DeletedExperiment as deleted:  # a usage error, told in the training process
            answer = {"deleted": deleted.experiment_id}
        reply(self.conn, (OK, name, answer))

    def create(self, run_id: str, run: dict) -> None:  # tags, params and data set in one transaction; no wait
        patiently(self.store.fast.create_run, run_id, **run)
        self.open_runs.add(run_id)

    def open(self, run_id: str, system_metrics_s: float | None = None) -> None:
        self.open_runs.add(run_id)
        if system_metrics_s:
            self.samplers[run_id] = self.store.sampler(run_id, system_metrics_s)

    def metrics(self, run_id: str, points: list) -> None:
        if not self.stepping:
            yield_cores_to_training()
            self.stepping = True
        if run_id in self.uncreated or run_id in self.lost:
            return  # reported once; the trainer stops the run on that report: these are lost too
        self.open_runs.add(run_id)
        fast = self.store.fast
        points = self.merged(run_id, list(points))
        for start in range(0, len(points), BATCH_POINTS):
            chunk = points[start:start + BATCH_POINTS]
            if fast is None or not patiently(fast.log_metrics, run_id, chunk):
                from mlflow.entities import Metric  # through MLflow's client only: it imports mlflow

                patiently(self.store.client.log_batch, run_id, metrics=[Metric(*p) for p in chunk])

    def merged(self, run_id: str, points: list) -> list:
        """`points` and those of the run's "metrics" messages already waiting (we are behind): one transaction,
        not many. The first other message read stays `pending`, handled next."""
        while len(points) < BATCH_POINTS and (self.pending or self.conn.poll()):
            following = self.pending.popleft() if self.pending else receive(self.conn)
            if following is None or following[0] != METRICS or following[1] != run_id:
                self.pending.appendleft(following)
                break
            points.extend(following[2])
        return points

    def group(self, _, parts: list) -> None:
        """GROUPED messages of several runs (writer_handle._Writer.together): stored in one transaction
        (stored_together), else handled one by one, each as if sent alone (its own retries and errors)."""
        if not self.stepping and any(part[0] == METRICS for part in parts):
            yield_cores_to_training()
            self.stepping = True
        if not stored_together(self.store, parts, self.lost.keys() | self.uncreated):
            self.pending.extendleft(reversed(parts))
            return
        ended = []
        for kind, run_id, *arguments in parts:
            if kind == END:
                self.open_runs.discard(run_id)
                self.store.fast.forget(run_id)
                reply(self.conn, (OK, run_id, None))
                ended.append(run_id)
                continue
            self.open_runs.add(run_id)
            if kind == OPEN and arguments and arguments[0]:
                self.samplers[run_id] = self.store.sampler(run_id, arguments[0])
        for run_id in ended:  # after the answers, as serve() does
            stop_system_metrics(self.samplers.pop(run_id, None))

    def artifact(self, run_id: str, path: str) -> None:  # after the run's creation, queued before it; the trainer waits
        self.store.client.log_artifact(run_id, path)
        reply(self.conn, (OK, run_id, None))

    def end(self, run_id: str, status: str, tags: dict):
        fast = self.store.fast
        # a run stopped by a store error is ended in one try: the trainer is not kept waiting
        # another LOCK_RETRY_S; if the store refuses it, it is ended (patiently) when the trainer stops
        write = _once if run_id in self.lost else patiently
        if run_id in self.lost:
            status = "FAILED" if status == "FINISHED" else status
            why = tags.get(TAG_ERROR)
            tags = {**tags, TAG_ERROR: "; ".join(
                filter(None, [why, f"metric points were lost: {self.lost.pop(run_id)}"]))}
        tags = {key: str(value)[:5000] for key, value in tags.items()}
        self.unended[run_id] = (status, tags)  # until the store has it
        if fast is None or not write(fast.end_run, run_id, status, tags):
            end_run(self.store.client, run_id, status, tags, write)
        del self.unended[run_id]
        self.open_runs.discard(run_id)
        if fast is not None:
            fast.forget(run_id)
        reply(self.conn, (OK, run_id, None))
        return self.samplers.pop(run_id, None)

    def refused(self, kind: str, key, error: Exception):
        """Report the store's refusal of a `kind` message (about run `key`); answer it if the trainer waits."""
        detail = hide_passwords(f"{type(error).__name__}: {_plain(error)[:1000]}")  # it is printed and tagged
        if kind == CREATE:
            self.uncreated.add(key)
            self.lost[key] = f"the run could not be created: {detail}"
        if kind == METRICS:
            if key in self.lost:
                return None  # one report per run: unread reports would fill the socket and block us both
            self.lost[key] = detail
        reply(self.conn, (ERROR, key, detail))
        if kind in ANSWERED:  # the training process waits for this answer
            reply(self.conn, (OK, key, None))
            return self.samplers.pop(key, None)
        return None

    def stop(self, answer: bool) -> None:
        """The training process is gone without closing its runs (KILLED), or stops (`answer`) after the
        store refused to end them (ended now as it asked, if the store takes it now)."""
        for run_id in self.open_runs:
            stop_system_metrics(self.samplers.pop(run_id, None))
            status, tags = self.unended.get(run_id, ("KILLED", {TAG_ERROR: "the training process died mid-run"}))
            with contextlib.suppress(Exception), self.store.lock:
                fast = self.store.fast
                if fast is None or not patiently(fast.end_run, run_id, status, tags):
                    end_run(self.store.client, run_id, status, tags, patiently)
        if answer:
            for sampler in self.samplers.values():
                stop_system_metrics(sampler)
            reply(self.conn, (OK, None, None))


def stored_together(store: _Store, parts: list, refused) -> bool:
    """Whether `parts` (GROUPED messages of several runs) were stored in one transaction (sql_writes.
    FastWrites.write_together); False, with nothing stored, where any of them must go alone: an
    unusual write, a run in `refused` (its creation or a batch failed), a store error (retried alone)."""
    if store.fast is None or any(part[0] not in GROUPED or part[1] in refused for part in parts):
        return False
    writes = [(*part[:3], {key: str(value)[:5000] for key, value in part[3].items()}) if part[0] == END else part
              for part in parts if part[0] != OPEN]  # end tags as _Session.end stores them
    try:
        with store.lock:
            return store.fast.write_together(writes)
    except Exception:  # noqa: BLE001  a locked store, a full disk: each alone then, retried and reported as always
        return False


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


if __name__ == "__main__":
    main(os.environ.pop(URI_VARIABLE), [int(fd) for fd in sys.argv[1].split(",")])
    quick_exit(0)  # everything is committed by now: a sweep would wait for the interpreter's teardown
