"""Sweep throughput: `optimstudy sweep --workers 2` vs `--workers 1`, in trials per minute.

Each sweep is the real command (`python -m optimstudy sweep SPEC --workers N --json`) run
as a subprocess in a fresh temporary folder, so it creates its own tracking store
(./mlruns/mlflow.db) and Optuna journal there. Two specs: experiments/quickstart.toml as a
user runs it (76 short trials: MNIST MLP, linreg, the valley), and a generated grid of longer
MNIST MLP trials (SGD, a few learning rates x seeds, the torch threads per worker set in the
spec). Sweeps alternate 1, 2, 2, 1, ... Throughput is counted from the wall time of the whole
command (process start, imports, data, store and study set-up included), from the sweep's own
"N trials run now in X s" (trials only), and in steady state (after every worker's first
trial). The set-up that no worker can share (everything before the first trial and after the
last) bounds what 2 workers can do on 2 cores: (set-up + trials) / (set-up + trials / 2),
printed beside the whole-command ratio.

    python benchmarks/bench_workers.py [--quick]
"""
import json
import os
import re
import time
from pathlib import Path

from common import (
    comparison,
    interleave,
    machine,
    median,
    options,
    say,
    sgd_grid_spec,
    spread,
    sweep_in_fresh_folder,
    toml_list,
    write_result,
)

NAME = "workers"
TARGET = 1.7  # 2 workers at least 1.7x the trials per minute of 1 on 2 cores
STEPS = 300
LRS = (0.01, 0.03, 0.1, 0.3)
TRIALS_RUN = re.compile(r"(\d+) trials run now in ([0-9.]+) s")


def spec_text(seeds: int, threads: int) -> str:
    """A grid of len(LRS) x `seeds` trials of the MNIST MLP, `threads` torch threads per worker."""
    return sgd_grid_spec("bench_workers", "bench-workers", f"sweep throughput benchmark: {len(LRS)} learning rates "
                         f"x {seeds} seeds", problem="mnist_mlp", steps=STEPS, seeds=seeds, lr=toml_list(LRS),
                         threads=threads)


QUICKSTART = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.toml"


def quickstart_grid() -> str:
    """The quickstart without its [confirm] table and seed stacking: one phase of 76 trials, each run alone,
    comparable with the measurements before either was added."""
    text, removed = re.subn(r"\n\[confirm\][^\n]*\nseeds = \d+[^\n]*\n", "\n", QUICKSTART.read_text())
    text, unstacked = re.subn(r"\nstack_seeds = true[^\n]*\n", "\n", text)
    if (removed, unstacked) != (1, 1):
        raise SystemExit(f"{NAME}: expected one [confirm] table and stack_seeds = true in {QUICKSTART}")
    return text


def run_sweep(spec: str, study: str, workers: int, expected: int, data_dir: str | None) -> dict:
    """One sweep in a fresh folder; seconds for the whole command and for the trials alone."""
    command_s, done, trials = sweep_in_fresh_folder(NAME, spec, study, workers, data_dir, timeout=600)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    complete = summary["trials"]["complete"]
    if complete != expected or summary["trials"]["failed"]:
        raise SystemExit(f"{NAME}: expected {expected} complete trials, got {summary['trials']}")
    match = TRIALS_RUN.search(done.stderr)
    if match is None:
        raise SystemExit(f"{NAME}: no 'trials run now in' line in the sweep's output:\n{done.stderr[-2000:]}")
    trials_s = float(match.group(2))
    return {"command_s": command_s, "trials_s": trials_s, "setup_s": command_s - trials_s,
            "steady_per_minute": steady_throughput(trials)}


def steady_throughput(trials: list) -> float:
    """Trials per minute once every worker has finished its first trial (start-up excluded).

    Counted from the study's own completion times: the trials completed after the moment the
    slowest worker finished its first one, over the time from then to the last completion.
    """
    finished = sorted((t.datetime_complete, t.user_attrs.get("pid")) for t in trials if t.datetime_complete)
    first_per_worker = {}
    for completed, pid in finished:
        first_per_worker.setdefault(pid, completed)
    warm = max(first_per_worker.values())
    later = [completed for completed, _ in finished if completed > warm]
    if not later:
        return float("nan")
    return 60 * len(later) / (later[-1] - warm).total_seconds()


def compare(label: str, spec: str, study: str, trials: int, repeats: int, data_dir) -> tuple[list[dict], dict]:
    """Rows and measurements of 1 vs 2 workers on one spec, `repeats` sweeps per side, interleaved."""
    sides = {f"{n}_worker{'s' if n > 1 else ''}": (lambda n=n: run_sweep(spec, study, n, trials, data_dir))
             for n in (1, 2)}
    times = interleave(sides, repeats, warmup=False)
    one, two = times["1_worker"], times["2_workers"]
    per_minute = {side: {"command": 60 * trials / median(values["command_s"]),
                         "trials_only": 60 * trials / median(values["trials_s"])} for side, values in times.items()}
    setup, work = median(one["setup_s"]), median(one["trials_s"])
    bound = (setup + work) / (setup + work / 2)  # 2 workers halving the trials, the set-up unchanged
    rows = [
        comparison(f"sweep throughput, {label}: 2 workers / 1 worker (whole command, trials per minute)",
                   median(one["command_s"]) / median(two["command_s"]), TARGET, at_least=True,
                   context=f"{per_minute['2_workers']['command']:.0f} vs {per_minute['1_worker']['command']:.0f} "
                           f"trials/min, {trials} trials; {median(two['command_s']):.1f} vs "
                           f"{median(one['command_s']):.1f} s; set-up outside the trials {setup:.1f} s of "
                           f"{setup + work:.1f} s, so at most {bound:.2f}x on 2 cores"),
        comparison(f"sweep throughput, {label}: 2 workers / 1 worker (trials only, process start-up and set-up "
                   "excluded)", median(one["trials_s"]) / median(two["trials_s"]), TARGET, at_least=True,
                   context=f"{per_minute['2_workers']['trials_only']:.0f} vs "
                           f"{per_minute['1_worker']['trials_only']:.0f} trials/min"),
        comparison(f"sweep throughput, {label}: 2 workers / 1 worker (steady state, after every worker's first "
                   "trial)", median(two["steady_per_minute"]) / median(one["steady_per_minute"]), TARGET,
                   at_least=True, context=f"{median(two['steady_per_minute']):.0f} vs "
                                          f"{median(one['steady_per_minute']):.0f} trials/min"),
    ]
    measurements = {
        "trials_per_sweep": trials, "sweeps_per_side": repeats, "amdahl_bound_2_workers": round(bound, 3),
        "seconds": {side: {k: spread(v) for k, v in values.items()} for side, values in times.items()},
        "trials_per_minute": {side: {k: round(v, 1) for k, v in values.items()} for side, values in per_minute.items()},
    }
    return rows, measurements


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy.run.config import default_threads

    torch_threads = args.threads or default_threads(workers=2)  # both sides: what fits 2 workers
    seeds, repeats = (2, 1) if args.quick else (6, 2)
    trials = len(LRS) * seeds
    spec = spec_text(seeds, torch_threads)
    data_dir = args.data_dir or os.environ.get("OPTIMSTUDY_DATA_DIR")
    say(f"{NAME}: the quickstart (76 trials), then sweeps of {trials} trials (mnist_mlp, {STEPS} steps each); "
        f"{repeats} per side")
    quick_rows, quick_measured = compare("quickstart", quickstart_grid(), "quickstart", 76, repeats, data_dir)
    grid_rows, grid_measured = compare(f"{trials} MNIST trials", spec, "bench-workers", trials, repeats, data_dir)
    settings = {"specs": {"quickstart": str(QUICKSTART.relative_to(QUICKSTART.parent.parent)), "grid": spec},
                "command": "python -m optimstudy sweep SPEC --workers N --json",
                "torch_threads_per_worker": f"the quickstart: optimstudy's default; the grid: {torch_threads}",
                "tracking": "each sweep's own fresh ./mlruns (SQLite)",
                "trials_only": "the sweep's 'trials run now in X s' (after store, study and data set-up)"}
    return write_result(NAME, args, quick_rows + grid_rows, settings,
                        {"quickstart": quick_measured, "grid": grid_measured}, started, info)


if __name__ == "__main__":
    main()
