"""Seeds in one model: 8 seeds stacked (`--stack-seeds`) against the same 8 seeds run one after another.

Issue #30's comparison, on one torch thread: trials per second for 8 seeds of one configuration
(Adam, 300 steps of batch 64), on a linreg-size model (the registry's `linreg`: 3 features, a
linear model) and on the MNIST MLP (784-128-10). Three rows per model, each side interleaved with
the other and the medians compared:
- whole command: `optimstudy run --seeds 0-7 [--stack-seeds] --threads 1`, a fresh process
  tracked into an existing MLflow store (process start-up, imports and the 8 runs' bookkeeping
  included: what a user waits for). Beside them, interleaved, the same command for one seed of one
  step: the start-up both sides pay once (imports, the data, the store), which bounds this ratio;
- trials only: `runner.execute_seeds` in this process, untracked, after a warm-up (the training
  itself, evaluations and final metrics included);
- trials, tracked: the same, tracked into the store (the writer started and the store open, as
  after a command's start-up): what the 8 runs' MLflow bookkeeping adds to each side.

    python benchmarks/bench_stacked.py [--quick]
"""
import os
import subprocess
import sys
import tempfile
import time

from common import comparison, interleave, machine, median, options, say, spread, write_result

NAME = "stacked"
SEEDS = 8
STEPS = 300
MODELS = {"linreg": {"lr": "0.01", "target": 4.0, "label": "linreg-size model (linreg, 3 features, linear)"},
          "mnist_mlp": {"lr": "0.001", "target": 0.95, "label": "MNIST MLP (784-128-10)"}}


def command_s(command: list[str], cwd: str, env: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "not stacked" in done.stderr:
        raise SystemExit(f"{NAME}: `{' '.join(command[1:])}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {"wall_s": seconds}


def in_process_s(problem: str, lr: float, stack: bool, data_dir: str | None, tracking=None) -> dict:
    from optimstudy.run.config import RunConfig
    from optimstudy.run.runner import execute_seeds

    configs = [RunConfig(problem=problem, optimizer="adam", lr=lr, steps=STEPS, seed=seed, threads=1)
               for seed in range(SEEDS)]
    said = []
    started = time.perf_counter()
    execute_seeds(configs, tracking, stack=stack, max_stack=SEEDS, data_dir=data_dir, say=said.append)
    seconds = time.perf_counter() - started
    if said:
        raise SystemExit(f"{NAME}: not stacked: {said}")
    return {"wall_s": seconds}


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = 2 if args.quick else 3
    data_dir = args.data_dir or os.environ.get("OPTIMSTUDY_DATA_DIR")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OPTIMSTUDY_SYSTEM_METRICS_S"] = "0"
    if data_dir:
        env["OPTIMSTUDY_DATA_DIR"] = data_dir
    import torch

    from optimstudy.run.runner import Tracking
    from optimstudy.tracking.client import ensure_store
    from optimstudy.tracking.writer_handle import start_writer, stop_writers

    torch.set_num_threads(1)
    say(f"{NAME}: {SEEDS} seeds x {STEPS} Adam steps, stacked against one after another; {repeats} per side")
    rows, measured = [], {}
    with tempfile.TemporaryDirectory(prefix="optimstudy-stacked-") as folder:
        tracking = Tracking(f"sqlite:///{folder}/mlruns/mlflow.db", "optimstudy")  # the commands' store
        for problem, model in MODELS.items():
            run = [sys.executable, "-m", "optimstudy", "run", "--problem", problem, "--optimizer", "adam",
                   "--lr", model["lr"], "--steps", str(STEPS), "--seeds", f"0-{SEEDS - 1}", "--threads", "1"]
            start_up = run[:run.index("--steps")] + ["--steps", "1", "--threads", "1"]  # one seed, one step
            command_s(run, folder, env)  # the store exists from here on
            times = interleave({"stacked": lambda: command_s(run + ["--stack-seeds"], folder, env),
                                "separate": lambda: command_s(run, folder, env),
                                "start-up": lambda: command_s(start_up, folder, env)}, repeats=repeats, warmup=False)
            inner = interleave({"stacked": lambda: in_process_s(problem, float(model["lr"]), True, data_dir),
                                "separate": lambda: in_process_s(problem, float(model["lr"]), False, data_dir)},
                               repeats=repeats + 2)
            ensure_store(tracking.tracking_uri, start_writer(tracking.tracking_uri))
            tracked = interleave(
                {"stacked": lambda: in_process_s(problem, float(model["lr"]), True, data_dir, tracking),
                 "separate": lambda: in_process_s(problem, float(model["lr"]), False, data_dir, tracking)},
                repeats=repeats + 2)
            stop_writers()
            start_up_s = median(times["start-up"]["wall_s"])
            for kind, found in (("whole command", times), ("trials only", inner), ("trials, tracked", tracked)):
                stacked, separate = median(found["stacked"]["wall_s"]), median(found["separate"]["wall_s"])
                how = {"whole command": f"tracked, fresh process; start-up (the same command for one seed of one "
                                        f"step) {start_up_s:.2f} s of the {separate:.2f} s, so at most "
                                        f"{separate / start_up_s:.2f}x however fast the stack",
                       "trials only": "untracked, in process",
                       "trials, tracked": "tracked, in process: the writer started, the store open"}[kind]
                rows.append(comparison(
                    f"stacked seeds: {SEEDS} seeds stacked / one after another, trials per second, {model['label']}, "
                    f"{kind}", separate / stacked, model["target"] if kind != "trials, tracked" else None,
                    at_least=True,
                    context=f"{SEEDS / stacked:.2f} vs {SEEDS / separate:.2f} trials/s; {stacked:.2f} vs "
                            f"{separate:.2f} s; median of {len(found['stacked']['wall_s'])}; Adam, {STEPS} steps, "
                            f"batch 64, 1 thread; {how}"))
                measured[f"{problem} {kind}"] = {side: spread(values["wall_s"]) for side, values in found.items()}
    settings = {"seeds": SEEDS, "steps": STEPS, "optimizer": "adam", "threads": 1, "repeats": repeats,
                "models": MODELS}
    return write_result(NAME, args, rows, settings, measured, started, info)


if __name__ == "__main__":
    main()
