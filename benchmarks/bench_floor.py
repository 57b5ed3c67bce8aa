"""optimstudy's instrumented minibatch loop against a bare loop on the same minibatches (CPU, one thread).

Sides, interleaved (A B C ... / ... C B A) and timed over the same window (the end of step 1
to the end of the last step, by the wall clock and by this thread's CPU time):
  - bare: zero_grad -> forward -> loss -> backward -> step on optimstudy's own index-gathered
    batches (same seed, so the same minibatches), evaluating at the same steps as optimstudy;
  - optimstudy: optimstudy.train() with its defaults, recording every step's loss, grad norm and
    lr and every UPDATE_NORM_EVERY-th step's exact update norm (copied to the host every 50 steps),
    evaluating at the first and last step: the row with the 1.10x target;
  - optimstudy at other update-norm cadences (update_norm_every): 1 (every step, the option kept
    for those who need it), 5, 50, and never in the run (what the rest of the recording costs);
  - bare + StepRecorder: the bare loop plus the recorder alone (no flush/eval machinery);
  - floor: the bare loop on one fixed batch (no data work), and optimstudy with its default
    evaluations (each epoch), for information.
With --captured (and in a full run) one more: optimstudy in captured mode (torch.compile),
for information: on a CPU it is slower than eager (compiled C++ kernels for small ops, and
no CUDA graphs), so its target is on a GPU (bench_gpu.py).

    python benchmarks/bench_floor.py [--quick] [--captured]
"""
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import comparison, interleave, machine, median, options, say, spread, write_result

from optimstudy.run.config import UPDATE_NORM_EVERY

NAME = "floor"
TARGET = 1.10  # the instrumented loop within 1.10x of the bare loop on the same minibatches
BATCH, LR, SEED = 64, 0.05, 0


class Window:
    """Wall and thread-CPU seconds from the end of step 1 to the end of the last step, and each
    step's wall seconds (a progress hook, called after every step on every side)."""

    def __init__(self):
        self.marks, self.ends = {}, []

    def __call__(self, step, total):
        self.ends.append(time.perf_counter())
        if step == 1 or step == total:
            self.marks[step == 1] = (self.ends[-1], time.thread_time())

    def result(self, **extra) -> dict:
        (wall_end, cpu_end), (wall_start, cpu_start) = self.marks[False], self.marks[True]
        steps_s = [b - a for a, b in zip(self.ends, self.ends[1:])]
        return {"wall_s": wall_end - wall_start, "cpu_s": cpu_end - cpu_start, "steps_s": steps_s, **extra}


def fastest_steps_s(runs: list[list[float]]) -> float:
    """The sum over step indices of the fastest repeat of that step: robust to other load.

    Every repeat of a side runs the same steps (same batches, flushes and evaluations at the
    same indices), so a step slowed by another process in one repeat is fast in another; the
    systematic costs (a flush every 50 steps) stay in, unlike in a median of step times.
    """
    return sum(min(durations) for durations in zip(*runs))


def bare_loop(data, steps: int, eval_at: set, batches=None, diagnostics=None) -> dict:
    """The bare loop on optimstudy's batches (or `batches`), evaluating at `eval_at`, plus `diagnostics`."""
    from optimstudy.problems.losses import cross_entropy
    from optimstudy.problems.registry import mlp
    from optimstudy.run.batches import Batches
    from optimstudy.run.training import evaluate

    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    batches = batches or Batches(data.train, BATCH, torch.Generator().manual_seed(SEED))
    before, after = diagnostics(params) if diagnostics else (None, None)
    window = Window()
    model.train()
    evaluate(model, data.val, cross_entropy, "classification")
    for step in range(1, steps + 1):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if before is not None:
            before(loss)
        optimizer.step()
        if after is not None:
            after(optimizer.param_groups[0]["lr"], step)
        if step in eval_at:
            evaluate(model, data.val, cross_entropy, "classification")
        window(step, steps)
    return window.result()


def recorder_diagnostics(params, update_every: int | None = None):
    """The StepRecorder alone (optimstudy's default cadence unless `update_every`), flushed every 50
    steps into a throwaway history."""
    from optimstudy.run.config import UPDATE_NORM_EVERY
    from optimstudy.run.diagnostics import StepRecorder
    from optimstudy.run.loggers import NullLogger
    from optimstudy.run.training import SYNC_EVERY, History

    recorder = StepRecorder(params, diverge_factor=100.0, update_every=update_every or UPDATE_NORM_EVERY)
    history, logger = History(config=None), NullLogger()

    def before(loss):
        recorder.gradients([loss.detach()])

    def after(lr, step):
        recorder.update(lr)
        if step % SYNC_EVERY == 0:
            recorder.flush(history, logger)

    return before, after


def per_call_us(function, calls: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return 1e6 * (time.perf_counter() - started) / calls


def extras_microbenchmark(data, calls: int) -> dict:
    """µs per call of each piece of a step's recording, each alone (in the loop they cost ~2x more:
    the weights, gradients and snapshot no longer fit the core's cache together)."""
    from optimstudy.problems.registry import mlp
    from optimstudy.run.diagnostics import StepRecorder

    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    F.cross_entropy(model(data.train.x[:BATCH]), data.train.y[:BATCH]).backward()
    grads = [p.grad for p in params]
    loss = torch.tensor(1.0)

    def record_step(recorder):
        def step():
            recorder.gradients([loss])
            recorder.update(LR)
            if len(recorder.lrs) >= 50:
                for recorded in (recorder.losses, recorder.grad_norms, recorder.lrs, recorder.update_squares,
                                 recorder.update_steps):
                    recorded.clear()
        return step

    every_step = StepRecorder(params, diverge_factor=100.0, update_every=1)
    return {
        "_foreach_norm(grads) (the gradient norm)": per_call_us(lambda: torch._foreach_norm(grads), calls),
        "_foreach_copy_ (the snapshot before a measured step)": per_call_us(
            lambda: every_step._snapshot(every_step.previous, every_step.previous_views, every_step.weights), calls),
        "_foreach_sub_ + dot (the update norm after it)": per_call_us(
            lambda: every_step._update_square(every_step.previous, every_step.previous_views, every_step.weights),
            calls),
        "a whole step's recording, update norm every step": per_call_us(record_step(every_step), calls),
        "a whole step's recording, the default cadence": per_call_us(
            record_step(StepRecorder(params, diverge_factor=100.0, update_every=UPDATE_NORM_EVERY)), calls),
    }


def main(argv=None) -> dict:
    parser = options(NAME, __doc__.splitlines()[0])
    parser.add_argument("--captured", action="store_true", help="also time captured mode (compiles for ~10-40 s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig, train
    from optimstudy.run.runner import load_data
    from optimstudy.run.training import total_steps

    torch_threads = args.threads or 1  # the setting: one thread
    torch.set_num_threads(torch_threads)
    epochs, repeats = (3, 3) if args.quick else (5, 13)
    base = dict(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, epochs=epochs,
                threads=torch_threads)
    data = load_data(RunConfig(**base).resolved(), args.data_dir)
    steps = total_steps(RunConfig(**base).resolved(), len(data.train))
    config = RunConfig(**base, eval_every=steps).resolved()  # evaluations at steps 0 and `steps`
    default_eval = RunConfig(**base).resolved()  # each epoch, at most 10 a run
    fixed = data.train.x[:BATCH].clone(), data.train.y[:BATCH].clone()
    say(f"{NAME}: {steps} steps ({epochs} epochs of {len(data.train)} images) per side, {repeats} repeats, "
        f"{torch_threads} torch thread(s)")

    def optimstudy_side(run_config):
        def side():
            window = Window()
            history = train(run_config, data=data, progress=window)
            return window.result(evaluations=len(history.evals))
        return side

    class Fixed:
        def __next__(self):
            return fixed

    cadences = {"every step": 1, "every 5": 5, "every 50": 50, "never in the run": steps + 1}
    if args.quick:
        cadences = {"every step": 1}
    sides = {
        "bare": lambda: bare_loop(data, steps, {steps}),
        "optimstudy": optimstudy_side(config),
        **{f"optimstudy, update norm {name}": optimstudy_side(replace(config, update_norm_every=every))
           for name, every in cadences.items()},
        "bare + StepRecorder": lambda: bare_loop(data, steps, {steps}, diagnostics=recorder_diagnostics),
        "optimstudy, evaluating each epoch": optimstudy_side(default_eval),
        "floor (one fixed batch)": lambda: bare_loop(data, steps, set(), batches=Fixed()),
    }
    if args.captured or not args.quick:
        sides["optimstudy captured (torch.compile)"] = optimstudy_side(RunConfig(**base, eval_every=steps,
                                                                                  compile=True).resolved())
    times = interleave(sides, repeats)
    whole_run = {side: median(values["wall_s"]) for side, values in times.items()}
    wall = {side: fastest_steps_s(values["steps_s"]) for side, values in times.items()}
    cpu = {side: median(values["cpu_s"]) for side, values in times.items()}
    ms = {side: 1000 * value / (steps - 1) for side, value in wall.items()}

    def ratio(side, against="bare"):
        return wall[side] / wall[against]

    def spread_of(side, against="bare"):  # whole runs: the ratio of medians, and repeat by repeat
        pairs = [a / b for a, b in zip(times[side]["wall_s"], times[against]["wall_s"])]
        return f"whole runs {whole_run[side] / whole_run[against]:.3f}× (repeats {min(pairs):.2f}-{max(pairs):.2f})"

    every_step = "optimstudy, update norm every step"
    others = ", ".join(f"{name} {ratio(f'optimstudy, update norm {name}'):.3f}×" for name in cadences
                       if name != "every step")
    rows = [
        comparison(f"CPU minibatch loop: optimstudy (loss, grad norm, lr every step; update norm every "
                   f"{UPDATE_NORM_EVERY}th, its default) / bare loop, same minibatches",
                   ratio("optimstudy"), TARGET, at_least=False, digits=3,
                   context=f"{ms['optimstudy']:.3f} vs {ms['bare']:.3f} ms/step, fastest of {repeats} repeats per "
                           f"step; {spread_of('optimstudy')}; thread CPU time {cpu['optimstudy'] / cpu['bare']:.3f}×; "
                           f"MNIST MLP, batch 64, 1 thread"),
        comparison("CPU minibatch loop: optimstudy recording the update norm every step too (update_norm_every = 1) "
                   "/ bare loop", ratio(every_step), None, at_least=False, digits=3,
                   context=f"{spread_of(every_step)}; other cadences: {others or '(not in a quick run)'}"),
        comparison("CPU minibatch loop: optimstudy evaluating each epoch (its default) / bare loop without those "
                   "evaluations", ratio("optimstudy, evaluating each epoch"), None, at_least=False, digits=3,
                   context=f"{times['optimstudy, evaluating each epoch']['evaluations'][0]} evaluations of "
                           f"{len(data.val)} images"),
        comparison("CPU minibatch loop: optimstudy / compute floor (bare loop on one fixed batch)",
                   wall["optimstudy"] / wall["floor (one fixed batch)"], None, at_least=False, digits=3,
                   context=f"indexed batches alone {wall['bare'] / wall['floor (one fixed batch)']:.3f}×; "
                           f"bare + StepRecorder alone {ratio('bare + StepRecorder'):.3f}×"),
    ]
    if "optimstudy captured (torch.compile)" in times:
        rows.append(comparison(
            "CPU captured mode (torch.compile, reduce-overhead) / bare eager loop",
            ratio("optimstudy captured (torch.compile)"),
            None, at_least=False, digits=3,
            context=f"{ms['optimstudy captured (torch.compile)']:.3f} ms/step after compiling; the target is on a GPU"))
    extras = extras_microbenchmark(data, 300 if args.quick else 2000)
    measurements = {
        "steps": steps, "timed_steps": steps - 1, "repeats": repeats,
        "ms_per_step (sum of the fastest repeat of each step)": {side: round(value, 4) for side, value in ms.items()},
        "whole_run_ratios_to_bare (ratio of medians)": {side: round(whole_run[side] / whole_run["bare"], 4)
                                                        for side in times},
        "ratios_to_bare (fastest repeat per step)": {side: round(ratio(side), 4) for side in times},
        "thread_cpu_ratios_to_bare": {side: round(cpu[side] / cpu["bare"], 4) for side in times},
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "thread_cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
        "extras_us_per_call": {k: round(v, 2) for k, v in extras.items()},
    }
    settings = {"problem": "mnist_mlp", "optimizer": "SGD", "lr": LR, "batch_size": BATCH, "seed": SEED,
                "device": "cpu", "torch_threads": torch_threads, "epochs": epochs,
                "update_norm_every": {"optimstudy": UPDATE_NORM_EVERY, **cadences},
                "window": "end of step 1 to end of the last step (progress hook), wall clock and thread CPU time",
                "measured": "per side, the sum over steps of the fastest of the repeats of that step (robust to "
                            "other processes on a shared machine); whole-run medians beside it",
                "order": "interleaved A B C ... then ... C B A, each side once untimed first"}
    result = write_result(NAME, args, rows, settings, measurements, started, info)
    for name, us in extras.items():
        print(f"    {name}: {us:.1f} µs per call")
    return result


if __name__ == "__main__":
    main()
