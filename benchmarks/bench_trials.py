"""Per-trial bookkeeping of a sweep (Optuna + MLflow), in ms per trial, at 100, 1,000 and 10,000 trials.

One real `python -m optimstudy sweep SPEC --workers 1` in a fresh temporary folder (its own
SQLite tracking store and Optuna journal), on a generated grid of many tiny trials: linreg, a
few SGD steps each, learning rates x seeds. The study's own completion times give the wall
time per trial over the 100 trials before the 100th, 1,000th and 10,000th: one sweep gives
every point, so "flat" compares the cost of a trial in a study of that size. Bookkeeping is
that minus the trial's own training (the same configuration run untracked in this process,
median of many): claiming the trial, creating and ending its MLflow run with its params and
tags, Optuna's ask/tell and the storage writes.

    python benchmarks/bench_trials.py [--quick]      # quick: 300 trials (points at 100 and 300)
"""
import os
import time

from common import comparison, machine, median, options, say, sgd_grid_spec, spread, sweep_in_fresh_folder, write_result

NAME = "trials"
TARGET_MS = 40.0  # bookkeeping per trial
FLAT_TARGET = 1.1  # ms/trial at the largest size / at 100 trials
STEPS = 20
WINDOW = 100  # trials per measured window


def spec_text(trials: int) -> str:
    """linreg x SGD: `trials` = learning rates x seeds, STEPS steps each."""
    seeds = 100 if trials >= 1000 else 10
    points = trials // seeds
    return sgd_grid_spec("bench_trials", "bench-trials", f"per-trial bookkeeping benchmark: {points} learning rates "
                         f"x {seeds} seeds, {STEPS} steps each", problem="linreg", steps=STEPS, seeds=seeds,
                         lr=f"{{ log = [1e-4, 1e-1], points = {points} }}", threads=1)


def run_sweep(spec: str, data_dir: str | None) -> tuple[float, list[float]]:
    """(seconds of the whole command, completion times of the trials in order, in seconds)."""
    command_s, _, trials = sweep_in_fresh_folder(NAME, spec, "bench-trials", 1, data_dir)
    return command_s, sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)


def ms_per_trial_at(done: list[float], n: int) -> float:
    """Mean wall ms per trial over the WINDOW trials that end with the n-th."""
    first = max(0, n - 1 - WINDOW)
    return 1000 * (done[n - 1] - done[first]) / (n - 1 - first)


def training_ms(data_dir: str | None, repeats: int = 30) -> float:
    """ms of one trial's own training, untracked, in this process (median)."""
    from optimstudy.run.config import RunConfig
    from optimstudy.run.runner import execute

    times = []
    for index in range(repeats + 3):
        config = RunConfig(problem="linreg", optimizer="sgd", lr=1e-3 * (1 + index % 7), seed=index % 10,
                           steps=STEPS, batch_size=64, device="cpu", threads=1)
        started = time.perf_counter()
        execute(config, None, data_dir=data_dir)
        if index >= 3:  # the first ones load the data and warm torch up
            times.append(time.perf_counter() - started)
    return 1000 * median(times)


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    data_dir = args.data_dir or os.environ.get("OPTIMSTUDY_DATA_DIR")
    trials = 300 if args.quick else 10_000
    sizes = [n for n in (100, 300, 1_000, 10_000) if n <= trials and (n != 300 or args.quick)]
    train_ms = training_ms(data_dir)
    say(f"{NAME}: one sweep of {trials} linreg trials of {STEPS} steps (training alone {train_ms:.1f} ms a trial)")
    command_s, done = run_sweep(spec_text(trials), data_dir)
    if len(done) != trials:
        raise SystemExit(f"{NAME}: expected {trials} complete trials, got {len(done)}")
    wall = {n: ms_per_trial_at(done, n) for n in sizes}
    bookkeeping = {n: wall[n] - train_ms for n in sizes}
    largest = sizes[-1]
    rows = [comparison(f"per-trial bookkeeping (Optuna + MLflow) at {n:,} trials", bookkeeping[n], TARGET_MS,
                       at_least=False, unit="ms", digits=1,
                       context=f"{wall[n]:.1f} ms/trial wall - {train_ms:.1f} ms training; linreg, {STEPS} steps")
            for n in sizes]
    rows.append(comparison(f"per-trial bookkeeping: {largest:,} trials / 100 trials (flat)",
                           bookkeeping[largest] / bookkeeping[100], FLAT_TARGET, at_least=False,
                           context=f"{bookkeeping[largest]:.1f} vs {bookkeeping[100]:.1f} ms"))
    gaps = [1000 * (b - a) for a, b in zip(done, done[1:])]
    measurements = {
        "trials": trials, "command_s": round(command_s, 1), "training_ms_per_trial": round(train_ms, 2),
        "wall_ms_per_trial": {str(n): round(v, 2) for n, v in wall.items()},
        "bookkeeping_ms_per_trial": {str(n): round(v, 2) for n, v in bookkeeping.items()},
        "gap_ms_between_completions": spread(gaps),
    }
    settings = {"spec": spec_text(trials), "command": "python -m optimstudy sweep SPEC --workers 1 --json",
                "window": f"mean over the {WINDOW} trials ending at each size",
                "tracking": "the sweep's own fresh ./mlruns (SQLite) and Optuna journal"}
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
