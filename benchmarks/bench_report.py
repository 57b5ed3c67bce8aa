"""How long `optimstudy report` takes, and how much memory, on a large store.

A generated store of RUNS runs x STEPS steps (sgd and adam, 25 lrs x 10 seeds, linreg; each
step logs train_loss, grad_norm, update_norm and lr, plus a validation pass every 50 steps:
2M points at full size), written the way the writer writes it: runs, params and tags (the
problem tags included, as runner.execute writes them) through MlflowClient, the points straight
into MLflow's metrics table (logging 2M points through the API would take minutes and is not
what is measured). Then `optimstudy report` runs in a subprocess as a user runs it, REPEATS
times: wall time of the whole command (and after its imports), and peak memory of the whole
process tree (the report and the processes it forks to draw), sampled every 10 ms as the sum of
each process's PSS (proportional set size: a page a fork shares with its parent counts once,
split between them); the sum of RSS (which counts shared pages once per process) is beside it.

    python benchmarks/bench_report.py [--quick]
"""
import json
import os
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
REPEATS = 3


def make_store(folder: Path, runs: int, steps: int) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from optimstudy.problems.registry import resolve_problem
    from optimstudy.run.config import RunConfig
    from optimstudy.run.runner import problem_tags
    from optimstudy.run.training import load_data
    from optimstudy.tracking.client import ensure_store, experiment_id

    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    ensure_store(uri)
    client = MlflowClient(uri)
    experiment = experiment_id(uri, "scale")
    parent = client.create_run(experiment, tags={"optimstudy.kind": "sweep", "optimstudy.study": "scale"}).info.run_id
    problem_facts = problem_tags(resolve_problem("linreg"), load_data(RunConfig(problem="linreg").resolved()))
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
            "mlflow.parentRunId": parent, "optimstudy.phase": "grid", "optimstudy.optimizer_label": optimizer,
            **problem_facts}).info.run_id
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


def tree_memory(process: subprocess.Popen, every_s: float = 0.01) -> dict:
    """Until `process` ends: the peak over time of the sum of PSS, and of RSS, over it and its children."""
    import psutil

    root = psutil.Process(process.pid)
    peak_pss = peak_rss = 0
    while process.poll() is None:
        pss = rss = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    info = member.memory_full_info()
                    pss, rss = pss + info.pss, rss + info.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        except psutil.NoSuchProcess:
            break
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(every_s)
    return {"tree_pss_gb": peak_pss / 2 ** 30, "tree_rss_gb": peak_rss / 2 ** 30}


def timed_report(uri: str, out: Path) -> dict:
    # the modules every report imports: their peak is the floor
    code = ("import resource, sys, time; from optimstudy.cli import main; "
            "import optimstudy.report.build, optimstudy.tracking.reader, optimstudy.report.plotting; "
            "floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; started = time.perf_counter(); "
            "code = main(sys.argv[1:]); wall = time.perf_counter() - started; "
            "print('RESULT', code, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, floor, "
            "'torch' in sys.modules, file=sys.stderr)")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, "report", "--tracking-uri", uri, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    memory = tree_memory(process)
    stdout, stderr = process.communicate()
    total = time.perf_counter() - started
    line = next((row for row in stderr.splitlines() if row.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"report failed:\n{stderr[-3000:]}")
    _, code, wall, rss_kb, floor_kb, torch = line.split()
    return {"exit": int(code), "report_s": float(wall), "process_s": total, **memory,
            "peak_rss_gb": int(rss_kb) / 2 ** 20, "imports_rss_gb": int(floor_kb) / 2 ** 20,
            "above_imports_gb": (int(rss_kb) - int(floor_kb)) / 2 ** 20, "imported_torch": torch == "True",
            "stderr": [row for row in stderr.splitlines() if row.startswith("report:")]}


def main(argv=None) -> dict:
    from common import median, options

    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    runs, steps = (100, 500) if args.quick else (500, 1000)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="optimstudy-bench-report-") as folder:
        folder = Path(folder)
        made = time.perf_counter()
        # in its own process: making the store imports torch, and a child's peak RSS starts at its parent's
        made_by = subprocess.run([sys.executable, "-c", "import json, sys; from pathlib import Path; "
                                  "from bench_report import make_store; "
                                  "print(json.dumps(make_store(Path(sys.argv[1]), int(sys.argv[2]), "
                                  "int(sys.argv[3]))))",
                                  str(folder), str(runs), str(steps)], capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parent, check=True)
        uri, points = json.loads(made_by.stdout.strip().splitlines()[-1])
        say(f"{NAME}: {runs} runs x {steps} steps = {points:,} points written in {time.perf_counter() - made:.0f} s; "
            f"now `optimstudy report`, {REPEATS} times")
        repeats = [timed_report(uri, folder / "out") for _ in range(REPEATS)]
    info = machine()  # after the reports: it imports torch, and a child's peak RSS starts at its parent's
    measured = {key: median([r[key] for r in repeats]) for key in repeats[0]
                if isinstance(repeats[0][key], float)}
    measured.update(repeats=repeats, imported_torch=any(r["imported_torch"] for r in repeats))
    say(json.dumps({k: v for k, v in measured.items() if k != "repeats"}))
    whole = ", ".join(f"{r['process_s']:.1f}" for r in repeats)
    comparisons = [
        comparison(f"report of {runs} runs x {steps} steps (whole command)", measured["process_s"], TARGET_S,
                   at_least=False, unit="s", digits=1,
                   context=f"median of {REPEATS}: {whole} s; {measured['report_s']:.1f} s after the imports; "
                           f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"),
        comparison(f"report of {runs} runs x {steps} steps, peak memory", measured["tree_pss_gb"], TARGET_GB,
                   at_least=False, unit="GB",
                   context=f"process tree, sum of PSS, median of {REPEATS}; the report process alone "
                           f"{measured['peak_rss_gb']:.2f} GB RSS, {measured['imports_rss_gb']:.2f} GB of it the "
                           f"imports (pandas, matplotlib; torch "
                           f"{'imported' if measured['imported_torch'] else 'never imported'}); sum of RSS "
                           f"{measured['tree_rss_gb']:.2f} GB (counts pages shared with the forks once per process)"),
    ]
    return write_result(NAME, args, comparisons, {"runs": runs, "steps": steps, "points": points,
                                                  "repeats": REPEATS}, measured, started, info)


if __name__ == "__main__":
    main()
