"""`optimstudy ui`: the MLflow UI over the same store a run would use."""
import os

from optimstudy.errors import UsageError
from optimstudy.serve import installed_program, run_server
from optimstudy.tracking import artifact_root, ensure_store, resolve_tracking_uri


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    command = [installed_program("mlflow"), "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    root = artifact_root(tracking_uri)
    if root:
        command += ["--default-artifact-root", root, "--serve-artifacts"]
    return command


def serve_ui(tracking_uri: str | None, host: str, port: int) -> int:
    tracking_uri = resolve_tracking_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"the store is a tracking server: open {tracking_uri} in a browser")
        return 0
    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1-65535, got {port}")
    ensure_store(tracking_uri)
    # MLflow's job runner (8 processes, for GenAI jobs such as LLM judges) is of no use to training
    # runs: without it the UI is up in ~6 s instead of 10-16 s on 2 cores. The variable overrides.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return run_server(ui_command(tracking_uri, host, port),
                      f"MLflow UI for {tracking_uri}\n  open http://{host}:{port}  (Ctrl-C stops it)", env=env)
