"""`optimstudy ui`: the MLflow UI over the same store a run would use."""
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from optimstudy.errors import UsageError
from optimstudy.tracking import artifact_root, ensure_store, resolve_tracking_uri


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        raise UsageError("the mlflow command is not installed in this environment (pip install mlflow)")
    command = [mlflow, "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port),
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
    process = subprocess.Popen(ui_command(tracking_uri, host, port), start_new_session=True)
    print(f"MLflow UI for {tracking_uri}\n  open http://{host}:{port}  (Ctrl-C stops it)", flush=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        print("MLflow UI stopped.")
        return 0
