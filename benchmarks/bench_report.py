"""How long `optimstudy report` takes, and how much memory, on a large store.

A generated store of RUNS runs x STEPS steps (sgd and adam, 25 lrs x 10 seeds, linreg; each
step logs train_loss, grad_norm, update_norm and lr, plus a validation pass every 50 steps:
2M points at full size), written the way the writer writes it: runs, params and tags through
MlflowClient, the points straight into MLflow's metrics table (logging 2M points through the
API would take minutes and is not what is measured). Then `optimstudy report` runs in a
subprocess as a user runs it: wall time of the whole command (and after its imports) and
peak RSS (its own, from getrusage; the imports' part stated beside it).

    python benchmarks/bench_report.py [--quick]
"""
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import comparison, machine, say, write_result

NAME = "report"
TARGET_S, TARGET_GB = 10.0, 1.0
EVAL_EVERY = 50


def make_store(folder: Path, runs: int, steps: int) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from optimstudy.tracking import ensure_store, experiment_id

    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    ensure_store(uri)
    client = MlflowClient(uri)
    experiment = experiment_id(uri, "scale")
    parent = client.create_run(experiment, tags={"optimstudy.kind": "sweep", "optimstudy.study": "scale"}).info.run_id
    rng = np.random.default_rng(0)
    step = np.arange(1, steps + 1)
    evals = np.arange(0, steps + 1, EVAL_EVERY)
    rows = []
    for index in range(runs):
        optimizer = ("sgd", "adam")[index % 2]
        lr = float(np.geomspace(1e-4, 1, 25)[(index // 2) % 25])
        seed = index // 50
        run_id = client.create_run(experiment, tags={
            "optimstudy.kind": "trial", "optimstudy.study": "scale", "optimstudy.trial": str(index),
            "mlflow.parentRunId": parent, "optimstudy.phase": "grid", "optimstudy.optimizer_label": optimizer}).info.run_id
        params = {"problem": "linreg", "optimizer": optimizer, "lr": lr, "seed": seed, "batch_size": 64,
                  "steps": steps, "loss": "mse", "zero_grad": True, "accumulate": 1, "device": "cpu"}
        final = 0.01 + abs(np.log10(lr) + 2) * 0.01 + 0.001 * rng.random()
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric(k, v, 0, steps) for k, v in (
                             ("final_val_loss", final), ("diverged", 0.0), ("wall_s", 5.0), ("samples_per_s", 1e4))])
        client.set_terminated(run_id, "FINISHED")
        loss = final + np.exp(-step / 200) + 0.01 * rng.random(steps)
        for key, values, at in (("train_loss", loss, step), ("grad_norm", 2 * loss, step),
                                ("update_norm", lr * loss, step), ("lr", np.full(steps, lr), step),
                                ("val_loss", final + np.exp(-evals / 200), evals)):
            rows += [(key, float(v), 0, run_id, int(s), 0) for v, s in zip(values, at)]
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)",
                       rows)
    return uri, len(rows)


def timed_report(uri: str, out: Path) -> dict:
    # the modules every report imports (torch alone is ~0.7 GB of RSS): their peak is the floor
    code = ("import resource, sys, time; from optimstudy.cli import main; "
            "import optimstudy.report, optimstudy.store, optimstudy.problems, optimstudy.plotting, mlflow; "
            "floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; started = time.perf_counter(); "
            "code = main(sys.argv[1:]); wall = time.perf_counter() - started; "
            "print('RESULT', code, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, floor, file=sys.stderr)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, "report", "--tracking-uri", uri, "--out", str(out)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    total = time.perf_counter() - started
    line = next((l for l in result.stderr.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"report failed:\n{result.stderr[-3000:]}")
    _, code, wall, rss_kb, floor_kb = line.split()
    return {"exit": int(code), "report_s": float(wall), "process_s": total, "peak_rss_gb": int(rss_kb) / 2 ** 20,
            "imports_rss_gb": int(floor_kb) / 2 ** 20, "above_imports_gb": (int(rss_kb) - int(floor_kb)) / 2 ** 20,
            "stderr": [l for l in result.stderr.splitlines() if l.startswith("report:")]}


def main(argv=None) -> dict:
    from common import options

    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    runs, steps = (100, 500) if args.quick else (500, 1000)
    with tempfile.TemporaryDirectory(prefix="optimstudy-bench-report-") as folder:
        folder = Path(folder)
        made = time.perf_counter()
        uri, points = make_store(folder, runs, steps)
        say(f"{NAME}: {runs} runs x {steps} steps = {points:,} points written in {time.perf_counter() - made:.0f} s; "
            "now `optimstudy report`")
        measured = timed_report(uri, folder / "out")
    say(json.dumps(measured))
    comparisons = [
        comparison(f"report of {runs} runs x {steps} steps (whole command)", measured["process_s"], TARGET_S,
                   at_least=False, unit="s", digits=1, context=f"{measured['report_s']:.1f} s after the imports"),
        comparison(f"report of {runs} runs x {steps} steps, peak memory", measured["peak_rss_gb"], TARGET_GB,
                   at_least=False, unit="GB",
                   context=f"{measured['imports_rss_gb']:.2f} GB of it the imports: torch, MLflow, matplotlib"),
    ]
    return write_result(NAME, args, comparisons, {"runs": runs, "steps": steps, "points": points},
                        measured, started, info)


if __name__ == "__main__":
    main()
