"""GPU loop: optimstudy's instrumented loop, eager and captured, against the eager bare loop.

Where no CUDA device is lent, the JSON says so ("no device lent") and every row is skipped.
On each device, for mnist_mlp and mnist_cnn at batch 64, SGD, interleaved repeats:
  - bare: zero_grad -> forward -> loss -> backward -> step on optimstudy's index-gathered
    batches (same seed, same minibatches), timed with CUDA events from the end of step WARMUP
    to the end of the last step, then synchronize;
  - optimstudy eager: optimstudy.train() (loss, grad norm, update norm, lr every step, copied
    to the host every 50 steps), the same window by CUDA events from its progress hook;
  - optimstudy captured: the same with RunConfig(compile=True) (torch.compile,
    mode="reduce-overhead": CUDA graphs), compiled in an untimed run first;
  - host syncs: torch.cuda.set_sync_debug_mode("warn") around runs of N and 2N steps: the N
    extra steps may sync only for the metric copy every SYNC_EVERY steps and a new
    permutation each epoch, never once per step.
  - workers per GPU: the real `optimstudy sweep SPEC --workers N --json` in a fresh folder (its
    own SQLite store and Optuna journal) on a generated grid of short mnist_mlp trials on the
    first GPU, N = 1, 2, 4, 8: trials per minute for the whole command, and the best N.
Targets (issue 13): eager within 1.10x of the bare loop; captured faster than the bare loop;
8 workers at least 5x the trials per minute of 1 on one GPU.

    python benchmarks/bench_gpu.py [--quick] [--device cpu]   # cpu: a dry run of this code, wall clock
"""
import json
import os
import time
import warnings

import torch
import torch.nn.functional as F
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

NAME = "gpu"
PROBLEMS = ("mnist_mlp", "mnist_cnn")
BATCH, SEED, LR = 64, 0, 0.05
WARMUP = 100  # steps before the timed window (CUDA context, kernels, cuDNN choices, graph capture)
EAGER_TARGET = 1.10  # optimstudy eager / bare eager
CAPTURED_TARGET = 1.0  # optimstudy captured / bare eager: faster than the bare loop
MAX_SYNCS_PER_STEP = 0.25  # "no host sync per step": the extra steps sync far less than once each
WORKERS_TARGET = 5.0  # 8 workers / 1 worker, trials per minute, one GPU
WORKER_COUNTS, SWEEP_STEPS, SWEEP_LRS = (1, 2, 4, 8), 300, (0.01, 0.03, 0.1, 0.3)
NO_DEVICE = "no device lent: torch.cuda.is_available() is False on this machine"


class Window:
    """Seconds from the end of step WARMUP to the end of the last step: CUDA events, or the wall clock on a CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.start = self.end = None

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __call__(self, step, total):  # also a train() progress hook
        if step == WARMUP:
            self.start = self.mark()
        elif step == total:
            self.end = self.mark()

    def seconds(self) -> float:
        if not self.cuda:
            return self.end - self.start
        torch.cuda.synchronize()
        return self.start.elapsed_time(self.end) / 1000


def bare_loop(problem_name: str, data, device: str, steps: int) -> dict:
    from optimstudy.problems.registry import resolve_problem
    from optimstudy.run.batches import Batches

    torch.manual_seed(SEED)
    model = resolve_problem(problem_name).build_model(data.info).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = Batches(data.train, BATCH, torch.Generator().manual_seed(SEED))
    window = Window(device)
    for step in range(1, steps + 1):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        window(step, steps)
    return {"seconds": window.seconds()}


def optimstudy_loop(config, data) -> dict:
    from optimstudy import train

    window = Window(config.device)
    history = train(config, data=data, progress=window)
    return {"seconds": window.seconds(), "steps": history.steps[-1]}


def count_syncs(config, data) -> int:
    """Synchronizing CUDA calls during one optimstudy.train() run, as set_sync_debug_mode reports them."""
    from optimstudy import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(config, data=data)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum(1 for warning in caught if "synchroniz" in str(warning.message).lower())


def sweep_spec(device: str, seeds: int, threads: int) -> str:
    """A grid of len(SWEEP_LRS) x `seeds` short mnist_mlp trials on `device`."""
    return sgd_grid_spec("bench_gpu", "bench-gpu-workers", f"workers per GPU: {len(SWEEP_LRS)} learning rates x "
                         f"{seeds} seeds, {SWEEP_STEPS} steps", problem="mnist_mlp", steps=SWEEP_STEPS, seeds=seeds,
                         lr=toml_list(SWEEP_LRS), threads=threads, device=device.split(":")[0], batch_size=BATCH)


def timed_sweep(spec: str, workers: int, data_dir: str | None) -> float:
    """Seconds for the whole `optimstudy sweep --workers N` command, in a fresh folder and store."""
    seconds, done, _ = sweep_in_fresh_folder(NAME, spec, "bench-gpu-workers", workers, data_dir)
    trials = json.loads(done.stdout.strip().splitlines()[-1])["trials"]
    if trials["failed"]:
        raise SystemExit(f"{NAME}: {trials['failed']} trial(s) failed with {workers} workers: {trials}")
    return seconds


def workers_per_gpu(device: str, quick: bool, data_dir: str | None) -> tuple[list[dict], dict]:
    """Trials per minute of whole sweeps with 1, 2, 4, 8 workers sharing `device`."""
    counts = WORKER_COUNTS[:2] if quick else WORKER_COUNTS
    seeds, repeats = (2, 1) if quick else (8, 1)
    trials = len(SWEEP_LRS) * seeds
    cores = os.cpu_count() or 1
    seconds = {}
    for workers in counts:
        threads = max(1, min(4, cores // workers))  # the CPU side of each worker: the cores, shared out
        say(f"{NAME}: a sweep of {trials} trials on {device} with {workers} worker(s), {threads} thread(s) each")
        times = [timed_sweep(sweep_spec(device, seeds, threads), workers, data_dir) for _ in range(repeats)]
        seconds[workers] = median(times)
    per_minute = {workers: 60 * trials / s for workers, s in seconds.items()}
    best = max(per_minute, key=per_minute.get)
    most = max(counts)
    context = (", ".join(f"{n}: {per_minute[n]:.0f}" for n in counts) + f" trials/min; best {best} workers; "
               f"{trials} trials of {SWEEP_STEPS} steps")
    rows = [comparison(f"GPU workers: {most} workers / 1 worker on one GPU (whole sweep, trials per minute)",
                       per_minute[most] / per_minute[1], WORKERS_TARGET if most == 8 else None, at_least=True,
                       context=context)]
    return rows, {"trials": trials, "command_s": {str(n): round(s, 2) for n, s in seconds.items()},
                  "trials_per_minute": {str(n): round(v, 1) for n, v in per_minute.items()}, "best_workers": best}


def skipped_rows(reason: str) -> list[dict]:
    rows = []
    for problem in PROBLEMS:
        rows += [
            comparison(f"GPU loop: optimstudy eager / bare eager loop ({problem}, batch 64)", None, EAGER_TARGET,
                       at_least=False, skipped=reason),
            comparison(f"GPU loop: optimstudy captured (torch.compile) / bare eager loop ({problem})", None,
                       CAPTURED_TARGET, at_least=False, skipped=reason),
            comparison(f"GPU loop: host syncs per step ({problem})", None, MAX_SYNCS_PER_STEP, at_least=False,
                       unit="syncs/step", skipped=reason),
        ]
    rows.append(comparison("GPU workers: 8 workers / 1 worker on one GPU (whole sweep, trials per minute)", None,
                           WORKERS_TARGET, at_least=True, skipped=reason))
    return rows


def main(argv=None) -> dict:
    parser = options(NAME, __doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of this benchmark's code")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    settings = {"problems": list(PROBLEMS), "batch_size": BATCH, "optimizer": "SGD", "lr": LR, "seed": SEED,
                "targets": {"eager / bare": EAGER_TARGET, "captured / bare": CAPTURED_TARGET,
                            "host syncs per step": MAX_SYNCS_PER_STEP,
                            "8 workers / 1 on one GPU": WORKERS_TARGET}}
    dry_run = args.device == "cpu"
    if not dry_run and not torch.cuda.is_available():
        say(f"{NAME}: skipped: {NO_DEVICE}")
        return write_result(NAME, args, skipped_rows(NO_DEVICE), {**settings, "skipped": NO_DEVICE},
                            {"skipped": NO_DEVICE, "device_lent": False,
                             "cpu_only_numbers": "every other benchmark in this run: measured on the CPU"},
                            started, info)

    from optimstudy import RunConfig
    from optimstudy.run.batches import steps_per_epoch
    from optimstudy.run.runner import load_data
    from optimstudy.run.training import SYNC_EVERY

    steps, repeats = (300, 2) if args.quick or dry_run else (2000, 5)
    sync_steps = 200 if args.quick or dry_run else 400
    devices = ["cpu"] if dry_run else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    rows, measurements = [], {"steps": steps, "warmup_steps": WARMUP, "repeats": repeats, "device_lent": not dry_run,
                              "devices": {}}
    for device in devices:
        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU (dry run)"
        per_device = measurements["devices"][device] = {"name": name}
        for problem in PROBLEMS:
            base = dict(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, device=device)
            data = load_data(RunConfig(**base).resolved(), args.data_dir)
            eager = RunConfig(**base, steps=steps, eval_every=steps)  # evaluations at steps 0 and `steps` only
            captured = RunConfig(**base, steps=steps, eval_every=steps, compile=True)
            say(f"{NAME}: {problem} on {device} ({name}): {steps} steps x {repeats} per side (captured compiles first)")
            times = interleave({"bare": lambda: bare_loop(problem, data, device, steps),
                                "eager": lambda: optimstudy_loop(eager, data),
                                "captured": lambda: optimstudy_loop(captured, data)}, repeats)
            seconds = {side: median(values["seconds"]) for side, values in times.items()}
            per_sample = (steps - WARMUP) * BATCH
            record = per_device[problem] = {
                "samples_per_s": {side: round(per_sample / s, 1) for side, s in seconds.items()},
                "seconds": {side: spread(values["seconds"]) for side, values in times.items()},
                "eager_over_bare": round(seconds["eager"] / seconds["bare"], 4),
                "captured_over_bare": round(seconds["captured"] / seconds["bare"], 4),
            }
            context = f"{per_sample / seconds['eager']:,.0f} vs {per_sample / seconds['bare']:,.0f} samples/s; {name}"
            rows += [
                comparison(f"GPU loop: optimstudy eager / bare eager loop ({problem}, batch 64)",
                           seconds["eager"] / seconds["bare"], EAGER_TARGET, at_least=False, digits=3, context=context),
                comparison(f"GPU loop: optimstudy captured (torch.compile) / bare eager loop ({problem})",
                           seconds["captured"] / seconds["bare"], CAPTURED_TARGET, at_least=False, digits=3,
                           context=f"{per_sample / seconds['captured']:,.0f} samples/s; {name}"),
            ]
            if device.startswith("cuda"):
                short = RunConfig(**base, steps=sync_steps, eval_every=sync_steps)
                long = RunConfig(**base, steps=2 * sync_steps, eval_every=2 * sync_steps)
                syncs_short, syncs_long = count_syncs(short, data), count_syncs(long, data)
                per_step = (syncs_long - syncs_short) / sync_steps
                record["syncs"] = {f"{sync_steps}_steps": syncs_short, f"{2 * sync_steps}_steps": syncs_long,
                                   "per_extra_step": round(per_step, 4),
                                   "expected_per_step": round(1 / SYNC_EVERY + 1 / steps_per_epoch(
                                       len(data.train), BATCH, 1), 4)}
                rows.append(comparison(f"GPU loop: host syncs per step ({problem})", per_step, MAX_SYNCS_PER_STEP,
                                       at_least=False, unit="syncs/step", digits=3, context=name))
    workers_rows, measurements["workers_per_gpu"] = workers_per_gpu(
        devices[0], args.quick or dry_run, args.data_dir or os.environ.get("OPTIMSTUDY_DATA_DIR"))
    rows += workers_rows
    settings.update({"timing": "CUDA events from the end of step WARMUP to the end of the last step",
                     "workers_per_gpu": "python -m optimstudy sweep SPEC --workers N --json, whole command, "
                                        "a fresh folder and store per sweep",
                     "sync_check": "torch.cuda.set_sync_debug_mode('warn'), N vs 2N steps"})
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
