"""Peak memory of one run, each in a fresh Python process: ru_maxrss after the run.

The target is for one MNIST run (mnist_mlp on the data root, 3 epochs; 1 with --quick):
under 1.5 GB for the training process. The same run tracked (its writer process
reported apart) and, without --quick, the CNN and one epoch of full-size Fashion-MNIST
(staged into a temporary folder) are reported beside it.

    python benchmarks/bench_memory.py [--quick]
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import comparison, machine, options, say, stage_fashion_mnist, threads, write_result

NAME = "memory"
TARGET_MB = 1500  # 1.5 GB (decimal) peak RSS for one MNIST run


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1000
    return float("nan")


def child(options_json: str) -> None:
    """Runs in the fresh process: one run, then print peak RSS as JSON on the last line."""
    job = json.loads(options_json)
    import torch  # noqa: F401  (counted in the start-up footprint, as any run pays it)

    from optimstudy import RunConfig
    from optimstudy.run.runner import Tracking, execute, load_data

    after_imports = rss_mb()
    config = RunConfig(problem=job["problem"], optimizer="sgd", lr=0.05, epochs=job["epochs"],
                       threads=job["threads"]).resolved()
    data = load_data(config, job["data_dir"])
    after_data = rss_mb()
    tracking = None
    if job["tracking_uri"]:
        from optimstudy.tracking.client import ensure_store
        from optimstudy.tracking.writer_handle import start_writer

        ensure_store(job["tracking_uri"])
        start_writer(job["tracking_uri"])
        tracking = Tracking(job["tracking_uri"], "bench-memory")
    history, _ = execute(config, tracking, data=data)
    writer_peak = None
    if tracking is not None:
        from optimstudy.tracking.writer_handle import _writers, stop_writers
        # count the training process's pages that the child shared between fork and exec
        writer_pid = next(iter(_writers.values())).process.pid
        with open(f"/proc/{writer_pid}/status") as status:
            writer_peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1000
        stop_writers()
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000,  # ru_maxrss is in KiB
        "writer_peak_rss_mb": writer_peak,
        "rss_after_imports_mb": after_imports, "rss_after_data_mb": after_data,
        "steps": history.steps[-1], "train_images": len(data.train), "wall_s": history.wall_s,
    }))


def measure(problem: str, epochs: float, torch_threads: int, data_dir: str | None, tracking_uri: str | None) -> dict:
    job = {"problem": problem, "epochs": epochs, "threads": torch_threads, "data_dir": data_dir,
           "tracking_uri": tracking_uri}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    if done.returncode != 0:
        raise SystemExit(f"{NAME}: the {problem} run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {k: round(v, 1) if isinstance(v, float) else v
            for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main(argv=None) -> dict:
    parser = options(NAME, __doc__.splitlines()[0])
    parser.add_argument("--child", help="(internal) run one job in this process")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    started = time.perf_counter()
    info = machine()
    torch_threads = threads(args)
    epochs = 1 if args.quick else 3
    data_dir = args.data_dir or os.environ.get("OPTIMSTUDY_DATA_DIR")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="optimstudy-bench-memory-") as folder:
        jobs = [("mnist_mlp", epochs, data_dir, None),
                ("mnist_mlp tracked", epochs, data_dir, f"sqlite:///{Path(folder) / 'mlruns' / 'mlflow.db'}")]
        if not args.quick:
            jobs.append(("mnist_cnn", epochs, data_dir, None))
            jobs.append(("fashion_mlp", 1, stage_fashion_mnist(Path(folder) / "data"), None))
        for label, job_epochs, job_data_dir, uri in jobs:
            say(f"{NAME}: {label}, {job_epochs} epoch(s), in a fresh process")
            runs[label] = measure(label.split()[0], job_epochs, torch_threads, job_data_dir, uri)

    mnist = runs["mnist_mlp"]
    rows = [comparison(
        f"peak memory of one MNIST run (mnist_mlp, {epochs} epoch(s), fresh process)", mnist["peak_rss_mb"],
        TARGET_MB, at_least=False, unit="MB", digits=0,
        context=f"{mnist['rss_after_imports_mb']:.0f} MB after imports; tracked: "
                f"{runs['mnist_mlp tracked']['peak_rss_mb']:.0f} MB + writer "
                f"{runs['mnist_mlp tracked']['writer_peak_rss_mb']:.0f} MB",
    )]
    if "mnist_cnn" in runs:
        rows.append(comparison(f"peak memory of one MNIST CNN run (mnist_cnn, {epochs} epochs)",
                               runs["mnist_cnn"]["peak_rss_mb"], None, at_least=False, unit="MB", digits=0))
    if "fashion_mlp" in runs:
        rows.append(comparison("peak memory of one Fashion-MNIST run (fashion_mlp, 60k images, 1 epoch)",
                               runs["fashion_mlp"]["peak_rss_mb"], None, at_least=False, unit="MB", digits=0))
    settings = {"measure": "resource.getrusage ru_maxrss of the training process; the writer's VmHWM from /proc",
                "torch_threads": torch_threads, "optimizer": "SGD", "lr": 0.05, "batch_size": 64}
    return write_result(NAME, args, rows, settings, {"runs": runs}, started, info)


if __name__ == "__main__":
    main()
