"""How optimstudy's processes stop: SIGTERM and SIGHUP the way Ctrl-C does, and the quick exit.

Standard library only: the MLflow writer, a plain script started without torch, uses it too.
"""
import contextlib
import os
import signal
import sys
import threading

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


def leave_interrupts() -> None:
    """In a helper process forked within `interrupts_held`: Ctrl-C reaches the whole process group,
    and the process that forked this one answers it, with one line, and ends this one; here it
    would print a second traceback. Ignored, then SIGINT let through again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def quick_exit(code: int) -> None:
    """Flush the standard streams and end the process now, skipping the interpreter's teardown:
    module by module it takes ~1 s with torch, MLflow and pandas loaded (~0.7 s for the writer's
    MLflow and SQLAlchemy), which a user or a sweep would wait for. For a process whose work is
    committed; the caller runs what must run first (atexit handlers: cli.exit_without_teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing to flush to
            pass
    os._exit(code)
