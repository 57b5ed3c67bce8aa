"""How a run's time grows with dataset size and with the number of steps.

Dataset size: the 8k MNIST fixture vs full-size Fashion-MNIST (60k, staged from Debian's
files into a temporary folder), the same 784-128-10 MLP, SGD, batch 64 and the same number
of steps on both, so seconds per step compare directly; seconds per epoch follow from each
one's steps per epoch. Per-step cost should not depend on the dataset's size (evaluation on
the larger validation split is the only part that should grow).

Steps: the MNIST MLP for 500, 1,000, 2,000 and 4,000 steps (250..1,000 with --quick),
untracked and tracked (a fresh SQLite store), sizes interleaved. Time per step should be
flat: a per-step cost that grows with the step count (a buffer re-sent, a list re-scanned)
shows as a rising ms/step. Tracked runs are timed both ways: History.wall_s and end to end.

    python benchmarks/bench_scale.py [--quick]
"""
import tempfile
import time
from pathlib import Path

import torch
from common import (
    comparison,
    interleave,
    machine,
    median,
    options,
    say,
    spread,
    stage_fashion_mnist,
    threads,
    timed,
    write_result,
)

NAME = "scale"
TARGET_SIZE = 1.2  # ms/step on 60k images at most 1.2x that on 8k
TARGET_FLAT = 1.1  # ms/step at the most steps at most 1.1x that at the fewest
BATCH, LR, SEED = 64, 0.05, 0


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig
    from optimstudy.run.batches import steps_per_epoch
    from optimstudy.run.runner import Tracking, execute, load_data
    from optimstudy.tracking.client import ensure_store
    from optimstudy.tracking.writer_handle import start_writer, stop_writers

    torch_threads = threads(args)
    torch.set_num_threads(torch_threads)
    size_steps, size_repeats = (300, 1) if args.quick else (936, 3)
    step_counts = (250, 500, 1000) if args.quick else (500, 1000, 2000, 4000)
    step_repeats = 1 if args.quick else 2

    def config(problem, steps):
        return RunConfig(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, steps=steps,
                         threads=torch_threads).resolved()

    with tempfile.TemporaryDirectory(prefix="optimstudy-bench-scale-") as folder:
        # ---- dataset size -----------------------------------------------------------------
        fashion_root = stage_fashion_mnist(Path(folder) / "data")
        import torchvision  # noqa: F401  (imported before timing, so the first load does not pay for it)

        load_s = {"mnist (8k fixture)": timed(load_data, config("mnist_mlp", 1), args.data_dir)[0],
                  "fashion_mnist (60k)": timed(load_data, config("fashion_mlp", 1), fashion_root)[0]}
        datasets = {"mnist_mlp": load_data(config("mnist_mlp", 1), args.data_dir),
                    "fashion_mlp": load_data(config("fashion_mlp", 1), fashion_root)}
        say(f"{NAME}: {size_steps} steps on MNIST 8k vs Fashion-MNIST 60k, {size_repeats} repeats; then "
            f"{', '.join(map(str, step_counts))} steps untracked and tracked, {step_repeats} repeats; "
            f"{torch_threads} torch thread(s)")

        def size_side(problem):
            return lambda: {"wall_s": execute(config(problem, size_steps), None, data=datasets[problem])[0].wall_s}

        size_times = interleave({problem: size_side(problem) for problem in datasets}, size_repeats)
        per_step = {p: median(v["wall_s"]) / size_steps for p, v in size_times.items()}
        per_epoch = {p: per_step[p] * steps_per_epoch(len(d.train), BATCH, 1) for p, d in datasets.items()}

        # ---- steps ------------------------------------------------------------------------
        uri = f"sqlite:///{Path(folder) / 'mlruns' / 'mlflow.db'}"
        ensure_store(uri)
        start_writer(uri).wait_ready()
        tracking = Tracking(uri, "bench-scale")
        mnist = datasets["mnist_mlp"]

        def steps_side(steps, tracked):
            def run():
                end_to_end, (history, _) = timed(execute, config("mnist_mlp", steps), tracking if tracked else None,
                                                 data=mnist)
                return {"wall_s": history.wall_s, "end_to_end_s": end_to_end}
            return run

        # sizes in a mixed order, so that a slow spell on the machine does not fall on one size
        order = [step_counts[i] for i in (0, -1, 1, -2)] if len(step_counts) == 4 else list(step_counts)
        sides = {f"{steps} {kind}": steps_side(steps, kind == "tracked")
                 for steps in order for kind in ("untracked", "tracked")}
        step_times = interleave(sides, step_repeats, warmup=False)
        stop_writers()

    def ms_per_step(kind, measure):
        return {steps: 1000 * median(step_times[f"{steps} {kind}"][measure]) / steps for steps in step_counts}

    flat = {"untracked": ms_per_step("untracked", "wall_s"), "tracked": ms_per_step("tracked", "wall_s"),
            "tracked end to end": ms_per_step("tracked", "end_to_end_s")}
    fewest, most = step_counts[0], step_counts[-1]
    rows = [comparison(
        "dataset size: ms/step on Fashion-MNIST 60k / MNIST 8k", per_step["fashion_mlp"] / per_step["mnist_mlp"],
        TARGET_SIZE, at_least=False,
        context=f"{per_epoch['mnist_mlp']:.2f} s/epoch on 8k, {per_epoch['fashion_mlp']:.2f} s/epoch on 60k",
    )]
    for kind, values in flat.items():
        rows.append(comparison(
            f"steps: ms/step at {most} steps / at {fewest} steps ({kind})", values[most] / values[fewest],
            TARGET_FLAT, at_least=False,
            context=", ".join(f"{steps}: {ms:.2f}" for steps, ms in values.items()) + " ms/step",
        ))
    measurements = {
        "dataset_size": {
            "steps": size_steps, "repeats": size_repeats,
            "train_images": {p: len(d.train) for p, d in datasets.items()},
            "val_images": {p: len(d.val) for p, d in datasets.items()},
            "wall_s": {p: spread(v["wall_s"]) for p, v in size_times.items()},
            "ms_per_step": {p: round(1000 * v, 4) for p, v in per_step.items()},
            "seconds_per_epoch": {p: round(v, 4) for p, v in per_epoch.items()},
            "first_load_s": {k: round(v, 3) for k, v in load_s.items()},
        },
        "steps": {
            "step_counts": list(step_counts), "repeats": step_repeats,
            "ms_per_step": {kind: {str(s): round(ms, 4) for s, ms in values.items()} for kind, values in flat.items()},
            "seconds": {side: {k: spread(v) for k, v in values.items()} for side, values in step_times.items()},
        },
    }
    settings = {"optimizer": "SGD", "lr": LR, "batch_size": BATCH, "seed": SEED, "device": "cpu",
                "torch_threads": torch_threads, "evaluation": "optimstudy's default (each epoch, at most 10 a run)",
                "fashion_mnist": "Debian's dataset-fashion-mnist, decompressed into a temporary folder"}
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
