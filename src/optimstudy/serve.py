"""Run a server program (MLflow UI, optuna-dashboard) in the foreground until Ctrl-C, SIGTERM
or SIGHUP, and never let it outlive the command that started it.

A server is a process tree (`mlflow server` is the CLI and uvicorn, plus a job runner when job
execution is on). It starts in a session of its own, so a terminal's Ctrl-C reaches only us;
we then stop its whole group. Signalling the top process alone leaves the rest running for
seconds, and a SIGKILL to it alone would orphan uvicorn with the port still taken.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from optimstudy.errors import UsageError


def installed_program(name: str) -> str:
    """The path of a command installed with this Python (the venv's bin/ first), or a UsageError."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise UsageError(f"the {name} command is not installed in this environment (pip install {name})")
    return found


def run_server(command: list[str], banner: str, env: dict | None = None) -> int:
    # `kill`, a closed terminal or a CI timeout must stop the server too, not only Ctrl-C
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    process = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        print(banner, flush=True)
        return process.wait()
    except KeyboardInterrupt:
        stop_server(process)
        print("stopped.", flush=True)
        return 0
    finally:
        stop_server(process)  # a no-op once the group is gone
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_server(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group; SIGKILL what outlives grace_s or a second Ctrl-C."""
    group = process.pid  # start_new_session made the server its group's leader
    if not _group_alive(group, process):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while _group_alive(group, process) and time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait()


def _group_alive(group: int, process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader: a zombie still counts as a member of its group
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
