"""The training process's side of the MLflow writer (writer.py): start it, hand it points without
ever blocking on it, and notice when it dies, stalls, or its store refuses a write.

    writer = start_writer(tracking_uri)            # once per store and process; a dead one is replaced
    writer.wait_ready()                            # the store is open
    writer.metrics(run_id, points)                 # returns at once, whatever the writer does
    writer.store_error(run_id)                     # the writer's report on run_id, read without waiting
    with writer.together():                        # a stack's runs: their messages in one frame, which
        ...                                        #   the writer stores in one transaction

Every message the writer takes is a method here named for its kind (writer.py's vocabulary: OPEN_STORE
... STOP): open_store, experiment, create, open, metrics, artifact, end (and end_ahead), stop; GROUP
is how `together()` sends several of them.

Sends never block: what the writer's socket does not take now waits here, in order, and goes at the
next send (a few microseconds: one non-blocking send). A writer that takes nothing for WARN_AFTER_S
gets one warning on stderr (its pid, the points and seconds waiting); past writer_timeout_s()
(OPTIMSTUDY_WRITER_TIMEOUT_S, default TIMEOUT_S) it is stopped for good and the run fails with
WriterStalled. Memory is bounded: past MAX_WAITING_BYTES (~30k points) training waits for the writer (said once),
within the same timeout. The answered calls (the store, an experiment, an artifact, a run's end) wait
within it too.

Several runs that move together (the seeds of a stack, run/stacked.py) send their messages
`together()`: one frame, stored by the writer in one transaction, not one commit (an fsync, ~20 ms
on this kind of machine) per run and message. They end together too: `end_ahead` sends each
run's end at once, and each `end` then waits for its own answer, in turn.
"""
import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from optimstudy.errors import UsageError
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.writer import (
    ARTIFACT,
    CREATE,
    END,
    ERROR,
    EXPERIMENT,
    GROUP,
    GROUPED,
    METRICS,
    OK,
    OPEN,
    OPEN_STORE,
    READY,
    STOP,
    URI_VARIABLE,
    DeletedExperiment,
)

# Longer than every wait the writer makes on purpose: MLflow retries a lost server for ~4 minutes,
# the writer retries a locked SQLite store for 60 s (writer.LOCK_RETRY_S) after MLflow's own 20 s.
TIMEOUT_ENV, TIMEOUT_S = "OPTIMSTUDY_WRITER_TIMEOUT_S", 600.0
STARTUP_S = 300.0  # the first answer waits for MLflow's imports and a new store's migrations: minutes on a busy machine
WARN_AFTER_S = 10.0  # a healthy writer takes each batch within milliseconds; 10 s without one is worth a line
# ~30k metric points (~32 bytes each, pickled) held here for a writer that is behind: bounded memory,
# a bounded lag of what the MLflow UI shows live, and a bounded wait at a run's end or on Ctrl-C (the
# writer yields the cores to training, so on a busy machine it falls behind: with 64 MB, a 2-core run
# showed no step in the store until training ended, and its Ctrl-C waited over a minute for the rest)
MAX_WAITING_BYTES = 2**20


class WriterDied(RuntimeError):
    """The writer process is gone (killed, out of memory): points it had not stored are lost."""


class WriterStalled(WriterDied):
    """The writer took nothing for the timeout (stopped, or stuck on its store). The training process
    kills it: woken up later, it would end our runs as KILLED over what we record about them."""


class StoreError(RuntimeError):
    """The writer reported that the store refused a write: the run stops at once (its points are lost)."""

    # SQLite's and the OS's words for a store that refuses every write, not just this run's
    STORE_WIDE = ("database is locked", "stayed locked", "readonly database", "read-only", "disk is full",
                  "no space left", "disk i/o error", "unable to open database", "permission denied")

    @classmethod
    def refused(cls, tracking_uri: str, what: str, detail: str) -> "StoreError":
        """The writer's report `detail` on `what` (a run, an end, an artifact), as the user reads it."""
        return cls(hide_passwords(f"the MLflow writer could not write to the tracking store '{tracking_uri}' "
                                  f"({what}): {detail}"))

    @property
    def store_wide(self) -> bool:
        """Whether the next run would fail the same way (a full disk), unlike a run deleted in the UI."""
        return any(words in str(self).lower() for words in self.STORE_WIDE)


def writer_timeout_s() -> float:
    """Seconds a writer may take nothing before the run fails ($OPTIMSTUDY_WRITER_TIMEOUT_S, default 600)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else TIMEOUT_S
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return seconds


def _send_nowait(fd: int, data) -> int:
    """Send what the socket takes now (part of `data` when it is nearly full); 0 when it is full."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0
    finally:
        sock.detach()  # the fd stays the Connection's


class _Writer:
    """The handle on a writer process, started on first use and shared by the process's runs.

    A plain subprocess over socket pairs, not multiprocessing: spawning through
    multiprocessing re-imports the caller's __main__, which breaks unguarded user scripts.
    With `spares`, it also serves that many more connections, one for each worker forked from
    this process (`spare_connections`, `adopt_writer`): one writer per machine, not per worker.
    """

    def __init__(self, tracking_uri: str, spares: int = 0, conn: Connection | None = None, pid: int | None = None):
        self.tracking_uri, self.process, self.spares = tracking_uri, None, []
        self.ready = self.store_asked = False
        self.creates_runs = False  # a SQL store: the writer creates runs (sql_writes.py), told when ready
        self.timeout_s = writer_timeout_s()
        self.outbox: deque = deque()  # (frame, points) the socket has not taken yet, in order
        self.sent_of_first = 0  # bytes of the first frame already sent
        self.waiting_bytes = self.waiting_points = 0
        self.waiting_since: float | None = None  # when the writer last took something we had waiting
        self.warned = False
        self.said_behind = False  # "training waits for the writer" is said once a process
        self.failure: WriterDied | None = None  # once dead or stalled: every later call raises it
        self.errors: dict[str, str] = {}  # run id -> the writer's first error report on it, read ahead
        self.group: list | None = None  # inside together(): the GROUPED messages to send as one
        self.group_points = 0
        self.group_thread: int | None = None  # the thread in together(): another's sends (a watchdog's) go at once
        self.ahead: dict[str, tuple] = {}  # run id -> its end, sent ahead: its answer is not read yet
        self.early: dict[str, object] = {}  # run id -> the answer to a message sent ahead, read before its wait
        if conn is not None:  # a forked worker's connection to its parent's writer
            self.conn, self.pid = conn, pid
            return
        pairs = [socket.socketpair() for _ in range(1 + spares)]
        fds = [theirs.fileno() for _, theirs in pairs]
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "optimstudy.tracking.writer", ",".join(map(str, fds))],
            pass_fds=fds, stdin=subprocess.DEVNULL, env={**os.environ, URI_VARIABLE: tracking_uri})
        self.pid = self.process.pid
        for _, theirs in pairs:
            theirs.close()
        self.conn, *self.spares = [Connection(ours.detach()) for ours, _ in pairs]

    # ---- sending: never blocks while the writer keeps up ----

    def _send(self, message, points: int = 0) -> None:
        """Queue `message` (holding `points` metric points) and pass on what the socket takes now."""
        if self.failure is not None:
            raise self.failure
        if self.group is not None and threading.get_ident() == self.group_thread:
            if message[0] in GROUPED:
                self.group.append(message)
                self.group_points += points
                return
            self._send_group()  # in order: what was collected goes first
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        frame = struct.pack("!i", len(payload)) + payload  # multiprocessing.connection's framing: the writer's recv()
        self.outbox.append((frame, points))
        self.waiting_bytes += len(frame)
        self.waiting_points += points
        self._pass_on()
        if self.waiting_bytes > MAX_WAITING_BYTES and not self.said_behind:
            self.said_behind = True
            print(f"optimstudy: the MLflow writer (pid {self.pid}) is {self.waiting_points:,} metric points behind "
                  f"(the machine is busy, or the store slow); training now waits for it to catch up", file=sys.stderr,
                  flush=True)
        while self.waiting_bytes > MAX_WAITING_BYTES:  # bounded memory: wait for the writer (within the timeout)
            self._wait_writable()
            self._pass_on()

    @contextlib.contextmanager
    def together(self):
        """The GROUPED messages sent inside (several runs': a stack's seeds) go as one frame when the
        block ends, which the writer stores in one transaction; any other message sends them first."""
        if self.group is not None:  # nested: the outer block sends them
            yield
            return
        self.group, self.group_points, self.group_thread = [], 0, threading.get_ident()
        try:
            yield
        except BaseException:
            with contextlib.suppress(WriterDied):  # the block's own exception is the one to raise
                self._send_group()
            raise
        else:
            self._send_group()
        finally:
            self.group, self.group_points = None, 0

    def _send_group(self) -> None:
        group, points = self.group, self.group_points
        self.group, self.group_points = None, 0
        try:
            if group:
                self._send(group[0] if len(group) == 1 else (GROUP, None, group), points)
        finally:
            self.group = []

    def _pass_on(self) -> None:
        moved = False
        while self.outbox:
            frame, points = self.outbox[0]
            try:
                sent = _send_nowait(self.conn.fileno(), memoryview(frame)[self.sent_of_first:])
            except OSError:  # BrokenPipeError: the writer is gone
                raise self._died() from None
            moved = moved or sent > 0
            self.sent_of_first += sent
            if self.sent_of_first < len(frame):
                break
            self.outbox.popleft()
            self.sent_of_first = 0
            self.waiting_bytes -= len(frame)
            self.waiting_points -= points
        if not self.outbox:
            self.waiting_since, self.warned = None, False
        elif moved or self.waiting_since is None:
            self.waiting_since = time.monotonic()
        else:
            self._patience(time.monotonic() - self.waiting_since, "taken nothing")

    def _wait_writable(self) -> None:
        select.select([], [self.conn.fileno()], [], 0.2)

    def _drain(self) -> None:
        """Hand over everything waiting here (an answered call's question goes after it), within the timeout."""
        self._pass_on()
        while self.outbox:
            self._wait_writable()
            self._pass_on()

    def _patience(self, waited: float, doing: str, limit: float | None = None, answer: bool = False) -> None:
        """One warning once the writer has `doing` for WARN_AFTER_S; past the limit, WriterStalled.
        `answer`: this process waits for the writer's answer (else training goes on meanwhile)."""
        limit = limit or self.timeout_s
        if waited >= limit:
            self._abandon(waited, doing, limit)
        if not self.warned and waited >= min(WARN_AFTER_S, limit / 3):
            self.warned = True
            waiting = f"; {self.waiting_points:,} metric points wait in this process" if self.waiting_points else ""
            meanwhile = "this process waits for it" if answer else "training goes on"
            print(f"optimstudy: the MLflow writer (pid {self.pid}) has {doing} for {waited:.0f} s{waiting}; "
                  f"{meanwhile}, and stops if it has {doing} for {limit:g} s ({TIMEOUT_ENV})",
                  file=sys.stderr, flush=True)

    def _abandon(self, waited: float, doing: str, limit: float) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)  # stopped or stuck: it must not wake up and write over us
        lost = f"; {self.waiting_points:,} metric points were not stored" if self.waiting_points else ""
        self.failure = WriterStalled(
            f"the MLflow writer (pid {self.pid}) has {doing} for {waited:.0f} s (timeout: {TIMEOUT_ENV}={limit:g}): "
            f"stalled (stopped, or stuck on its store), so it was killed{lost}")
        raise self.failure

    def _died(self) -> WriterDied:
        if self.failure is None:
            code = ""
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=5)
                code = f", code {self.process.poll()}"
            self.failure = WriterDied(f"the MLflow writer process exited (pid {self.pid}{code})")
        return self.failure

    # ---- reading: errors without waiting, answers within the timeout ----

    def store_error(self, run_id: str) -> str | None:
        """The writer's report that it could not store part of `run_id`, read without waiting (once)."""
        if self.failure is not None:
            raise self.failure
        try:
            while self.conn.poll():
                kind, about, detail = self.conn.recv()
                if kind == ERROR:
                    self.errors.setdefault(about, detail)
                elif kind == OK:
                    self._keep_if_ahead(about, detail)
        except (EOFError, OSError):
            raise self._died() from None
        return self.errors.pop(run_id, None)

    def _recv(self, doing: str, limit: float | None = None):
        self._drain()
        started = time.monotonic()
        try:
            while not self.conn.poll(1.0):
                if self.process is not None and self.process.poll() is not None:
                    raise self._died()
                self._patience(time.monotonic() - started, doing, limit, answer=True)
            return self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def _keep_if_ahead(self, run_id, detail) -> None:
        if run_id in self.ahead:
            self.early[run_id] = detail  # its own wait reads it here

    def _answered(self, message):
        """Send `message` (unless it was sent ahead) and wait for its answer; returns the answer's detail."""
        key = message[1]
        sent = self.ahead.pop(key, None)
        if sent is not None and sent != message:  # another message sent ahead for this run (it finished; now it
            # fails): that answer first
            with contextlib.suppress(StoreError):
                self._answer(sent)
            sent = None
        if sent is None:
            self._send(message)
        return self._answer(message)

    def _answer(self, message):
        key, problems = message[1], []
        while key not in self.early:
            kind, acked, detail = self._recv(f"not answered ({message[0]} {key})")
            if kind == ERROR:
                problems.append(detail)
            elif kind == OK and acked == key:
                break
            elif kind == OK:
                self._keep_if_ahead(acked, detail)
        else:
            detail = self.early.pop(key)
        self.warned = False
        if problems:
            raise StoreError.refused(self.tracking_uri, f"{message[0]} {key}", problems[0])
        return detail

    # ---- the messages, one method each (writer.py's vocabulary) ----

    def open_store(self) -> None:
        """Have the writer open (or create) the store, without waiting for it (see wait_ready)."""
        if not self.store_asked:
            self._send((OPEN_STORE, None))
            self.store_asked = True

    def wait_ready(self) -> None:
        """Have the writer open (or create) the store, and wait for it: a writer that cannot start
        fails here, before any run exists. The writer imports MLflow meanwhile: start it early."""
        if not self.ready:
            self.open_store()
            kind, _, detail = self._recv("not opened the store", max(self.timeout_s, STARTUP_S))
            self.warned = False
            if kind == ERROR:
                raise RuntimeError(f"the MLflow writer cannot open the tracking store: {detail}")
            self.ready = kind == READY
            self.creates_runs = bool(detail and detail.get("creates_runs"))

    def experiment(self, name: str, artifact_location: str | None) -> str:
        """The experiment's id (writer.find_or_create_experiment), looked up by the writer: this process
        then needs no MLflow client of its own (~2 s of imports)."""
        self.wait_ready()
        answer = self._answered((EXPERIMENT, name, artifact_location))
        if isinstance(answer, dict):
            raise UsageError(DeletedExperiment(name, answer["deleted"]).message(self.tracking_uri))
        return answer

    def create(self, run_id: str, run: dict) -> None:
        """Have the writer create the run under our id (`run`: FastWrites.create_run's keywords: its
        tags, params and data set, in one transaction); returns at once (a SQL store only: creates_runs)."""
        self._send((CREATE, run_id, run))

    def open(self, run_id: str, system_metrics_s: float) -> None:
        """From now on the writer ends the run if this process dies, and samples the machine for it
        every `system_metrics_s` seconds (0: never); returns at once."""
        self._send((OPEN, run_id, system_metrics_s))

    def metrics(self, run_id: str, points: list[tuple]) -> None:
        """Hand over the run's points (name, value, timestamp, step; at most writer.BATCH_POINTS);
        returns at once, whatever the writer does (a warning counts the points still waiting here)."""
        self._send((METRICS, run_id, points), len(points))

    def artifact(self, run_id: str, path: str) -> None:
        """Store the file at `path` with the run, once the writer has created the run; waits for it."""
        self._answered((ARTIFACT, run_id, path))

    def end(self, run_id: str, status: str, tags: dict) -> None:
        """End the run with `status`, setting `tags` (why it ended) first; waits for it."""
        self._answered((END, run_id, status, tags))

    def end_ahead(self, run_id: str, status: str, tags: dict) -> None:
        """Send the run's end now, without waiting; `end` with the same arguments then waits for its
        answer instead of sending it again (a stack's runs end together: one transaction)."""
        message = (END, run_id, status, tags)
        self._send(message)
        self.ahead[run_id] = message

    def stop(self) -> None:
        """Have the writer end what is left open and exit, once it has stored everything sent; waits for it."""
        self._answered((STOP, None))

    def alive(self) -> bool:
        return self.failure is None and (self.process is None or self.process.poll() is None)

    def close_spares(self) -> None:
        for spare in self.spares:
            spare.close()
        self.spares = []

    def discard(self) -> None:
        """Close our side of a dead writer's connections (a replacement takes its place)."""
        self.close_spares()
        self.outbox.clear()
        with contextlib.suppress(OSError):
            self.conn.close()


_writers: dict[str, _Writer] = {}


def start_writer(tracking_uri: str, spares: int = 0) -> _Writer:
    """Start the writer early (it takes ~1.5 s to import MLflow) so it overlaps data loading. A writer
    that died or stalled is replaced here, in whichever process finds it so (a sweep, a forked worker):
    each then has its own; the next run goes on."""
    writer = _writers.get(tracking_uri)
    if writer is None or not writer.alive():
        if writer is not None:
            writer.discard()
        writer = _writers[tracking_uri] = _Writer(tracking_uri, spares)
    return writer


def spare_connections() -> list[tuple[str, Connection]]:
    """(tracking URI, connection) of every spare connection: one each for the workers about to be forked."""
    return [(uri, conn) for uri, writer in _writers.items() for conn in writer.spares]


def adopt_writer(spare: tuple[str, Connection] | None) -> None:
    """In a forked worker: use the spare connection (tracking URI, connection) to the parent's
    writer, if any; close every other inherited connection (the writer must see the parent's
    close when the parent dies, not wait on our copy). Without one, the worker starts its own."""
    pid = None
    for uri, writer in list(_writers.items()):
        if spare is not None and uri == spare[0]:
            pid = writer.pid
        for other in (writer.conn, *writer.spares):
            if spare is None or other is not spare[1]:
                other.close()
        writer.process = None  # the parent's child, not ours: never waited on here
    _writers.clear()
    if spare is not None:
        _writers[spare[0]] = _Writer(spare[0], conn=spare[1], pid=pid)


def hand_over(spare: tuple[str, Connection]) -> None:
    """In the parent, once a worker is forked with `spare`: only the worker holds it now, so the
    writer sees it close when that worker dies."""
    writer = _writers.get(spare[0])
    if writer is not None and spare[1] in writer.spares:
        writer.spares.remove(spare[1])
    spare[1].close()


def stop_writers(wait: bool = True) -> None:
    """Stop every writer once it has stored what it was sent (within the writer timeout); `wait=False`:
    close the connections and go (a writer still importing MLflow exits by itself when it reads them closed)."""
    for writer in list(_writers.values()):
        with contextlib.suppress(Exception):
            writer.close_spares()
            if not wait or not writer.alive():
                writer.discard()
                continue
            writer.stop()
            if writer.process is not None:
                writer.process.wait(timeout=10)
    _writers.clear()
