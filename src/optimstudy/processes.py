"""How optimstudy's processes stop: SIGTERM and SIGHUP the way Ctrl-C does, the quick exit, the
watchdog that ends a run past its time limit or stalled, and a child that dies with its parent.

Standard library only: the MLflow writer, a plain script started without torch, uses it too.
"""
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

from optimstudy.errors import TrialTimeout, UsageError

# `kill` or a CI timeout (SIGTERM) and a closed terminal (SIGHUP) must stop work as Ctrl-C does:
# trials and runs marked, workers and servers stopped, the resume hint printed
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupted_by_signals():
    """Within it, STOP_SIGNALS raise KeyboardInterrupt; the previous handlers come back after. Only
    the main thread may set handlers: in another thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, raise_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C (SIGINT) held back within it, and delivered at its end. A process forked within it
    starts with SIGINT held too, so a Ctrl-C sent to the process group right at the fork cannot
    interrupt it before it calls `leave_interrupts`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def stops_deferred():
    """Within it, Ctrl-C and STOP_SIGNALS are noted, not acted on; at its end the first one noted is
    raised again, to the handlers that were there before (a KeyboardInterrupt, usually, at that point).
    For a step that must not be cut in half: a trial set RUNNING in the study but not yet in the list
    of what an interrupt fails. Only the main thread may set handlers: in another thread it defers nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum))
                for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if noted:
            signal.raise_signal(noted[0])


def leave_interrupts() -> None:
    """In a helper process forked within `interrupts_held`: Ctrl-C reaches the whole process group,
    and the process that forked this one answers it, with one line, and ends this one; here it
    would print a second traceback. Ignored, then SIGINT let through again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> bool:
    """Linux: have the kernel SIGKILL this process the moment the thread that started it ends,
    however it ends (`kill -9` of a sweep's process group too), through prctl(PR_SET_PDEATHSIG).
    For a sweep's workers: they keep their own session (a terminal's Ctrl-C reaches only the sweep,
    which relays it), so a signal to the sweep's group misses them, and a worker left running a
    trial would meet the next command on the same stores. `parent_pid`: the parent as the child
    saw it before the call; if it is gone already, this process exits at once. False off Linux
    (nothing set: a worker then stops after its trial, when the sweep's pipe closes)."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # it died between the fork and the prctl: nobody will signal us
        quick_exit(0)
    return True


def quick_exit(code: int) -> None:
    """Flush the standard streams and end the process now, skipping the interpreter's teardown:
    module by module it is slow with torch, MLflow and pandas loaded (and with the writer's MLflow
    and SQLAlchemy: docs/performance.md), which a user or a sweep would wait for. For a process
    whose work is committed; the caller runs what must run first (atexit handlers: cli.exit_without_teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing to flush to
            pass
    os._exit(code)


# ---- the watchdog of a run: a time limit and a stall guard ------------------------------------

STALL_VARIABLE = "OPTIMSTUDY_STALL_TIMEOUT_S"
# No training step for this long ends a run (docs/reliability.md says why 10 minutes): a problem
# whose data or forward never returns must not hold a sweep's worker for ever.
DEFAULT_STALL_S = 600.0
GRACE_S = 5.0  # how long each of the watchdog's gentler ways is given before the next one
EXIT_TIMED_OUT = 124  # a process the watchdog ended (as timeout(1) exits)
_INTERRUPT_SIGNAL = signal.SIGUSR1


def stall_timeout_s() -> float | None:
    """The stall guard's limit in seconds, from OPTIMSTUDY_STALL_TIMEOUT_S (0: off); a bad value is a UsageError."""
    text = os.environ.get(STALL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_STALL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise UsageError(f"{STALL_VARIABLE}={text!r} must be a number of seconds >= 0 (0 turns the stall guard off; "
                         f"default {DEFAULT_STALL_S:g})")
    return value or None


def check_trial_timeout(seconds: float | None) -> None:
    """--trial-timeout (None: no limit): a positive, finite number of seconds, else a UsageError."""
    if seconds is not None and not (seconds > 0 and seconds != float("inf")):
        raise UsageError(f"--trial-timeout must be a positive number of seconds, got {seconds:g}")


class Watchdog:
    """Ends a run that goes past `limit_s` in all, or completes no step for `stall_s` (None: no limit).

        with Watchdog(limit_s=3600, stall_s=600, on_stuck=[fail_the_trial]) as watchdog:
            train(..., progress=watchdog.progress(progress))   # each step: watchdog.beat()

    Three ways, each tried for GRACE_S before the next, because a Python thread cannot stop
    another one that is blocked inside C code:
    1. the training loop's next `beat()` raises TrialTimeout (a step boundary: nothing half-written);
    2. no step comes (a hung `data` or `forward`): the main thread gets SIGUSR1, whose handler
       raises TrialTimeout there; sleeps, socket reads and lock waits return to run it;
    3. still nothing (stuck in C, or signals blocked): the watchdog's own thread runs `on_stuck`
       (each action given the reason: FAIL the trial, end the MLflow run), then `last_resort`
       (given the reason; default: end the process with EXIT_TIMED_OUT; a sweep starts itself
       again in the same process: sweep.command.restart_sweep).
    Way 2 needs the main thread (a library user's run on another thread gets 1 and 3).
    """

    def __init__(self, limit_s: float | None = None, stall_s: float | None = None, on_stuck=(), what="the run",
                 last_resort=None):
        self.limit_s, self.stall_s, self.what = limit_s, stall_s, what
        self.on_stuck = list(on_stuck)
        self.last_resort = last_resort
        self.reason: str | None = None  # set once it fires
        self.step: int | None = None
        self.started: float | None = None  # the time limit counts from begin()
        self.last = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="optimstudy-watchdog", daemon=True)
        self.main = threading.current_thread() is threading.main_thread()
        self.previous_handler = None

    @property
    def active(self) -> bool:
        return self.limit_s is not None or self.stall_s is not None

    def begin(self) -> None:
        """The run itself starts: the time limit counts from here, the stall clock starts again (what
        came before, such as opening the stores, is watched by the stall guard only)."""
        self.started = self.last = time.monotonic()

    def beat(self, step: int | None = None) -> None:
        """A step is done: the stall clock starts again; past a limit, TrialTimeout is raised here."""
        self.last = time.monotonic()
        self.step = step if step is not None else self.step
        if self.reason is not None:
            raise TrialTimeout(self.reason)

    def progress(self, inner=None):
        """A training loop's `progress(step, total)` that beats, then calls `inner` (may be None)."""
        def progress(step, total):
            self.beat(step)
            if inner is not None:
                inner(step, total)
        return progress

    def __enter__(self):
        if not self.active:
            return self
        if self.main:
            self.previous_handler = signal.signal(_INTERRUPT_SIGNAL, self._interrupt)
        self.last = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.active:
            self.done.set()
            self.thread.join()  # before the handler goes: a late signal must still find ours
            if self.main:
                signal.signal(_INTERRUPT_SIGNAL, self.previous_handler)
        return False

    def _interrupt(self, signum, frame):
        if self.reason is not None and not self.done.is_set():
            raise TrialTimeout(self.reason)

    def _expired(self) -> str | None:
        now = time.monotonic()
        at = "" if self.step is None else f" (at step {self.step})"
        if self.limit_s is not None and self.started is not None and now - self.started > self.limit_s:
            return (f"timed out: {self.what} ran longer than its limit of {self.limit_s:g} s "
                    f"(trial_timeout_s, --trial-timeout){at}")
        if self.stall_s is not None and now - self.last > self.stall_s:
            since = "started" if self.step is None else f"completed step {self.step}"
            return (f"stalled: {self.what} completed no training step for {self.stall_s:g} s since it {since} "
                    f"(the stall guard, {STALL_VARIABLE})")
        return None

    def _watch(self) -> None:
        limits = [limit for limit in (self.limit_s, self.stall_s) if limit is not None]
        tick = min(1.0, max(0.05, min(limits) / 20))
        while not self.done.wait(tick):
            reason = self._expired()
            if reason is not None:
                break
        else:
            return
        self.reason = reason
        if self.done.wait(GRACE_S):  # 1: the next step raises
            return
        if self.main:  # 2: interrupt whatever the main thread waits on
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(threading.main_thread().ident, _INTERRUPT_SIGNAL)
            if self.done.wait(GRACE_S):
                return
        # 3: the training thread is stuck where nothing reaches it: record why here, and end the process
        print(f"optimstudy: {reason}; it does not respond (stuck in code that cannot be interrupted), so "
              f"process {os.getpid()} ends" + ("" if self.last_resort else f" (exit {EXIT_TIMED_OUT})"),
              file=sys.stderr, flush=True)
        for action in self.on_stuck:
            try:
                action(reason)
            except BaseException as error:  # noqa: BLE001  the next action, and the exit, still come
                print(f"optimstudy: while ending the timed-out run: {type(error).__name__}: {error}",
                      file=sys.stderr, flush=True)
        if self.last_resort is not None:
            try:
                self.last_resort(reason)
            except BaseException as error:  # noqa: BLE001  it failed: the exit below still comes
                print(f"optimstudy: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        quick_exit(EXIT_TIMED_OUT)
