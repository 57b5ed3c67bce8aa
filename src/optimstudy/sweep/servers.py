"""`optimstudy ui` (the MLflow UI) and `optimstudy dashboard` (optuna-dashboard), in the foreground.

    optimstudy ui                                        # http://127.0.0.1:5000
    optimstudy dashboard experiments/quickstart.toml     # http://127.0.0.1:8080

A server runs until Ctrl-C, SIGTERM or SIGHUP and never outlives the command that started it.
It is a process tree (`mlflow server` is the CLI and uvicorn, plus a job runner when job
execution is on), started in a session of its own so that a terminal's Ctrl-C reaches only us;
we then stop its whole group. Signalling the top process alone leaves the rest running for
seconds, and a SIGKILL to it alone would orphan uvicorn with the port still taken.
"""
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from optimstudy.errors import UsageError, near
from optimstudy.processes import interrupted_by_signals
from optimstudy.tracking.client import artifact_root, ensure_store, resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords


def ui(tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
       experiment: str | None = None) -> int:
    """The MLflow UI over the same store a run would use; with `experiment`, its runs page's URL."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        page = ui_url(tracking_uri.rstrip("/"), tracking_uri, experiment)
        print(f"the store is a tracking server: open {hide_passwords(page)}")
        return 0
    check_port_free(host, port)
    # the store's URI goes through the environment (`mlflow server` reads MLFLOW_BACKEND_STORE_URI and
    # hands it to uvicorn the same way): a command line is readable by every user of the machine (ps)
    command = [installed_program("mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root(tracking_uri)
    if root:
        command += ["--default-artifact-root", root, "--serve-artifacts"]
    ensure_store(tracking_uri)
    url = ui_url(f"http://{host}:{port}", tracking_uri, experiment)
    # MLflow's job runner (8 processes, for GenAI jobs such as LLM judges) is of no use to training
    # runs: without it the UI is up much sooner on 2 cores (docs/performance.md). The variable overrides.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    return run_server(command, f"MLflow UI for {hide_passwords(tracking_uri)}\n  open {url}  (Ctrl-C stops it)",
                      env=env)


def ui_url(base: str, tracking_uri: str, experiment: str | None) -> str:
    """The page to open. MLflow 3's UI shows an experiment as a GenAI app (traces, token usage)
    unless told the workflow is machine learning; `workflowType` in the URL tells it, and it keeps
    that choice for the next visits. With an experiment: straight to its runs table."""
    if experiment is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    from optimstudy.tracking.reader import experiment_ids  # on first use: it imports pandas

    found = experiment_ids(tracking_uri)
    if experiment not in found:
        raise UsageError(f"no experiment '{experiment}'{near(experiment, list(found))} in "
                         f"'{hide_passwords(tracking_uri)}'; "
                         f"experiments: {', '.join(sorted(found)) or 'none'}")
    return f"{base}/#/experiments/{found[experiment]}/runs?workflowType=machine_learning"


def dashboard(spec_path: str | None = None, storage: str | None = None, host: str = "127.0.0.1",
              port: int = 8080) -> int:
    """optuna-dashboard on a sweep's study storage (the spec's default storage, or `storage`)."""
    from optimstudy.sweep.spec_reader import load_spec  # on first use: it imports torch
    from optimstudy.sweep.storages import open_existing_storage, storage_url  # on first use: it imports optuna

    if spec_path is None and storage is None:
        raise UsageError("give an experiment spec or --storage URL")
    name = load_spec(spec_path).name if spec_path else None
    url = storage_url(storage, name)
    check_port_free(host, port)
    open_existing_storage(url, f"run `optimstudy sweep {spec_path}` first")
    program = installed_program("optuna-dashboard")
    with _config_pipe(url) as fd:
        return run_server([program, "--from-config", f"/dev/fd/{fd}", "--host", host, "--port", str(port)],
                          f"optuna-dashboard on {hide_passwords(url)}\n  open http://{host}:{port}  (Ctrl-C stops it)",
                          pass_fds=(fd,))


@contextlib.contextmanager
def _config_pipe(storage_url: str):
    """optuna-dashboard takes its storage on the command line (readable by every user: ps) or in a
    TOML file (--from-config) and has no environment variable for it: the file it reads here is a
    pipe, /dev/fd/N, so the URI is never on a command line nor on disk. It fits the pipe's buffer,
    so it is written whole before the server starts."""
    read, write = os.pipe()
    text = f"[optuna_dashboard]\nstorage = {json.dumps(storage_url, ensure_ascii=False)}\n"  # a TOML string too
    with os.fdopen(write, "w") as pipe:
        pipe.write(text)
    try:
        yield read
    finally:
        os.close(read)


def check_port_free(host: str, port: int) -> None:
    """A busy port is bad input: say so before starting a server that would only fail (or reach
    the other server)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host '{host}' cannot be resolved: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not busy
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use (another server?); "
                                 f"stop it or pass --port with a free port") from None
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def installed_program(name: str) -> str:
    """The path of a command installed with this Python (the venv's bin/ first), or a UsageError."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise UsageError(f"the {name} command is not installed in this environment (pip install {name})")
    return found


def run_server(command: list[str], banner: str, env: dict | None = None, pass_fds=()) -> int:
    with interrupted_by_signals():  # `kill`, a closed terminal or a CI timeout stop the server too
        process = subprocess.Popen(command, start_new_session=True, env=env, pass_fds=pass_fds)
        try:
            print(banner, flush=True)
            return process.wait()
        except KeyboardInterrupt:
            stop_server(process)
            print("stopped.", flush=True)
            return 0
        finally:
            stop_server(process)  # a no-op once the group is gone


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
