"""Run a server program (MLflow UI, optuna-dashboard) in the foreground until Ctrl-C or SIGTERM.

The server gets its own session so that a terminal's Ctrl-C reaches only us; we then stop it
ourselves, so it never outlives the command that started it.
"""
import signal
import subprocess


def run_server(command: list[str], banner: str) -> int:
    process = subprocess.Popen(command, start_new_session=True)
    print(banner, flush=True)

    def on_terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_terminate)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print("stopped.", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
