"""Tracking overhead: a run logging every step to MLflow vs the same run untracked.

Both sides call optimstudy.runner.execute() with the data preloaded: tracked with a
Tracking(uri, experiment) on a fresh SQLite store in a temporary folder, untracked with
None. Two ratios: the training loop's own time (History.wall_s) and end to end (execute()
as a whole: run creation, params and tags, training, the final flush and ending the run).
The store and the writer process are created once, before the timed repetitions, as
`optimstudy run` and sweeps do (their one-time costs are reported apart). Afterwards the
last tracked run is read back to check that every step's train_loss reached the store.
A third side records MLflow's system metrics as well (sampled by the writer process every
SYSTEM_METRICS_S seconds, 10x the default rate, so that each run holds samples); the other
sides run with them off, as every benchmark does.

    python benchmarks/bench_tracking.py [--quick]
"""
import os
import tempfile
import time
from pathlib import Path

import torch
from common import (
    comparison,
    cpu_timed,
    interleave,
    machine,
    median,
    options,
    say,
    spread,
    threads,
    timed,
    write_result,
)

NAME = "tracking"
TARGET = 1.05  # tracked at most 5% slower than untracked
BATCH, LR, SEED = 64, 0.05, 0
EXPERIMENT = "bench-tracking"
SYSTEM_METRICS_S = "1"


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig
    from optimstudy.run.runner import Tracking, execute, load_data
    from optimstudy.run.training import total_steps
    from optimstudy.tracking.client import ensure_store
    from optimstudy.tracking.mlflow_logger import SYSTEM_METRICS_ENV
    from optimstudy.tracking.writer_handle import start_writer, stop_writers

    torch_threads = threads(args)
    torch.set_num_threads(torch_threads)
    epochs, repeats = (2, 2) if args.quick else (10, 8)
    config = RunConfig(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, epochs=epochs,
                       threads=torch_threads).resolved()
    data = load_data(config, args.data_dir)
    steps = total_steps(config, len(data.train))
    say(f"{NAME}: {steps} steps ({epochs} epochs of {len(data.train)} images) per run, {repeats} tracked and "
        f"{repeats} untracked runs interleaved, {torch_threads} torch thread(s)")

    with tempfile.TemporaryDirectory(prefix="optimstudy-bench-tracking-") as folder:
        uri = f"sqlite:///{Path(folder) / 'mlruns' / 'mlflow.db'}"
        tracking = Tracking(uri, EXPERIMENT)
        store_s, _ = timed(ensure_store, uri)
        writer_s, _ = timed(lambda: start_writer(uri).wait_ready())
        run_ids, system_run_ids = [], []

        def tracked():
            cpu_s, (end_to_end, (history, run_id)) = cpu_timed(timed, execute, config, tracking, data=data)
            run_ids.append(run_id)
            return {"wall_s": history.wall_s, "end_to_end_s": end_to_end, "cpu_s": cpu_s}

        def tracked_with_system_metrics():
            os.environ[SYSTEM_METRICS_ENV] = SYSTEM_METRICS_S
            try:
                return tracked()
            finally:
                os.environ[SYSTEM_METRICS_ENV] = "0"
                system_run_ids.append(run_ids.pop())

        def untracked():
            cpu_s, (end_to_end, (history, _)) = cpu_timed(timed, execute, config, None, data=data)
            return {"wall_s": history.wall_s, "end_to_end_s": end_to_end, "cpu_s": cpu_s}

        os.environ[SYSTEM_METRICS_ENV] = "0"
        times = interleave({"untracked": untracked, "tracked": tracked,
                            "tracked + system metrics": tracked_with_system_metrics}, repeats)
        logged = stored_points(uri, run_ids[-1])
        fixed = fixed_costs(config, data, uri, repeats=3)
        stop_writers()  # after the writer's last message: the last run's final system sample is stored
        system_points = stored_points(uri, system_run_ids[-1], ("system/cpu_utilization_percentage",))

    wall = {side: median(values["wall_s"]) for side, values in times.items()}
    end_to_end = {side: median(values["end_to_end_s"]) for side, values in times.items()}
    cpu = {side: median(values["cpu_s"]) for side, values in times.items()}
    rows = [
        comparison("tracking: training loop time, tracked / untracked (every step to SQLite)",
                   wall["tracked"] / wall["untracked"], TARGET, at_least=False, digits=3,
                   context=f"{wall['tracked']:.2f} s vs {wall['untracked']:.2f} s for {steps} steps"),
        comparison("tracking: end to end incl. run creation and final flush, tracked / untracked",
                   end_to_end["tracked"] / end_to_end["untracked"], TARGET, at_least=False, digits=3,
                   context=f"{end_to_end['tracked']:.2f} s vs {end_to_end['untracked']:.2f} s; "
                           f"training process CPU time {cpu['tracked'] / cpu['untracked']:.3f}×"),
        comparison(f"tracking: system metrics on ({SYSTEM_METRICS_S} s samples) / off, training loop time",
                   wall["tracked + system metrics"] / wall["tracked"], None, at_least=False, digits=3,
                   context=f"end to end {end_to_end['tracked + system metrics'] / end_to_end['tracked']:.3f}×; "
                           f"training process CPU time {cpu['tracked + system metrics'] / cpu['tracked']:.3f}×: "
                           f"sampled in the writer process"),
    ]
    if logged["train_loss"] != steps:
        raise SystemExit(f"{NAME}: the tracked run stored {logged['train_loss']} train_loss points, expected {steps}")
    measurements = {
        "steps": steps, "repeats_per_side": repeats,
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "end_to_end_s": {side: spread(values["end_to_end_s"]) for side, values in times.items()},
        "training_process_cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
        "tracked_extra_per_run_s": round(end_to_end["tracked"] - end_to_end["untracked"], 4),
        "tracked_extra_per_step_us": round(1e6 * (wall["tracked"] - wall["untracked"]) / steps, 2),
        "fixed_cost_per_tracked_run_s (median of 3, each alone)": fixed,
        "one_time_s": {"create_fresh_store": round(store_s, 3), "start_writer_process": round(writer_s, 3)},
        "last_tracked_run_points": logged,
        "system_metric_samples_in_a_run": system_points,
    }
    settings = {"problem": "mnist_mlp", "optimizer": "SGD", "lr": LR, "batch_size": BATCH, "seed": SEED,
                "epochs": epochs, "device": "cpu", "torch_threads": torch_threads,
                "store": "fresh SQLite store in a temporary folder, one per benchmark run",
                "logged": "train_loss, grad_norm, update_norm, lr every step; val metrics each evaluation"}
    return write_result(NAME, args, rows, settings, measurements, started, info)


def fixed_costs(config, data, uri: str, repeats: int) -> dict:
    """Seconds of each per-run step of a tracked run that does not depend on its length."""
    from optimstudy.run.runner import environment_tags, run_name
    from optimstudy.tracking.mlflow_logger import MlflowLogger

    parts = {"environment_tags (incl. git rev-parse)": [], "create run + params (MlflowLogger())": [],
             "close an empty run (flush + end, via the writer)": []}
    for _ in range(repeats):
        seconds, tags = timed(environment_tags, config.device)
        parts["environment_tags (incl. git rev-parse)"].append(seconds)
        seconds, logger = timed(MlflowLogger, uri, EXPERIMENT, config.params(), {**tags, "dataset": data.name},
                                run_name=run_name(config))
        parts["create run + params (MlflowLogger())"].append(seconds)
        parts["close an empty run (flush + end, via the writer)"].append(timed(logger.close)[0])
    return {name: round(median(values), 4) for name, values in parts.items()}


def stored_points(uri: str, run_id: str, names=("train_loss", "grad_norm", "update_norm", "lr")) -> dict:
    """How many points of each metric the store holds for `run_id`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {name: len(client.get_metric_history(run_id, name)) for name in names}


if __name__ == "__main__":
    main()
