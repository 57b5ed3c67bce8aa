"""GPU throughput and host syncs: samples/s per CUDA device for mnist_mlp and mnist_cnn.

Skipped, with the reason written into the JSON, when torch.cuda.is_available() is false.
On each device, for each problem:
  - optimstudy's loop (optimstudy.train, untracked) timed with CUDA events recorded from its
    progress hook: from the end of step WARMUP to the end of the last step, then synchronize;
  - the bare loop on one fixed batch (the floor), timed the same way, for the ratio;
  - host syncs counted with torch.cuda.set_sync_debug_mode("warn") around two runs of N and
    2N steps: the N extra steps may sync only for the every-SYNC_EVERY-steps metric copy
    (3 copies each time) and a new permutation each epoch, never once per step.

    python benchmarks/bench_gpu.py [--quick]
"""
import time
import warnings

import torch
import torch.nn.functional as F

from common import comparison, machine, median, options, say, write_result

NAME = "gpu"
PROBLEMS = ("mnist_mlp", "mnist_cnn")
BATCH, SEED, LR = 64, 0, 0.05
WARMUP = 100  # steps before the timed window (CUDA context, kernels, cuDNN choices)
MAX_SYNCS_PER_STEP = 0.25  # "no host sync per step": the extra steps sync far less than once each


def optimstudy_samples_per_s(config, data, steps: int) -> tuple[float, float]:
    """(samples/s by CUDA events over steps WARMUP+1..steps, History.samples_per_s)."""
    from optimstudy import train

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def progress(step, total):
        if step == WARMUP:
            start.record()
        elif step == total:
            end.record()

    history = train(config, data=data, progress=progress)
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return (steps - WARMUP) * BATCH / seconds, history.samples_per_s


def floor_samples_per_s(problem_name: str, data, device: str, steps: int) -> float:
    """The bare loop on one fixed batch, same model, optimizer and batch, by CUDA events."""
    from optimstudy.problems import PROBLEMS

    torch.manual_seed(SEED)
    model = PROBLEMS[problem_name].make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = data.train.x[:BATCH], data.train.y[:BATCH]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for step in range(1, steps + 1):
        if step == WARMUP + 1:
            start.record()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    end.record()
    torch.cuda.synchronize()
    return (steps - WARMUP) * BATCH / (start.elapsed_time(end) / 1000)


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


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    settings = {"problems": list(PROBLEMS), "batch_size": BATCH, "optimizer": "SGD", "lr": LR, "seed": SEED}
    if not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False)"
        say(f"{NAME}: skipped: {reason}")
        rows = [comparison(f"GPU: {problem} samples/s per device; host syncs per step", None, MAX_SYNCS_PER_STEP,
                           at_least=False, unit="syncs/step", skipped=reason) for problem in PROBLEMS]
        return write_result(NAME, args, rows, {**settings, "skipped": reason}, {"skipped": reason}, started, info)

    from optimstudy import RunConfig
    from optimstudy.data import steps_per_epoch
    from optimstudy.runner import load_data
    from optimstudy.train import SYNC_EVERY

    steps, repeats = (500, 1) if args.quick else (2000, 3)
    sync_steps = 200 if args.quick else 400
    rows, measurements = [], {"steps": steps, "warmup_steps": WARMUP, "repeats": repeats, "devices": {}}
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        torch.cuda.set_device(index)
        name = torch.cuda.get_device_name(index)
        per_device = measurements["devices"][device] = {"name": name}
        for problem in PROBLEMS:
            base = RunConfig(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, device=device)
            data = load_data(base.resolved(), args.data_dir)
            # one evaluation at the start and one at the end, so the timed window is the steps themselves
            config = RunConfig(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, device=device,
                               steps=steps, eval_every=steps)
            say(f"{NAME}: {problem} on {device} ({name}): {steps} steps x {repeats}")
            ours, reported, floor = [], [], []
            for _ in range(repeats):  # interleaved: optimstudy, floor, optimstudy, floor, ...
                by_events, by_history = optimstudy_samples_per_s(config, data, steps)
                ours.append(by_events)
                reported.append(by_history)
                floor.append(floor_samples_per_s(problem, data, device, steps))
            short = RunConfig(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, device=device,
                              steps=sync_steps, eval_every=sync_steps)
            long = RunConfig(problem=problem, optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, device=device,
                             steps=2 * sync_steps, eval_every=2 * sync_steps)
            syncs_short, syncs_long = count_syncs(short, data), count_syncs(long, data)
            syncs_per_step = (syncs_long - syncs_short) / sync_steps
            expected = 3 / SYNC_EVERY + 1 / steps_per_epoch(len(data.train), BATCH, 1)
            per_device[problem] = {
                "samples_per_s_cuda_events": round(median(ours), 1),
                "samples_per_s_history": round(median(reported), 1),
                "floor_samples_per_s": round(median(floor), 1),
                "floor_over_optimstudy": round(median(floor) / median(ours), 3),
                "syncs": {f"{sync_steps}_steps": syncs_short, f"{2 * sync_steps}_steps": syncs_long,
                          "per_extra_step": round(syncs_per_step, 4), "expected_per_step": round(expected, 4)},
            }
            rows.append(comparison(
                f"GPU {name} ({device}): {problem} host syncs per step (metric copy every {SYNC_EVERY} excepted)",
                syncs_per_step, MAX_SYNCS_PER_STEP, at_least=False, unit="syncs/step", digits=3,
                context=f"{median(ours):,.0f} samples/s; floor {median(floor):,.0f}, "
                        f"{median(floor) / median(ours):.2f}× optimstudy",
            ))
    settings.update({"timing": "CUDA events from the end of step WARMUP to the end of the last step",
                     "sync_check": "torch.cuda.set_sync_debug_mode('warn'), N vs 2N steps"})
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
